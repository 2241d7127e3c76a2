"""Width-scaling check: how the toy's optimal lr_A and lr_B move with the width n.

For each optimizer (GD, Adam), seed and width n, the toy grid of `run_toy` is trained for `steps`
steps and the optimum is the grid cell with the lowest *train* loss after those steps (the
paper's notion: the best lr for a fixed step budget). The log2 of the optimal lrs is then fitted
by least squares against log2(n), one slope per seed, and the slopes' mean and spread are compared
with the theory: lr_A ∝ n^-1 and lr_B ∝ n^0 (Theorem 1 for Adam; Proposition 2 for GD on the
linear toy model).

Parametrization (stated, not tuned): the toy set-up named by `setup` (see `toy.py`; "paper",
"init1" and "init2" all keep activations Θ(1) in n), the same lr grid in absolute units for
every n. What each (optimizer, readout) predicts for *this* MLP, from
the order-of-magnitude argument of §3.1 applied to the output f:

- GD, readout "standard" (W_out ~ N(0, 1/n)): grad_B ∝ W_out has n^-1/2 entries, and a step of B
  moves f by lr_B·|W_out|²·|Az|² = Θ(lr_B), a step of A by Θ(lr_A·n): slopes (-1, 0), Prop. 2's.
- Adam, readout "standard": Adam's step of B is lr_B·sign(W_out), which moves f by
  lr_B·Σ|W_out_i| = Θ(lr_B·√n): slopes (-1, -1/2). Theorem 1's (-1, 0) assumes a μP-pretrained
  model, i.e. readout "mup" (W_out ~ N(0, 1/n²)), where Adam predicts (-1, 0) and GD (-1, +1).
Besides lr_A* and lr_B*, the slopes of their ratio and product are fitted, and every run
records how wide (in log2 ratio) the set of cells within `near_margin` of the best loss is: under
GD, B·A's rescaling symmetry (A→cA, B→B/c with lr_A→c²lr_A, lr_B→lr_B/c²) makes the loss nearly
flat along lr_A·lr_B = const once A has moved far from its init, so the ratio can be weakly
determined. Optima on the grid edge are flagged (the true optimum may lie beyond).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from loraplus._io import write_json
from loraplus.experiments.toy import run_toy
from loraplus.experiments.toy_result import (
    SETUPS,
    Init,
    Readout,
    Setup,
    ToyConfig,
    best,
    log2_grid,
)


def _slopes(a: float, b: float) -> dict[str, float]:
    return {"lr_a": a, "lr_b": b, "ratio": b - a, "product": a + b}


PAPER_SLOPES: dict[str, float] = _slopes(-1.0, 0.0)
PREDICTED_SLOPES: dict[tuple[str, str], dict[str, float]] = {
    ("standard", "gd"): _slopes(-1.0, 0.0),
    ("standard", "adam"): _slopes(-1.0, -0.5),
    ("mup", "gd"): _slopes(-1.0, 1.0),
    ("mup", "adam"): _slopes(-1.0, 0.0),
}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class WidthConfig:
    """Widths, seeds, optimizers, step budget and lr ranges; each field is one `experiment width`
    flag."""

    setup: Setup = field(
        default="paper",
        metadata=_help("toy set-up at every width: paper (appendix C.1.1), init1 or init2"),
    )
    widths: list[int] = field(
        default_factory=lambda: [64, 128, 256, 512, 1024, 2048],
        metadata=_help("widths n to scan (at least two)"),
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata=_help("seeds; one slope fit per seed")
    )
    optimizers: list[str] = field(
        default_factory=lambda: ["gd", "adam"], metadata=_help("optimizers to scan: gd, adam")
    )
    readout: Readout = field(
        default="standard", metadata=_help("standard: W_out~N(0,1/n); mup: W_out~N(0,1/n^2)")
    )
    steps: int = field(default=50, metadata=_help("step budget; optimum = best train loss then"))
    n_train: int = field(default=64, metadata=_help("training points (full batch)"))
    n_test: int = field(default=64, metadata=_help("test points"))
    d: int = field(default=5, metadata=_help("input dimension"))
    r: int = field(default=4, metadata=_help("LoRA rank"))
    log2_step: float = field(default=1.0, metadata=_help("grid spacing in log2(lr)"))
    near_margin: float = field(
        default=0.05, metadata=_help("cells within this fraction of the best loss are near-best")
    )
    gd_log2_range: list[float] = field(
        default_factory=lambda: [-8.0, 6.0, -14.0, 4.0],
        metadata=_help("GD grid: log2 lr_A lo hi, log2 lr_B lo hi"),
    )
    adam_log2_range: list[float] = field(
        default_factory=lambda: [-14.0, 4.0, -16.0, 2.0],
        metadata=_help("Adam grid: log2 lr_A lo hi, log2 lr_B lo hi"),
    )
    dtype: Literal["float32", "float64"] = field(
        default="float32", metadata=_help("float type of the grids")
    )
    progress: bool = field(default=True, metadata=_help("show a progress bar"))
    init: Init | None = field(
        default=None, metadata=_help("older spelling of --setup init1/init2 (sets --setup)")
    )

    def __post_init__(self) -> None:
        if self.init is not None:
            if self.setup not in ("paper", self.init):
                raise ValueError(
                    f"--init {self.init} conflicts with --setup {self.setup}; use --setup."
                )
            object.__setattr__(self, "setup", self.init)
            object.__setattr__(self, "init", None)
        for name in ("widths", "seeds", "optimizers", "gd_log2_range", "adam_log2_range"):
            object.__setattr__(self, name, list(getattr(self, name)))
        if self.setup not in SETUPS:
            raise ValueError(f"--setup {self.setup!r} is not one of {SETUPS}.")
        if len(self.widths) < 2:
            raise ValueError("--widths needs at least two widths to fit a slope.")
        if not self.seeds:
            raise ValueError("--seeds must not be empty.")
        bad = [o for o in self.optimizers if o not in ("gd", "adam")]
        if bad or not self.optimizers:
            raise ValueError(f"--optimizers takes gd and/or adam, got {self.optimizers}.")
        for name in ("gd_log2_range", "adam_log2_range"):
            lo_a, hi_a, lo_b, hi_b = (list(getattr(self, name)) + [0.0] * 4)[:4]
            if len(getattr(self, name)) != 4 or hi_a < lo_a or hi_b < lo_b:
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag} takes 4 values: lr_A lo hi, lr_B lo hi (log2).")
        if self.log2_step <= 0:
            raise ValueError(f"--log2-step {self.log2_step} must be > 0.")

    @property
    def log2_ranges(self) -> dict[str, tuple[float, float, float, float]]:
        """optimizer -> (log2 lr_A lo, hi, log2 lr_B lo, hi)."""
        g, a = self.gd_log2_range, self.adam_log2_range
        return {"gd": (g[0], g[1], g[2], g[3]), "adam": (a[0], a[1], a[2], a[3])}

    def grid(self, optimizer: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (lr_A values, lr_B values) scanned for `optimizer`, the same at every width."""
        a_lo, a_hi, b_lo, b_hi = self.log2_ranges[optimizer]

        def axis(lo: float, hi: float) -> tuple[float, ...]:
            return log2_grid(lo, hi, round((hi - lo) / self.log2_step) + 1)

        return axis(a_lo, a_hi), axis(b_lo, b_hi)


@dataclass
class WidthResult:
    """One record per (optimizer, seed, width) and the fitted slopes per optimizer."""

    config: WidthConfig
    runs: list[dict[str, Any]]
    fits: dict[str, dict[str, Any]]
    seconds: float


def fit_loglog_slope(x: Any, y: Any) -> tuple[float, float]:
    """Least-squares (slope, intercept) of log2(y) against log2(x)."""
    lx, ly = np.log2(np.asarray(x, dtype=float)), np.log2(np.asarray(y, dtype=float))
    if lx.size < 2 or lx.size != ly.size or not np.all(np.isfinite(ly)):
        raise ValueError("fit_loglog_slope needs >= 2 paired positive, finite values.")
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def _spread(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "min": float(arr.min()), "max": float(arr.max())}


def _value(run: dict[str, Any], key: str) -> float:
    """lr_a, lr_b, ratio (lr_b / lr_a) or product (lr_a * lr_b) of one run's optimum."""
    if key == "ratio":
        return float(run["lr_b"] / run["lr_a"])
    if key == "product":
        return float(run["lr_a"] * run["lr_b"])
    return float(run[key])


def _fit(cfg: WidthConfig, runs: list[dict[str, Any]], optimizer: str) -> dict[str, Any]:
    mine = [r for r in runs if r["optimizer"] == optimizer]
    per_seed: dict[str, list[tuple[float, float]]] = {
        "lr_a": [],
        "lr_b": [],
        "ratio": [],
        "product": [],
    }
    seeds_used = []
    for seed in cfg.seeds:
        rows = sorted((r for r in mine if r["seed"] == seed), key=lambda r: r["n"])
        if len(rows) < 2 or any(r["lr_a"] is None for r in rows):
            continue
        seeds_used.append(seed)
        for key in per_seed:
            per_seed[key].append(
                fit_loglog_slope([r["n"] for r in rows], [_value(r, key) for r in rows])
            )
    ok = [r for r in mine if r["lr_a"] is not None]
    out: dict[str, Any] = {
        "seeds_fitted": seeds_used,
        "paper_theory": dict(PAPER_SLOPES),
        "predicted_this_parametrization": PREDICTED_SLOPES[(cfg.readout, optimizer)],
        "at_grid_edge": [
            {"n": r["n"], "seed": r["seed"], "edges": r["edges"]} for r in ok if r["edges"]
        ],
        "all_diverged": [{"n": r["n"], "seed": r["seed"]} for r in mine if r["lr_a"] is None],
        "mean_near_best_log2_ratio_span": (
            float(np.mean([np.ptp(r["near_best_log2_ratio"]) for r in ok])) if ok else None
        ),
    }
    for key in ("lr_a", "lr_b", "ratio", "product"):
        slopes = [s for s, _ in per_seed[key]]
        out[f"slope_{key}"] = {**_spread(slopes), "per_seed": slopes} if slopes else None
        if len(ok) >= 2:
            out[f"pooled_slope_{key}"] = fit_loglog_slope(
                [r["n"] for r in ok], [_value(r, key) for r in ok]
            )[0]
    return out


def run_width(cfg: WidthConfig) -> WidthResult:
    """Run the toy grid for every (optimizer, seed, width), find optima and fit the slopes."""
    t_start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    jobs = [(o, s, n) for o in cfg.optimizers for s in cfg.seeds for n in cfg.widths]
    bar = tqdm(jobs, disable=not cfg.progress, desc="width scan")
    for optimizer, seed, n in bar:
        lr_a, lr_b = cfg.grid(optimizer)
        toy = ToyConfig(
            n=n,
            d=cfg.d,
            r=cfg.r,
            n_train=cfg.n_train,
            n_test=cfg.n_test,
            setup=cfg.setup,
            optimizer="adam" if optimizer == "adam" else "gd",
            readout=cfg.readout,
            lr_a=list(lr_a),
            lr_b=list(lr_b),
            steps=cfg.steps,
            early_step=cfg.steps,
            seeds=[seed],
            dtype="float64" if cfg.dtype == "float64" else "float32",
            progress=False,
        )
        res = run_toy(toy)
        rec: dict[str, Any] = {
            "optimizer": optimizer,
            "seed": seed,
            "n": n,
            "seconds": res.seconds,
            "n_diverged": int(res.diverged.sum()),
            "init_loss": res.init_loss,
        }
        try:
            bp = best(res, "final", "train")
        except ValueError:
            rec.update(lr_a=None, lr_b=None, loss=None, edges=[], diag_lr=None, diag_loss=None)
            rec.update(near_best_cells=0, near_best_log2_ratio=None)
        else:
            edges = [
                name
                for name, hit in (
                    ("lr_a_low", bp.i == 0),
                    ("lr_a_high", bp.i == len(lr_a) - 1),
                    ("lr_b_low", bp.j == 0),
                    ("lr_b_high", bp.j == len(lr_b) - 1),
                )
                if hit
            ]
            loss = res.loss("final", "train")
            near = np.argwhere(loss <= bp.loss * (1 + cfg.near_margin))
            log2_ratio = np.log2(res.lr_b[near[:, 1]] / res.lr_a[near[:, 0]])
            diag_loss = bp.diag_loss if bp.diag_loss is not None else math.inf
            rec.update(
                lr_a=bp.lr_a,
                lr_b=bp.lr_b,
                loss=bp.loss,
                edges=edges,
                diag_lr=bp.diag_lr,
                diag_loss=diag_loss if math.isfinite(diag_loss) else None,
                near_best_cells=len(near),
                near_best_log2_ratio=[float(log2_ratio.min()), float(log2_ratio.max())],
            )
        runs.append(rec)
        if cfg.progress:
            bar.set_postfix(opt=optimizer, seed=seed, n=n)
    fits: dict[str, dict[str, Any]] = {o: _fit(cfg, runs, o) for o in cfg.optimizers}
    return WidthResult(config=cfg, runs=runs, fits=fits, seconds=time.perf_counter() - t_start)


def width_to_json(result: WidthResult) -> dict[str, Any]:
    """Plain-JSON form: config, grids, every run's optimum, the fitted slopes and their spread."""
    cfg = result.config
    return {
        "experiment": "width",
        "config": asdict(cfg),
        "selection": f"grid cell with the lowest train MSE after {cfg.steps} steps",
        "grids": {o: dict(zip(("lr_a", "lr_b"), cfg.grid(o), strict=True)) for o in cfg.optimizers},
        "seconds": result.seconds,
        "fits": result.fits,
        "runs": result.runs,
    }


def summary_lines(result: WidthResult) -> list[str]:
    """One human line per optimizer: fitted slopes (mean ± std over seeds) vs theory, edge hits."""
    lines = []
    for opt, fit in result.fits.items():
        parts = [f"{opt}:"]
        for key in ("lr_a", "lr_b", "ratio", "product"):
            s = fit[f"slope_{key}"]
            pred = fit["predicted_this_parametrization"][key]
            paper = fit["paper_theory"][key]
            if s is None:
                parts.append(f"{key} slope n/a")
            else:
                parts.append(
                    f"{key} slope {s['mean']:+.2f} ± {s['std']:.2f} "
                    f"[{s['min']:+.2f}, {s['max']:+.2f}] (paper {paper:+g}, predicted {pred:+g})"
                )
        parts.append(f"edge hits {len(fit['at_grid_edge'])}")
        if fit["mean_near_best_log2_ratio_span"] is not None:
            span = fit["mean_near_best_log2_ratio_span"]
            parts.append(f"near-best log2(ratio) span {span:.1f} octaves")
        lines.append("  ".join(parts))
    return lines


def write_width_outputs(
    result: WidthResult, out_dir: str | Path, *, prefix: str = "width"
) -> list[Path]:
    """Write `<prefix>.json` (slopes, spread, every optimum) and `<prefix>.png` (log-log plot)."""
    from loraplus import plots

    out = Path(out_dir)
    cfg = result.config
    paths = [write_json(out / f"{prefix}.json", width_to_json(result), indent=1)]
    panels = []
    for opt, fit in result.fits.items():
        seeds = fit["seeds_fitted"]
        if not seeds or fit["slope_lr_a"] is None:
            continue
        series = []
        for key, name in (
            ("lr_a", "lr_A*"),
            ("lr_b", "lr_B*"),
            ("product", "lr_A*·lr_B*"),
        ):
            values = [
                [
                    next(
                        _value(r, key)
                        for r in result.runs
                        if r["optimizer"] == opt and r["seed"] == s and r["n"] == n
                    )
                    for n in cfg.widths
                ]
                for s in seeds
            ]
            slope = fit[f"slope_{key}"]
            series.append(
                {
                    "name": name,
                    "values": values,
                    "slope": (slope["mean"], slope["std"]),
                    "theory": fit["paper_theory"][key],
                    "predicted": fit["predicted_this_parametrization"][key],
                }
            )
        panels.append(
            {
                "title": f"{opt.upper()}: optimum after {cfg.steps} steps ({len(seeds)} seeds)",
                "widths": list(cfg.widths),
                "series": series,
            }
        )
    if panels:
        suptitle = (
            f"Toy LoRA MLP width scan (setup={cfg.setup}, readout={cfg.readout}): argmin of "
            f"train loss after {cfg.steps} steps; dotted: paper's lr_A ∝ 1/n, lr_B ∝ 1"
        )
        paths.append(
            plots.plot_width_scaling(
                out / f"{prefix}.png", {"panels": panels, "suptitle": suptitle}
            )
        )
    return paths
