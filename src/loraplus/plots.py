"""Every matplotlib figure of the project: plain functions of plain data (dicts/arrays) and a path.

Figures are drawn on the Agg canvas (no pyplot, no global backend switch) and written atomically:
saved to a temp file in the target folder, then moved over the target with os.replace.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loraplus._extras import require

require("plots", "loraplus.plots")

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.patheffects import withStroke  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from loraplus._io import atomic_file  # noqa: E402

DPI = 90
# The lr_A = lr_B line and the LoRA baseline: white dashes with a black edge, which read on the
# colour map and in the legend's white box alike (the legend's handle is drawn the same way).
BASELINE_STYLE: dict[str, Any] = {
    "color": "w",
    "ls": "--",
    "lw": 1.4,
    "path_effects": [withStroke(linewidth=2.8, foreground="k")],
}


def tick_label(value: float) -> str:
    """A learning rate or ratio as a tick label: 0.0004, 1e-05 -> 1e-5, 16."""
    text = f"{value:.3g}"
    mantissa, sep, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if sep else text


def value_ticks(ax: Axes, axis: str, values: Sequence[float], most: int = 9) -> list[float]:
    """Ticks of a log2 axis labelled with values, not their log2: the cells sit at log2(value),
    so that a grid of x4 steps is evenly spaced, and the labels say the learning rates and
    ratios passed. Up to `most` values, each is labelled; a denser grid gets ticks at the powers
    of ten it spans (every k-th value where it spans fewer than two). Returns the tick values."""
    numbers = sorted(float(v) for v in values)
    shown = numbers
    if len(numbers) > most:
        low, high = math.ceil(math.log10(numbers[0])), math.floor(math.log10(numbers[-1]))
        shown = [10.0**k for k in range(low, high + 1)]
        if len(shown) < 2:
            shown = numbers[:: math.ceil(len(numbers) / most)]
    where = [math.log2(v) for v in shown]
    labels = [tick_label(v) for v in shown]
    if axis == "x":
        ax.set_xticks(where, labels, fontsize=8, rotation=30 if len(shown) > 5 else 0)
    else:
        ax.set_yticks(where, labels, fontsize=8)
    return shown


def save_png(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write `fig` as PNG to `path` atomically."""
    FigureCanvasAgg(fig)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")  # legends below axes
    return Path(path)


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centers (midpoints; ends extended by half a spacing)."""
    if centers.size == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    mid = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[2 * centers[0] - mid[0]], mid, [2 * centers[-1] - mid[-1]]])


@dataclass(frozen=True)
class HeatmapDrawn:
    """What `draw_lr_heatmap` put on the axes, in (lr_a index, lr_b index) cells."""

    values: np.ndarray  # the coloured loss array, masked where diverged
    band: np.ndarray  # (k, 2) cells marked '+' (within margin of the best)
    best: tuple[int, int] | None
    diverged: np.ndarray  # (k, 2) cells drawn grey


def draw_lr_heatmap(
    fig: Figure, ax: Axes, panel: Mapping[str, Any], margin: float = 0.01
) -> HeatmapDrawn:
    """One lr_A x lr_B heatmap on log axes: diagonal, near-best '+' band, diverged cells grey.

    `panel`: lr_a, lr_b, loss[len(lr_a), len(lr_b)], optional diverged (bool, default:
    non-finite loss; drawn grey), title, cbar_label, reference (list of dicts lr_a, lr_b,
    label: points marked with a star, then X, D, s, e.g. the paper's published optimum).
    """
    x = np.log2(np.asarray(panel["lr_a"], dtype=float))
    y = np.log2(np.asarray(panel["lr_b"], dtype=float))
    loss = np.asarray(panel["loss"], dtype=float)
    diverged = np.asarray(panel.get("diverged", ~np.isfinite(loss)), dtype=bool)
    finite = np.isfinite(loss) & ~diverged
    xe, ye = _edges(x), _edges(y)
    masked = np.ma.masked_where(~finite, np.where(finite, loss, 1.0))
    if finite.any():
        lo = max(float(loss[finite].min()), 1e-12)
        norm = LogNorm(vmin=lo, vmax=max(float(loss[finite].max()), lo * 1.0001))
        mesh = ax.pcolormesh(xe, ye, masked.T, cmap="viridis", norm=norm, shading="flat")
        fig.colorbar(mesh, ax=ax, label=str(panel.get("cbar_label", "loss")))
    if diverged.any():  # one grey layer: a patch per cell is slow to draw on big grids
        grey = np.ma.masked_where(~diverged, np.ones_like(loss))
        ax.pcolormesh(xe, ye, grey.T, cmap="Greys", vmin=0.0, vmax=5.0, shading="flat")
    lo_d, hi_d = max(xe[0], ye[0]), min(xe[-1], ye[-1])
    handles: list[Any] = []
    if lo_d < hi_d:
        ax.plot([lo_d, hi_d], [lo_d, hi_d], **BASELINE_STYLE)
        handles.append(Line2D([], [], **BASELINE_STYLE, label="lr_A = lr_B (LoRA)"))
    near = np.zeros((0, 2), dtype=np.int64)
    best: tuple[int, int] | None = None
    if finite.any():
        near = np.argwhere(finite & (loss <= float(loss[finite].min()) * (1 + margin)))
        ax.plot(x[near[:, 0]], y[near[:, 1]], "r+", ms=11, mew=2.2)
        bi, bj = np.unravel_index(int(np.argmin(np.where(finite, loss, np.inf))), loss.shape)
        best = (int(bi), int(bj))
        ax.plot(x[bi], y[bj], marker="o", mfc="none", mec="r", ms=13, mew=1.5, ls="")
        handles.append(
            Line2D([], [], color="r", marker="+", ls="", ms=9, label=f"within {margin:.0%} of best")
        )
    for k, ref in enumerate(panel.get("reference", [])):
        lx, ly = math.log2(float(ref["lr_a"])), math.log2(float(ref["lr_b"]))
        shape = "*XDs"[k % 4]
        (mark,) = ax.plot(lx, ly, shape, color="orange", mec="k", ms=14 if k == 0 else 9, ls="")
        mark.set_label(str(ref.get("label", "reference")))
        handles.append(mark)
    if diverged.any():
        handles.append(Patch(facecolor=(0.86, 0.86, 0.86), label="diverged"))
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    value_ticks(ax, "x", panel["lr_a"])
    value_ticks(ax, "y", panel["lr_b"])
    ax.set_xlabel("lr_A (log scale)")
    ax.set_ylabel("lr_B (log scale)")
    ax.set_title(str(panel.get("title", "")), fontsize=10)
    if handles:  # below the axes: the band, the stars and the grid corners stay visible
        ax.legend(
            handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7
        )
    return HeatmapDrawn(values=masked, band=near, best=best, diverged=np.argwhere(diverged))


def plot_lr_heatmap(
    path: str | Path, panel: Mapping[str, Any], *, margin: float = 0.01, suptitle: str = ""
) -> Path:
    """One (lr_A, lr_B) loss heatmap written to `path` (panel as in `draw_lr_heatmap`)."""
    fig = Figure(figsize=(5.6, 5.4))
    draw_lr_heatmap(fig, fig.add_subplot(), panel, margin)
    if suptitle:
        fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def plot_lr_heatmaps(
    path: str | Path,
    panels: Sequence[Mapping[str, Any]],
    *,
    margin: float = 0.01,
    suptitle: str = "",
    ncols: int = 2,
) -> Path:
    """Several (lr_A, lr_B) heatmaps side by side (panels as in `plot_lr_heatmap`)."""
    if not panels:
        raise ValueError("plot_lr_heatmaps needs at least one panel.")
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 5.0 * nrows))
    for k, panel in enumerate(panels):
        draw_lr_heatmap(fig, fig.add_subplot(nrows, ncols, k + 1), panel, margin)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def plot_width_scaling(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Optimal learning rates vs width on log-log axes, one panel per optimizer.

    `data["panels"]`: dicts with `title`, `widths` (list[int]) and `series`: dicts with `name`,
    `values` (per seed, one optimal value per width), `slope` ((mean, std) of fitted slopes),
    `theory` (the paper's slope, dotted) and optional `predicted` (dash-dot where it differs),
    optional `color`. Optional `data["suptitle"]`.
    """
    panels = list(data["panels"])
    if not panels:
        raise ValueError("plot_width_scaling needs at least one panel.")
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    fig = Figure(figsize=(5.8 * len(panels), 5.6))
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        widths = np.asarray(panel["widths"], dtype=float)
        for c, series in enumerate(panel["series"]):
            color = series.get("color", palette[c % len(palette)])
            per_seed = np.asarray(series["values"], dtype=float)  # (seeds, widths)
            n_seeds = per_seed.shape[0]
            for s, row in enumerate(per_seed):
                jitter = 2 ** (0.06 * (s - (n_seeds - 1) / 2))
                ax.plot(widths * jitter, row, "o", color=color, alpha=0.35, ms=4)
            geo = 2 ** np.mean(np.log2(per_seed), axis=0)
            slope, spread = series["slope"]
            ax.plot(
                widths,
                geo,
                "-",
                color=color,
                lw=2,
                label=f"{series['name']}: slope {slope:+.2f} ± {spread:.2f}",
            )
            refs = [(float(series["theory"]), ":", "paper")]
            pred = series.get("predicted")
            if pred is not None and float(pred) != refs[0][0]:
                refs.append((float(pred), "-.", "predicted"))
            for ref, style, what in refs:
                anchor = np.exp(np.mean(np.log(geo)) - ref * np.mean(np.log(widths)))
                ax.plot(
                    widths,
                    anchor * widths**ref,
                    style,
                    color=color,
                    lw=1.3,
                    label=f"  {what} slope {ref:+g}",
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("width n")
        ax.set_ylabel("optimal value (grid cell), geo-mean over seeds")
        ax.set_title(str(panel.get("title", "")), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    if data.get("suptitle"):
        fig.suptitle(str(data["suptitle"]), fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """A trailing moving average (same length; the first points average what exists)."""
    if window <= 1 or values.size == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - window, 0)
    smooth: np.ndarray = (csum[idx] - csum[lo]) / (idx - lo)
    return smooth


def _floats(values: Sequence[Any]) -> np.ndarray:
    """A float array with None as NaN."""
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)


def plot_training_curves(path: str | Path, data: Mapping[str, Any]) -> Path:
    """draw_training_curves(data), written as PNG to `path`."""
    return save_png(draw_training_curves(data), path)


def draw_training_curves(data: Mapping[str, Any]) -> Figure:
    """Training loss and the eval metric against step, one training run.

    `data`: train_steps, train_loss (logged losses), eval_steps, eval_metric (one per eval),
    metric_name ("eval_accuracy" or "eval_loss"), optional eval_loss and title. The eval loss is
    drawn on the train loss's axes, so the two compare on one scale; with metric eval_loss (a
    causal LM) that is the only panel. Steps are whole numbers on the axes.
    """
    metric_name = str(data.get("metric_name", "eval_metric"))
    loss_only = metric_name == "eval_loss"
    fig = Figure(figsize=(6.0 if loss_only else 10.0, 3.8))
    ax_loss = fig.add_subplot(1, 1 if loss_only else 2, 1)
    steps, loss = _floats(data.get("train_steps", [])), _floats(data.get("train_loss", []))
    if loss.size:
        ax_loss.plot(steps, loss, color="tab:blue", alpha=0.7, lw=1.2, label="train loss")
        if loss.size >= 10:
            window = max(2, loss.size // 10)
            ax_loss.plot(
                steps,
                _smooth(loss, window),
                color="navy",
                lw=2,
                label=f"train loss, mean of the last {window} logged",
            )
    eval_steps = _floats(data.get("eval_steps", []))
    eval_loss = _floats(data.get("eval_metric" if loss_only else "eval_loss", []))
    if eval_loss.size and np.isfinite(eval_loss).any():
        ax_loss.plot(eval_steps, eval_loss, "o-", color="tab:orange", ms=3, label="eval loss")
    ax_loss.set_ylabel("loss")
    axes = [ax_loss]
    if not loss_only:
        ax_metric = fig.add_subplot(1, 2, 2)
        metric = _floats(data.get("eval_metric", []))
        if metric.size:
            ax_metric.plot(eval_steps, metric, "o-", color="tab:green", ms=3)
        ax_metric.set_ylabel(metric_name.removeprefix("eval_").replace("_", " "))
        ax_metric.set_title(metric_name, fontsize=10)
        axes.append(ax_metric)
    for ax in axes:
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    if data.get("title"):
        fig.suptitle(str(data["title"]), fontsize=10)
    fig.tight_layout()
    return fig


def plot_demo(path: str | Path, runs: Mapping[str, Mapping[str, Any]], *, title: str = "") -> Path:
    """draw_demo(runs, title), written as PNG to `path`."""
    return save_png(draw_demo(runs, title=title), path)


# One look per method: a line drawn first stays visible under a later one with the same values
# (a --quick demo's LoRA and LoRA+ often agree): large hollow markers and a solid line first,
# then small filled markers and dashes.
_DEMO_STYLES: tuple[dict[str, Any], ...] = (
    {"marker": "o", "ms": 8, "mfc": "none", "ls": "-", "lw": 2.4},
    {"marker": "s", "ms": 4, "ls": "--", "lw": 1.4},
    {"marker": "^", "ms": 4, "ls": ":", "lw": 1.4},
    {"marker": "D", "ms": 4, "ls": "-.", "lw": 1.4},
)


def draw_demo(runs: Mapping[str, Mapping[str, Any]], *, title: str = "") -> Figure:
    """Eval accuracy (left) and training loss (right) against step, one line per method.

    `runs`: {label: {"steps": [...], "accuracy": [...], optional "train_steps", "train_loss"}}.
    The train loss is a trailing mean over one tenth of the longest run's logged values.
    """
    if not runs:
        raise ValueError("plot_demo needs at least one run.")
    fig = Figure(figsize=(10.0, 3.9))
    ax_acc, ax_loss = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colors = ("tab:gray", "tab:red", "tab:blue", "tab:green", "tab:purple")
    longest = max(len(run.get("train_loss", [])) for run in runs.values())
    window = max(1, longest // 10)
    for k, (label, run) in enumerate(runs.items()):
        style = {"color": colors[k % len(colors)], **_DEMO_STYLES[k % len(_DEMO_STYLES)]}
        acc = _floats(run.get("accuracy", []))
        ax_acc.plot(_floats(run.get("steps", [])), acc, label=label, **style)
        loss = _floats(run.get("train_loss", []))
        if loss.size:
            line = {key: v for key, v in style.items() if key not in ("marker", "ms", "mfc")}
            ax_loss.plot(
                _floats(run.get("train_steps", [])), _smooth(loss, window), label=label, **line
            )
    ax_acc.set_ylabel("eval accuracy")
    ax_acc.legend(fontsize=8, loc="best")  # not over the last points
    ax_loss.set_ylabel(
        "train loss" if window == 1 else f"train loss, mean of the last {window} logged"
    )
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


_SWEEP_MARKS = {  # state -> (face colour, hatch, label in the cell)
    "pruned": ("0.88", "\\\\\\", "P"),
    "diverged": ("0.70", "///", "div"),
    "error": ("#f4c7c3", "xx", "err"),
}


def plot_sweep_heatmap(path: str | Path, data: Mapping[str, Any]) -> Path:
    """draw_sweep_heatmap(data), written as PNG to `path`."""
    return save_png(draw_sweep_heatmap(data), path)


def draw_sweep_heatmap(data: Mapping[str, Any]) -> Figure:
    """Figure 3-style sweep heatmap: lr_A x ratio (or lr_B) on log axes, the metric in each cell.

    `data`: lr_a, y (ratios, lr_B values, method names or a field's values), y_label ("ratio",
    "lr_B", "method" or the field), categorical (one evenly spaced row per y value; default: a
    method grid's), values[len(lr_a)][len(y)]
    (None where there is no value), states of the same shape (complete, pruned, diverged, error,
    running, pending), best ([i, j] or None; red frame), baseline ("ratio": the row
    `baseline_row` (ratio 1, standard LoRA) is framed; "diagonal": the line lr_A = lr_B), metric,
    direction (maximize/minimize: brighter is better), title. Accuracies are shown in percent.
    Cells sit at log2 of the values (a x4 grid is evenly spaced); ticks name the values.
    """
    x = np.log2(np.asarray(data["lr_a"], dtype=float))
    categorical = data.get("categorical", data.get("y_label") == "method")
    names = [str(v) for v in data["y"]] if categorical else None
    y = np.arange(len(names), dtype=float) if names else np.log2(np.asarray(data["y"], dtype=float))
    values = np.array(
        [[np.nan if v is None else float(v) for v in row] for row in data["values"]], dtype=float
    ).reshape(x.size, y.size)
    states = np.asarray(data["states"], dtype=object).reshape(x.size, y.size)
    metric = str(data.get("metric", "metric"))
    scale = 100.0 if "accuracy" in metric else 1.0
    xe, ye = _edges(x), _edges(y)
    fig = Figure(figsize=(max(5.5, 0.95 * x.size + 2.8), max(4.0, 0.6 * y.size + 2.6)))
    ax = fig.add_subplot()
    cmap = "viridis" if data.get("direction", "maximize") == "maximize" else "viridis_r"
    norm = _sweep_colours(fig, ax, (xe, ye), values * scale, states, cmap, metric, scale)
    _sweep_labels(ax, (x, y, xe, ye), values * scale, states, norm, cmap, scale)
    handles = [
        Patch(facecolor=face, edgecolor="0.5", hatch=hatch, label=state)
        for state, (face, hatch, _) in _SWEEP_MARKS.items()
        if (states == state).any()
    ]
    handles += _sweep_frames(ax, xe, ye, data)
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    value_ticks(ax, "x", data["lr_a"], most=len(data["lr_a"]))
    if names:
        ax.set_yticks(y, names, fontsize=8)
    else:
        value_ticks(ax, "y", data["y"], most=len(data["y"]))
    ax.set_xlabel("lr_A (log scale)")
    y_label = str(data.get("y_label", "ratio"))
    ax.set_ylabel(
        y_label
        if names
        else "ratio = lr_B / lr_A (log scale)"
        if y_label == "ratio"
        else f"{y_label} (log scale)"
    )
    ax.set_title(str(data.get("title", "")), fontsize=9)
    if handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
            ncol=min(len(handles), 4),
            fontsize=7,
            frameon=False,
        )
    fig.tight_layout()
    return fig


def _sweep_colours(
    fig: Figure,
    ax: Axes,
    edges: tuple[np.ndarray, np.ndarray],
    scaled: np.ndarray,
    states: np.ndarray,
    cmap: str,
    metric: str,
    scale: float,
) -> Any:
    """Colour the finished cells (a colour bar beside them); return the colour norm or None."""
    from matplotlib.colors import Normalize

    coloured = np.isfinite(scaled) & ~np.isin(states, list(_SWEEP_MARKS))
    if not coloured.any():
        return None
    lo, hi = float(scaled[coloured].min()), float(scaled[coloured].max())
    if hi - lo < 1e-9 * max(1.0, abs(hi)):  # one value everywhere: a readable range around it
        pad = max(abs(hi) * 0.01, 1e-3)
        lo, hi = lo - pad, hi + pad
    norm = Normalize(vmin=lo, vmax=hi)
    masked = np.ma.masked_where(~coloured, scaled)
    mesh = ax.pcolormesh(*edges, masked.T, cmap=cmap, norm=norm, shading="flat")
    bar = fig.colorbar(mesh, ax=ax, label=metric + (" (%)" if scale != 1 else ""))
    bar.ax.yaxis.get_major_formatter().set_useOffset(False)  # type: ignore[attr-defined]
    return norm


def _sweep_labels(
    ax: Axes,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    scaled: np.ndarray,
    states: np.ndarray,
    norm: Any,
    cmap: str,
    scale: float,
) -> None:
    """Each cell's value, or its mark (P, div, err) over a hatched patch, or · / … if unfinished."""
    x, y, xe, ye = grid
    small = 7 if x.size * y.size <= 64 else 5
    for i in range(x.size):
        for j in range(y.size):
            state, value = str(states[i, j]), scaled[i, j]
            text = "" if not np.isfinite(value) else f"{value:.{1 if scale != 1 else 3}f}"
            colour = "k"
            if state in _SWEEP_MARKS:
                face, hatch, mark = _SWEEP_MARKS[state]
                _box(ax, (xe[i], xe[i + 1]), (ye[j], ye[j + 1]), facecolor=face, hatch=hatch)
                text = f"{mark}\n{text}" if text and state == "pruned" else mark
            elif not text:
                text = "·" if state == "pending" else ("…" if state == "running" else "")
            elif norm is not None:
                level = float(norm(value))
                shade = level if cmap == "viridis" else 1.0 - level
                colour = "k" if shade > 0.55 else "w"
            ax.text(x[i], y[j], text, ha="center", va="center", fontsize=small, color=colour)


def _sweep_frames(ax: Axes, xe: np.ndarray, ye: np.ndarray, data: Mapping[str, Any]) -> list[Any]:
    """The baseline (ratio-1 row framed, or the lr_A = lr_B diagonal) and the best cell's frame."""
    handles: list[Any] = []
    if data.get("baseline") == "diagonal":
        lo_d, hi_d = max(xe[0], ye[0]), min(xe[-1], ye[-1])
        if lo_d < hi_d:
            ax.plot([lo_d, hi_d], [lo_d, hi_d], **BASELINE_STYLE)
            handles.append(Line2D([], [], **BASELINE_STYLE, label="lr_A = lr_B (LoRA)"))
    elif data.get("baseline_row") is not None:
        j = int(data["baseline_row"])
        frame = {k: v for k, v in BASELINE_STYLE.items() if k != "color"}
        _box(ax, (xe[0], xe[-1]), (ye[j], ye[j + 1]), fill=False, edgecolor="w", **frame)
        handles.append(Line2D([], [], **BASELINE_STYLE, label="ratio = 1 (LoRA)"))
    if data.get("best") is not None:
        bi, bj = (int(k) for k in data["best"])
        _box(ax, (xe[bi], xe[bi + 1]), (ye[bj], ye[bj + 1]), fill=False, edgecolor="r", lw=2.6)
        handles.append(Patch(facecolor="none", edgecolor="r", linewidth=2.0, label="best"))
    return handles


def _box(ax: Axes, xs: tuple[float, float], ys: tuple[float, float], **style: Any) -> None:
    """A rectangle from xs[0]..xs[1] by ys[0]..ys[1] (hatched cell or frame), default grey edge."""
    style.setdefault("edgecolor", "0.5")
    style.setdefault("lw", 1.6 if style.get("fill") is False else 0.0)
    ax.add_patch(Rectangle((xs[0], ys[0]), xs[1] - xs[0], ys[1] - ys[0], **style))


def plot_tune(path: str | Path, data: Mapping[str, Any]) -> Path:
    """draw_tune(data), written as PNG to `path`."""
    return save_png(draw_tune(data), path)


def draw_tune(data: Mapping[str, Any]) -> Figure:
    """The metric against lr_A (log axis), one colour per method: the first seed's line, every
    run as a point (the other seeds at the chosen lr_A), the chosen lr_A's mean as a star.

    `data`: metric, title, methods [{"method", "line": [[lr, value|None]], "points":
    [[lr, value]], "chosen": [lr, mean] | None}] (TuneSummary.figure()).
    """
    methods = list(data.get("methods", []))
    if not methods:
        raise ValueError("plot_tune needs at least one method.")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for k, row in enumerate(methods):
        color = f"C{k % 10}"
        line = [(lr, v) for lr, v in row.get("line", []) if v is not None and math.isfinite(v)]
        if line:
            xs, ys = zip(*line, strict=True)
            ax.plot(xs, ys, "-", color=color, lw=1.5, label=str(row["method"]))
        points = row.get("points", [])
        if points:
            px, py = zip(*points, strict=True)
            ax.plot(px, py, "o", color=color, ms=4, alpha=0.7, ls="none")
        chosen = row.get("chosen")
        if chosen is not None and chosen[1] is not None:
            ax.plot([chosen[0]], [chosen[1]], "*", color=color, ms=14, mec="black", ls="none")
    ax.set_xscale("log")
    ax.set_xlabel("lr_A")
    ax.set_ylabel(str(data.get("metric", "metric")).removeprefix("eval_").replace("_", " "))
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="*", color="0.3", mec="black", ms=12, ls="none"))
    labels.append("chosen lr_A (mean over seeds)")
    ax.legend(handles, labels, fontsize=8)
    if data.get("title"):
        ax.set_title(str(data["title"]), fontsize=10)
    fig.tight_layout()
    return fig


def plot_methods(path: str | Path, data: Mapping[str, Any]) -> Path:
    """draw_methods(data), written as PNG to `path`."""
    return save_png(draw_methods(data), path)


def draw_methods(data: Mapping[str, Any]) -> Figure:
    """The method study: one panel per width, loss against lr (log-log), one line per method
    (its first seed's lr line) and, at the lr it picked, the seeds' mean with their range.

    `data`: title, xlabel, ylabel, panels [{"title", "methods": [{"method", "colour": int,
    "style", "line": [[lr, loss]], "chosen": [lr, mean, low, high] | None}]}]
    (methods_report.figure_data).
    """
    panels = list(data.get("panels", []))
    if not panels:
        raise ValueError("plot_methods needs at least one panel.")
    fig = Figure(figsize=(5.2 * len(panels), 5.0))
    axes = [fig.add_subplot(1, len(panels), k + 1) for k in range(len(panels))]
    for ax, panel in zip(axes, panels, strict=True):
        for row in panel["methods"]:
            color = f"C{int(row['colour']) % 10}"
            if row["line"]:
                xs, ys = zip(*row["line"], strict=True)
                ax.plot(xs, ys, row["style"], color=color, marker=".", label=row["method"], lw=1.2)
            if row["chosen"] is not None:
                lr, mean, low, high = row["chosen"]
                bar = [[mean - low], [high - mean]]
                ax.errorbar([lr], [mean], yerr=bar, color=color, marker="o", ms=6, capsize=3)
        ax.set(xscale="log", yscale="log", title=str(panel["title"]), xlabel=data.get("xlabel"))
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(str(data.get("ylabel", "")))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(str(data.get("title", "")))
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def plot_eval_curves(path: str | Path, data: Mapping[str, Any]) -> Path:
    """draw_eval_curves(data), written as PNG to `path`."""
    return save_png(draw_eval_curves(data), path)


def draw_eval_curves(data: Mapping[str, Any]) -> Figure:
    """A metric against step, one series per label: the mean over its runs as a line with a
    min-max band (several runs), or one line per run in `style` (e.g. "--", ":").

    `data`: ylabel, title, log (bool: log y axis), series [{"label", "runs": [[[step, value],
    ...], ...], "colour", "style" (default "-"), "band" (default True)}]. Runs are cut to the
    shortest one's steps for the mean.
    """
    series = [s for s in data.get("series", []) if s.get("runs")]
    if not series:
        raise ValueError("plot_eval_curves needs at least one series with runs.")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for k, row in enumerate(series):
        colour, style = row.get("colour", f"C{k % 10}"), row.get("style", "-")
        runs = [np.asarray(r, dtype=float) for r in row["runs"]]
        if row.get("band", True):
            n = min(len(r) for r in runs)
            steps, values = runs[0][:n, 0], np.stack([r[:n, 1] for r in runs])
            ax.plot(steps, values.mean(axis=0), style, color=colour, marker="o", ms=3)
            ax.lines[-1].set_label(str(row["label"]))
            if len(runs) > 1:
                ax.fill_between(steps, values.min(0), values.max(0), color=colour, alpha=0.2)
        else:
            for i, r in enumerate(runs):
                label = str(row["label"]) if i == 0 else None
                ax.plot(r[:, 0], r[:, 1], style, color=colour, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(str(data.get("ylabel", "eval loss")))
    if data.get("log"):
        ax.set_yscale("log")
    if data.get("title"):
        ax.set_title(str(data["title"]), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_method_values(path: str | Path, data: Mapping[str, Any]) -> Path:
    """draw_method_values(data), written as PNG to `path`."""
    return save_png(draw_method_values(data), path)


def draw_method_values(data: Mapping[str, Any]) -> Figure:
    """One bar per method at the mean of its values (seeds), each value a dot.

    `data`: ylabel, title, bounds ([low, high] to clip the y range to, optional), rows
    [{"method", "values": [float, ...]}].
    """
    rows = list(data.get("rows", []))
    if not rows:
        raise ValueError("plot_method_values needs at least one row.")
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 1, 1)
    for i, row in enumerate(rows):
        values = [float(v) for v in row.get("values", []) if v is not None]
        if values:
            ax.bar(i, float(np.mean(values)), color="tab:blue", alpha=0.4)
            ax.plot([i] * len(values), values, "k.", ms=6)
    ax.set_xticks(range(len(rows)), [str(r["method"]) for r in rows], rotation=35, ha="right")
    ax.tick_params(axis="x", labelsize=8)
    values = [float(v) for r in rows for v in r.get("values", []) if v is not None]
    if values:
        low, high = min(values) - 0.05, max(values) + 0.03
        bounds = data.get("bounds")
        if bounds is not None:
            low, high = max(float(bounds[0]), low), min(float(bounds[1]), high)
        ax.set_ylim(low, high)
    ax.set_ylabel(str(data.get("ylabel", "")))
    if data.get("title"):
        ax.set_title(str(data["title"]), fontsize=10)
    fig.tight_layout()
    return fig


def plot_seed_curves(path: str | Path, data: Mapping[str, Any]) -> Path:
    """draw_seed_curves(data), written as PNG to `path`."""
    return save_png(draw_seed_curves(data), path)


def draw_seed_curves(data: Mapping[str, Any]) -> Figure:
    """A metric against step, one colour per series (e.g. a method at its lr) and one line per
    seed in it; the series' label on its first line only.

    `data`: title, ylabel, series [{"label", "curves": [[[step, value], ...], ...]}].
    """
    series = list(data.get("series", []))
    if not series:
        raise ValueError("plot_seed_curves needs at least one series.")
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    colors = ("tab:blue", "tab:red", "tab:cyan", "tab:orange", "tab:green", "tab:purple")
    for k, row in enumerate(series):
        for i, curve in enumerate(row.get("curves", [])):
            if not curve:
                continue
            xs, ys = zip(*curve, strict=True)
            label = str(row["label"]) if i == 0 else None
            ax.plot(xs, _floats(list(ys)), color=colors[k % len(colors)], alpha=0.8, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(str(data.get("ylabel", "metric")))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if data.get("title"):
        ax.set_title(str(data["title"]), fontsize=10)
    fig.tight_layout()
    return fig
