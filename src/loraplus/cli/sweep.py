"""`loraplus sweep`: every cell of an lr_A x ratio (lr_B, method, or --axis FIELD) grid on one
Optuna study."""

from __future__ import annotations

import argparse
import json
from typing import Any

from loraplus import _config
from loraplus._extras import require
from loraplus.cli.common import Subparsers, study_parser
from loraplus.train import TrainConfig


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus sweep`: an lr_A x ratio (or lr_A x lr_B) grid with Optuna, resumable."""
    parser = study_parser(
        subparsers,
        "sweep",
        "SweepConfig",
        hide=("lr", "ratio", "seed", "output_dir"),  # set per cell (--lr-a, --ratios, --out-dir)
        help="grid of lr_A x ratio (or lr_B) on any training config, with a heatmap",
        description="Train every cell of an lr_A x ratio (or lr_A x lr_B) grid with Optuna "
        "(SQLite by default, so a sweep resumes after a crash and several --workers or machines "
        "share one study), then write sweep.json and a Figure-3-style heatmap into --out-dir "
        "and print the best cell, the best standard-LoRA cell (ratio 1) and the gain. "
        "--axis FIELD=V1,V2 makes any training setting the second axis (e.g. --axis "
        "init=init1,init2 --ratio 16). "
        "Training flags (--model, --max-steps, ...) apply to every cell.",
    )
    parser.add_argument("--n-trials", type=int, metavar="N", help="trials per worker (default all)")
    parser.add_argument(
        "--summarize-only", action="store_true", help="report the stored study, train nothing"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run (or just summarize) a sweep and print its best cells."""
    require("sweep", "loraplus sweep")
    from loraplus import sweep
    from loraplus.sweep import SweepConfig

    cfg = SweepConfig(
        **_config.passed(args, SweepConfig), overrides=_config.passed(args, TrainConfig)
    )
    if args.summarize_only:
        summary = sweep.summarize(cfg.storage_url, cfg.study_name)
        sweep.write_outputs(summary, cfg.out_dir)
    else:
        summary = sweep.run_sweep(cfg, n_trials=args.n_trials)
    for row in summary.methods():
        cell = row["best"]
        got = "no complete cell" if cell is None else _cell_text(cell, summary.metric, "method")
        print(f"{row['method']}: {got} ({row['runs']} runs)")
    for label, cell in (("best", summary.best), ("best LoRA (ratio 1)", summary.best_lora)):
        if cell is not None:
            print(f"{label}: {_cell_text(cell, summary.metric, summary.axis)}")
    if summary.gain is not None:
        print(f"gain of the best cell over standard LoRA: {summary.gain:+.4f}")
    if summary.budget:
        print("budget: " + json.dumps(summary.budget, default=str))
    print(f"outputs in {cfg.out_dir}/: sweep.json, sweep_heatmap.png")
    return 0


def _cell_text(cell: dict[str, Any], metric: str, axis: str = "ratio") -> str:
    """lr_A, the ratio, method or --axis value, and the metric (± std over seeds) of a cell."""
    ratio = (
        cell["ratio"] if isinstance(cell["ratio"], (str, type(None))) else f"{cell['ratio']:.3g}"
    )
    what = f"method={cell['method']}" if "method" in cell else f"ratio={ratio}"
    if axis not in ("ratio", "lr_b", "method"):
        what = f"{axis}={cell[axis]}"
    spread = f" ± {cell['std']:.4f} over {cell['n']} seeds" if cell["n"] > 1 else ""
    return f"lr_A={cell['lr_a']:.3g} {what} {metric}={cell['mean']:.4f}{spread}"
