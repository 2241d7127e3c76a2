"""The toy's outputs: toy.json (config, cells, best cells, bands, per-seed grids), heatmaps."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from loraplus._io import write_json
from loraplus.experiments.toy_result import (
    BROADCAST_NOTE,
    LOSS_KEYS,
    PAPER_BEST_DIAGONAL,
    PAPER_CAPTION_OPTIMUM,
    SPLITS,
    STAGES,
    ToyConfig,
    ToyResult,
    band,
    best,
    format_best,
    seed_result,
)


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _best_json(result: ToyResult) -> dict[str, dict[str, Any] | None]:
    """Best cell, diagonal best and band of each loss key (None where every cell diverged)."""
    out: dict[str, dict[str, Any] | None] = {}
    for st in STAGES:
        for sp in SPLITS:
            try:
                bp = best(result, st, sp)
            except ValueError:
                out[f"{sp}_{st}"] = None
                continue
            out[f"{sp}_{st}"] = {
                **{k: v for k, v in asdict(bp).items() if k not in ("stage", "split")},
                "ratio": bp.ratio,
                "step": result.step_of(st),
                "line": format_best(bp),
                "near_best": band(result, st, sp).tolist(),
            }
    return out


def toy_to_json(result: ToyResult) -> dict[str, Any]:
    """Plain-JSON form: config, grid, every cell (seed mean; null = diverged), best points and
    bands of the mean grid and of each seed's own grid, and each seed's grids (6 digits)."""
    cfg = result.config
    cells = []
    for i, la in enumerate(result.lr_a):
        for j, lb in enumerate(result.lr_b):
            cell: dict[str, Any] = {"i": i, "j": j, "lr_a": float(la), "lr_b": float(lb)}
            for key in LOSS_KEYS:
                cell[key] = _json_float(getattr(result, key)[i, j])
            cell["diverged"] = bool(result.diverged[i, j])
            cell["diverged_step"] = int(result.diverged_step[i, j])
            cells.append(cell)

    def grid6(arr: np.ndarray) -> list[Any]:
        return [[[_json_float(float(f"{v:.6g}")) for v in row] for row in s] for s in arr]

    per_seed = [
        {
            "seed": s,
            "init_loss": result.seed_init_loss[k],
            "best": _best_json(seed_result(result, k)),
        }
        for k, s in enumerate(cfg.seeds)
    ]
    return {
        "experiment": "toy",
        "config": asdict(cfg),
        "loss_note": BROADCAST_NOTE if cfg.loss == "broadcast" else "mse: the paper's stated loss",
        "aggregation": f"loss grids averaged over seeds {cfg.seeds} before taking the best cell",
        "lr_a": result.lr_a.tolist(),
        "lr_b": result.lr_b.tolist(),
        "init_loss": result.init_loss,
        "seconds": result.seconds,
        "near_best_margin": cfg.margin,
        "best": _best_json(result),
        "best_per_seed": per_seed,
        "seed_grids": {
            **{key: grid6(result.seed_losses[key]) for key in LOSS_KEYS},
            "diverged_step": result.seed_diverged_step.tolist(),
        },
        "cells": cells,
    }


def read_toy_json(path: str | Path) -> ToyResult:
    """Rebuild a ToyResult from `toy.json` (null losses read back as inf; older files too)."""
    data = json.loads(Path(path).read_text())
    raw = data["config"]
    cfg = ToyConfig(**{f.name: raw[f.name] for f in fields(ToyConfig) if f.name in raw})
    lr_a, lr_b = np.asarray(data["lr_a"], float), np.asarray(data["lr_b"], float)
    shape = (lr_a.size, lr_b.size)
    arrays = {key: np.full(shape, np.inf) for key in LOSS_KEYS}
    div_step = np.full(shape, -1, dtype=np.int64)
    for c in data["cells"]:
        for key, arr in arrays.items():
            arr[c["i"], c["j"]] = np.inf if c[key] is None else c[key]
        div_step[c["i"], c["j"]] = c["diverged_step"]
    grids = data.get("seed_grids")
    if grids is None:  # written before seeds were averaged: one seed, the mean is that seed
        seed_losses = {key: arr[None] for key, arr in arrays.items()}
        seed_div, seed_init = div_step[None], [float(data["init_loss"])]
    else:
        seed_losses = {key: np.array(grids[key], dtype=object).astype(float) for key in LOSS_KEYS}
        seed_losses = {k: np.where(np.isnan(v), np.inf, v) for k, v in seed_losses.items()}
        seed_div = np.asarray(grids["diverged_step"], dtype=np.int64)
        seed_init = [float(s["init_loss"]) for s in data["best_per_seed"]]
    return ToyResult(
        config=cfg,
        lr_a=lr_a,
        lr_b=lr_b,
        diverged=div_step >= 0,
        diverged_step=div_step,
        init_loss=float(data["init_loss"]),
        seconds=float(data["seconds"]),
        seed_losses=seed_losses,
        seed_diverged_step=seed_div,
        seed_init_loss=seed_init,
        **arrays,
    )


def _loss_label(cfg: ToyConfig, split: str) -> str:
    return f"{split} MSE" if cfg.loss == "mse" else f"{split} broadcast loss (hypothesis)"


def _paper_marks(cfg: ToyConfig) -> list[dict[str, Any]]:
    """The caption's optimum and best diagonal cell, starred on the paper set-up's final panels."""
    if cfg.setup != "paper":
        return []
    a, b = PAPER_CAPTION_OPTIMUM
    return [
        {"lr_a": a, "lr_b": b, "label": f"paper caption optimum ({a:g}, {b:g})"},
        {"lr_a": b, "lr_b": a, "label": f"caption optimum, lr_A and lr_B exchanged ({b:g}, {a:g})"},
        {"lr_a": PAPER_BEST_DIAGONAL, "lr_b": PAPER_BEST_DIAGONAL, "label": "paper best diagonal"},
    ]


def write_toy_outputs(result: ToyResult, out_dir: str | Path, *, prefix: str = "toy") -> list[Path]:
    """Write `<prefix>.json` and heatmaps `<prefix>_{train,test}_{early,final}.png` + overview."""
    from loraplus import plots

    out = Path(out_dir)
    cfg = result.config
    paths = [write_json(out / f"{prefix}.json", toy_to_json(result), indent=1)]
    note = (
        "\nbroadcast loss = mean over all pairs (f(x_i) - y_j)^2:\n"
        "a hypothesis about the paper's figure, not its stated loss"
        if cfg.loss == "broadcast"
        else ""
    )
    panels = []
    for sp in SPLITS:
        for st in STAGES:
            panel = {
                "lr_a": result.lr_a,
                "lr_b": result.lr_b,
                "loss": result.loss(st, sp),
                "title": f"{sp} loss, step {result.step_of(st)}",
                "cbar_label": _loss_label(cfg, sp),
                "reference": _paper_marks(cfg) if st == "final" else [],
            }
            panels.append(panel)
            suptitle = f"Toy LoRA MLP ({cfg.describe()}){note}"
            paths.append(
                plots.plot_lr_heatmap(
                    out / f"{prefix}_{sp}_{st}.png", panel, margin=cfg.margin, suptitle=suptitle
                )
            )
    suptitle = f"Toy LoRA MLP ({cfg.describe()}); + = within {cfg.margin:.0%} of best{note}"
    paths.append(
        plots.plot_lr_heatmaps(
            out / f"{prefix}_overview.png", panels, margin=cfg.margin, suptitle=suptitle
        )
    )
    return paths
