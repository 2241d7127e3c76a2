"""`loraplus sweep`: every cell of an lr_A x ratio (or lr_B) grid on one Optuna study."""

from __future__ import annotations

import argparse
import json

from loraplus import _config
from loraplus._extras import require
from loraplus.cli.common import Subparsers
from loraplus.train import TrainConfig


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus sweep`: an lr_A x ratio (or lr_A x lr_B) grid with Optuna, resumable."""
    parser = subparsers.add_parser(
        "sweep",
        dataclass_types=TrainConfig,
        suppress=True,
        help="grid of lr_A x ratio (or lr_B) on any training config, with a heatmap",
        description="Train every cell of an lr_A x ratio (or lr_A x lr_B) grid with Optuna "
        "(SQLite by default, so a sweep resumes after a crash and several --workers or machines "
        "share one study), then write sweep.json and a Figure-3-style heatmap into --out-dir "
        "and print the best cell, the best standard-LoRA cell (ratio 1) and the gain.",
    )
    # Sweep settings: absent unless given, so SweepConfig's defaults are the only ones.
    quiet = {"default": argparse.SUPPRESS}
    parser.add_argument("--config", metavar="FILE", help="YAML/TOML training settings", **quiet)
    parser.add_argument("--lr-a", nargs="+", type=float, metavar="LR", help="lr_A values", **quiet)
    axis = parser.add_mutually_exclusive_group()
    axis.add_argument("--ratios", nargs="+", type=float, metavar="R", help="ratios", **quiet)
    axis.add_argument("--lr-b", nargs="+", type=float, metavar="LR", help="lr_B values", **quiet)
    parser.add_argument("--seeds", nargs="+", type=int, metavar="N", **quiet)
    parser.add_argument("--metric", help="eval_accuracy or eval_loss", **quiet)
    parser.add_argument(
        "--storage", metavar="URL", help="sqlite:///... or postgresql://...", **quiet
    )
    parser.add_argument("--study-name", **quiet)
    parser.add_argument("--out-dir", metavar="DIR", **quiet)
    parser.add_argument("--workers", type=int, help="worker processes on this machine", **quiet)
    parser.add_argument("--pruner", help="none or median", **quiet)
    parser.add_argument(
        "--budget", action="store_true", help="ratio fixed, 1-D lr_A search vs LoRA", **quiet
    )
    parser.add_argument("--budget-ratio", type=float, metavar="R", **quiet)
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

    settings = {k: v for k, v in vars(args).items() if k in _config.field_names(SweepConfig)}
    cfg = SweepConfig(**settings, overrides=_config.passed(args, TrainConfig))
    if args.summarize_only:
        summary = sweep.summarize(cfg.storage_url, cfg.study_name)
        sweep.write_outputs(summary, cfg.out_dir)
    else:
        summary = sweep.run_sweep(cfg, n_trials=args.n_trials)
    for label, cell in (("best", summary.best), ("best LoRA (ratio 1)", summary.best_lora)):
        if cell is not None:
            print(
                f"{label}: lr_A={cell['lr_a']:.3g} ratio={cell['ratio']:.3g} "
                f"{summary.metric}={cell['mean']:.4f}"
            )
    if summary.gain is not None:
        print(f"gain of the best cell over standard LoRA: {summary.gain:+.4f}")
    if summary.budget:
        print("budget: " + json.dumps(summary.budget, default=str))
    print(f"outputs in {cfg.out_dir}/: sweep.json, sweep_heatmap.png")
    return 0
