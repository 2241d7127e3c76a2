"""plots.py: figures from plain data, written atomically as valid PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from loraplus import plots


def _panel(loss: np.ndarray) -> dict[str, object]:
    lrs = 2.0 ** np.arange(loss.shape[0], dtype=float)
    return {"lr_a": lrs, "lr_b": lrs[: loss.shape[1]], "loss": loss, "title": "t"}


def test_heatmap_with_diverged_cells(tmp_path: Path) -> None:
    loss = np.array([[0.3, 0.2, 0.1], [0.2, 0.05, np.inf], [0.1, np.inf, np.inf]])
    out = plots.plot_lr_heatmap(tmp_path / "sub" / "h.png", _panel(loss), suptitle="s")
    img = imread(out)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and min(img.shape[:2]) > 200
    assert sorted(p.name for p in out.parent.iterdir()) == ["h.png"]  # temp file replaced


def test_heatmap_all_diverged_and_panels(tmp_path: Path) -> None:
    dead = np.full((2, 2), np.inf)
    ok = np.array([[1.0, 2.0], [3.0, 4.0]])
    out = plots.plot_lr_heatmaps(tmp_path / "p.png", [_panel(dead), _panel(ok), _panel(ok)])
    assert imread(out).shape[0] > 300
    with pytest.raises(ValueError):
        plots.plot_lr_heatmaps(tmp_path / "e.png", [])


def test_width_scaling_plot(tmp_path: Path) -> None:
    widths = [64, 128, 256]
    panel = {
        "title": "GD",
        "widths": widths,
        "series": [
            {
                "name": "lr_A*",
                "values": [[1 / w for w in widths], [2 / w for w in widths]],
                "slope": (-1.0, 0.0),
                "theory": -1.0,
            },
            {
                "name": "lr_B*",
                "values": [[0.5, 0.5, 0.5], [0.25, 0.5, 0.5]],
                "slope": (0.2, 0.3),
                "theory": 0.0,
                "predicted": -0.5,
            },
        ],
    }
    out = plots.plot_width_scaling(tmp_path / "w.png", {"panels": [panel, panel]})
    assert imread(out).shape[1] > 500


def test_save_png_overwrites_atomically(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    target = tmp_path / "f.png"
    target.write_bytes(b"old")
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    plots.save_png(fig, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_training_curves_draw_the_given_values() -> None:
    data = {
        "train_steps": list(range(1, 13)),
        "train_loss": [1.0 - 0.05 * k for k in range(12)],
        "eval_steps": [0, 6, 12],
        "eval_metric": [0.5, 0.7, None],
        "eval_loss": [0.9, 0.6, 0.4],
        "metric_name": "eval_accuracy",
        "title": "lr[lora_A]=0.001  lr[lora_B]=0.016",
    }
    fig = plots.draw_training_curves(data)
    ax_loss, ax_metric = fig.axes
    raw, smooth, eval_loss = ax_loss.lines
    assert list(raw.get_ydata()) == data["train_loss"]
    assert smooth.get_ydata()[0] == 1.0 and smooth.get_ydata()[-1] == pytest.approx(0.475)
    assert list(eval_loss.get_ydata()) == [0.9, 0.6, 0.4]
    (metric,) = ax_metric.lines
    assert list(metric.get_xdata()) == [0, 6, 12]
    np.testing.assert_array_equal(metric.get_ydata(), [0.5, 0.7, np.nan])  # None -> gap
    assert fig._suptitle is not None and fig._suptitle.get_text() == data["title"]


def test_demo_draws_one_line_per_method() -> None:
    runs = {
        "LoRA": {
            "steps": [0, 2],
            "accuracy": [0.5, 0.6],
            "train_steps": [1, 2],
            "train_loss": [0.7, 0.5],
        },
        "LoRA+": {"steps": [0, 2], "accuracy": [0.5, 0.8]},
    }
    fig = plots.draw_demo(runs, title="demo")
    ax_acc, ax_loss = fig.axes
    assert [line.get_label() for line in ax_acc.lines] == ["LoRA", "LoRA+"]
    assert list(ax_acc.lines[1].get_ydata()) == [0.5, 0.8]
    assert [line.get_label() for line in ax_loss.lines] == ["LoRA"]  # LoRA+ logged no loss
    with pytest.raises(ValueError, match="at least one run"):
        plots.draw_demo({})


def test_sweep_heatmap_draws_values_marks_and_best() -> None:
    data = {
        "lr_a": [1e-4, 4e-4],
        "y": [1.0, 16.0],
        "y_label": "ratio",
        "values": [[0.61, 0.7], [None, 0.655]],
        "states": [["complete", "complete"], ["diverged", "complete"]],
        "best": [0, 1],
        "baseline_row": 0,
        "metric": "eval_accuracy",
    }
    fig = plots.draw_sweep_heatmap(data)
    ax = fig.axes[0]
    cells = ax.collections[0].get_array()
    assert cells.mask.tolist() == [[False, True], [False, False]]  # rows: ratio; columns: lr_A
    assert sorted(float(v) for v in cells.compressed()) == pytest.approx([61.0, 65.5, 70.0])
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["61.0", "65.5", "70.0", "div"]
    best = [p for p in ax.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    (frame,) = best
    assert frame.get_x() == pytest.approx(np.log2(1e-4) - 1.0)  # cell edges at half spacing
    assert frame.get_y() == pytest.approx(2.0)  # the ratio-16 row starts midway log2 1 .. 16


def test_draw_lr_heatmap_returns_what_it_drew() -> None:
    from matplotlib.collections import QuadMesh
    from matplotlib.figure import Figure

    loss = np.array([[0.30, 0.200, 0.1000], [0.2, 0.1005, np.inf], [0.10, np.inf, np.nan]])
    fig = Figure()
    ax = fig.add_subplot()
    drawn = plots.draw_lr_heatmap(
        fig, ax, {**_panel(loss), "reference": [{"lr_a": 2.0, "lr_b": 1.0, "label": "paper"}]}
    )
    assert drawn.best == (0, 2)
    # 1% band around 0.1: (0, 2), (1, 1) (0.1005) and (2, 0); never a diverged cell
    assert sorted(map(tuple, drawn.band.tolist())) == [(0, 2), (1, 1), (2, 0)]
    assert sorted(map(tuple, drawn.diverged.tolist())) == [(1, 2), (2, 1), (2, 2)]
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    plotted = np.ma.getdata(mesh.get_array()).reshape(3, 3)  # rows are lr_B (transposed)
    shown = ~np.ma.getmaskarray(mesh.get_array()).reshape(3, 3)
    np.testing.assert_array_equal(plotted[shown], loss.T[np.isfinite(loss.T)])
    plus = next(ln for ln in ax.lines if ln.get_marker() == "+")
    np.testing.assert_array_equal(plus.get_xdata(), [0.0, 1.0, 2.0])  # log2(lr_A) of the band
    star = next(ln for ln in ax.lines if ln.get_marker() == "*")
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (1.0, 0.0)
    assert star.get_label() == "paper"
    narrow = plots.draw_lr_heatmap(fig, fig.add_subplot(2, 1, 2), _panel(loss), margin=0.001)
    assert sorted(map(tuple, narrow.band.tolist())) == [(0, 2), (2, 0)]


def _ticks(ax: object, axis: str) -> list[tuple[float, str]]:
    """(position, label) of an axis's ticks."""
    get = getattr(ax, f"get_{axis}ticks")
    labels = getattr(ax, f"get_{axis}ticklabels")()
    return [(float(v), t.get_text()) for v, t in zip(get(), labels, strict=True)]


def test_tick_labels_say_the_values_passed() -> None:
    assert [plots.tick_label(v) for v in (1e-4, 4e-4, 1e-5, 2.5e-6, 1.0, 16.0, 0.0064)] == [
        "0.0001",
        "0.0004",
        "1e-5",
        "2.5e-6",
        "1",
        "16",
        "0.0064",
    ]


def test_sweep_heatmap_ticks_are_the_lrs_and_ratios_and_its_title_names_the_run() -> None:
    data = {
        "lr_a": [1e-4, 1e-3],
        "y": [1.0, 16.0],
        "y_label": "ratio",
        "values": [[0.61, 0.7], [0.6, 0.655]],
        "states": [["complete"] * 2] * 2,
        "best": [0, 1],
        "baseline_row": 0,
        "metric": "eval_accuracy",
        "title": "minilm on rotten-tomatoes, 150 steps: eval_accuracy",
    }
    ax = plots.draw_sweep_heatmap(data).axes[0]
    assert _ticks(ax, "x") == [(np.log2(1e-4), "0.0001"), (np.log2(1e-3), "0.001")]
    assert _ticks(ax, "y") == [(0.0, "1"), (4.0, "16")]  # not log2's 0 and 4
    assert ax.get_xlabel() == "lr_A (log scale)"
    assert ax.get_ylabel() == "ratio = lr_B / lr_A (log scale)"
    assert ax.get_title() == data["title"]
    box = ax.get_legend()
    legend = {t.get_text(): h for t, h in zip(box.texts, box.legend_handles, strict=True)}
    frame = next(p for p in ax.patches if p.get_linestyle() == "--")  # the ratio-1 row
    assert frame.get_edgecolor()[:3] == (1.0, 1.0, 1.0) and frame.get_path_effects()
    handle = legend["ratio = 1 (LoRA)"]
    assert handle.get_color() == "w" and handle.get_path_effects()  # white, black-edged: seen


def test_lr_heatmap_ticks_and_the_diagonal_drawn_as_its_legend_says() -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    lrs = list(np.logspace(-4, 1, 16))  # 16 values, too many to label: the powers of ten
    loss = np.arange(256, dtype=float).reshape(16, 16) + 1.0
    plots.draw_lr_heatmap(fig, ax, {"lr_a": lrs, "lr_b": lrs, "loss": loss})
    labels = ["0.0001", "0.001", "0.01", "0.1", "1", "10"]
    assert [label for _, label in _ticks(ax, "x")] == labels
    assert _ticks(ax, "y")[1] == pytest.approx((np.log2(1e-3), "0.001"))
    narrow = [2 ** (k / 4) for k in range(12)]  # 1 to 6.7: one power of ten, so every second
    ax2 = fig.add_subplot(2, 1, 2)
    plots.draw_lr_heatmap(fig, ax2, {"lr_a": narrow, "lr_b": narrow, "loss": loss[:12, :12]})
    assert [label for _, label in _ticks(ax2, "x")] == ["1", "1.41", "2", "2.83", "4", "5.66"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("lr_A (log scale)", "lr_B (log scale)")
    diagonal = next(ln for ln in ax.lines if ln.get_linestyle() == "--")
    legend = ax.get_legend()
    handle = legend.legend_handles[[t.get_text() for t in legend.texts].index("lr_A = lr_B (LoRA)")]
    assert handle.get_color() == diagonal.get_color() == "w"
    assert handle.get_path_effects() and diagonal.get_path_effects()  # black edge: visible on white


def test_training_curves_of_a_causal_lm_share_one_loss_axis_with_whole_steps() -> None:
    data = {
        "train_steps": [1, 2, 3, 4],
        "train_loss": [2.0, 1.8, 1.7, 1.5],
        "eval_steps": [0, 2, 4],
        "eval_metric": [2.1, 1.9, 1.6],
        "eval_loss": [2.1, 1.9, 1.6],
        "metric_name": "eval_loss",
    }
    fig = plots.draw_training_curves(data)
    (ax,) = fig.axes  # train and eval loss on one axis: comparable
    train, evaluated = ax.lines
    assert train.get_label() == "train loss" and train.get_alpha() >= 0.7
    assert evaluated.get_label() == "eval loss" and list(evaluated.get_ydata()) == [2.1, 1.9, 1.6]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())  # no step 0.5
    longer = plots.draw_training_curves(
        {**data, "train_steps": list(range(1, 21)), "train_loss": [1.0] * 20}
    )
    smooth = longer.axes[0].lines[1]
    assert smooth.get_label() == "train loss, mean of the last 2 logged"


def test_demo_styles_keep_an_equal_lora_line_visible_and_say_how_the_loss_is_smoothed() -> None:
    same = {"steps": [0, 2, 4], "accuracy": [0.5, 0.6, 0.6]}
    loss = {"train_steps": list(range(1, 21)), "train_loss": [0.7] * 20}
    fig = plots.draw_demo({"LoRA": {**same, **loss}, "LoRA+": {**same, **loss}}, title="t")
    ax_acc, ax_loss = fig.axes
    lora, plus = ax_acc.lines
    assert list(lora.get_ydata()) == list(plus.get_ydata())
    assert lora.get_markersize() > plus.get_markersize() and lora.get_markerfacecolor() == "none"
    assert lora.get_linestyle() != plus.get_linestyle()  # the one below still shows
    assert ax_loss.get_ylabel() == "train loss, mean of the last 2 logged"
    assert ax_loss.lines[0].get_linestyle() != ax_loss.lines[1].get_linestyle()


def test_methods_draws_each_line_and_the_seeds_range_at_the_pick() -> None:
    row = {"method": "lora", "colour": 0, "style": "-", "line": [[1e-3, 0.5], [1e-2, 0.2]]}
    other = {"method": "lorafa", "colour": 5, "style": "--", "line": [], "chosen": None}
    panel = {"title": "width n = 16", "methods": [{**row, "chosen": [1e-2, 0.3, 0.2, 0.5]}, other]}
    fig = plots.draw_methods({"panels": [panel, panel], "title": "t", "ylabel": "loss"})
    left, right = fig.axes
    assert left.get_lines()[0].get_label() == "lora"
    assert list(left.get_lines()[0].get_ydata()) == [0.5, 0.2]
    dot = left.get_lines()[1]  # the pick: the seeds' mean
    assert list(dot.get_xdata()) == [1e-2] and list(dot.get_ydata()) == [0.3]
    bar = left.collections[0].get_segments()[0]  # the seeds' range
    np.testing.assert_allclose(bar[:, 1], [0.2, 0.5])
    assert left.get_title() == "width n = 16" and left.get_ylabel() == "loss"
    assert (left.get_xscale(), left.get_yscale()) == ("log", "log") and right.get_ylabel() == ""
    with pytest.raises(ValueError, match="at least one panel"):
        plots.draw_methods({"panels": []})
