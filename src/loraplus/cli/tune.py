"""`loraplus tune`: each method's learning rate by an adaptive lr_A line search on one study."""

from __future__ import annotations

import argparse

from loraplus import _config
from loraplus._extras import require
from loraplus.cli.common import Subparsers, study_parser
from loraplus.train import TrainConfig


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus tune`: per --method, the lr_A search; tune.json, a table and a figure."""
    parser = study_parser(
        subparsers,
        "tune",
        "TuneConfig",
        hide=("lr", "seed", "output_dir"),  # set per run (the search, --seeds, --out-dir)
        help="find each method's learning rate (lr_A line search, more seeds at the best)",
        description="For each --method: train a line of lr_A values --step apart around "
        "--centre (first seed), extend it past an edge that holds the best (--extend times at "
        "most), optionally --refine, then run every --seeds at the chosen lr_A; at most "
        "--max-runs runs per method. Every run is a cell of one Optuna study (SQLite by "
        "default; --storage postgresql://... for several machines), so a stopped tune resumes "
        "and a finished one trains nothing. Writes tune.json and tune.png into --out-dir and "
        "prints the table. Training flags (--model, --max-steps, ...) apply to every run.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the tune and print its table."""
    require("sweep", "loraplus tune")
    from loraplus.sweep import TuneConfig, tune

    cfg = TuneConfig(
        **_config.passed(args, TuneConfig), overrides=_config.passed(args, TrainConfig)
    )
    summary = tune(cfg)
    print(summary.table())
    for row in summary.methods:
        if row["lr_a"] is None:
            print(f"{row['method']}: no run gave a finite {summary.metric}; try a lower --centre")
    print(f"outputs in {cfg.out_dir}/: tune.json, tune.png")
    return 0
