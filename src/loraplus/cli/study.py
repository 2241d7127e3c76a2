"""`loraplus study FILE.toml`: a study's stages (sweeps and tunes) in order, resumable, reported."""

from __future__ import annotations

import argparse

from loraplus._extras import require
from loraplus.cli.common import Subparsers


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus study`: run (or plan, --dry-run) the stages of a study file."""
    parser = subparsers.add_parser(
        "study",
        help="run a study file: stages of sweeps and tunes, each stage fed by the ones before",
        description="Run the stages of a study file (benchmarks/studies/*.toml; the format is "
        "documented in loraplus.study.config) in order: each stage is one or more Optuna "
        "sweeps or tunes under the file's runs folder, so a stopped study resumes and a "
        "finished one trains nothing. Writes each run's sweep.json / tune.json and figure, "
        "results.json and results.md (and the study's own report) into its out folder.",
    )
    parser.add_argument("file", help="the study file (TOML)")
    parser.add_argument("--smoke", action="store_true", help="merge the file's smoke settings")
    parser.add_argument(
        "--stage", nargs="+", metavar="NAME", help="run only these stages (earlier ones are read)"
    )
    parser.add_argument("--runs", metavar="DIR", help="studies and trials here (file's: runs)")
    parser.add_argument("--out", metavar="DIR", help="outputs here (file's: out)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a training setting for every stage (TOML value), e.g. --set max_steps=20",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="worker processes per run")
    parser.add_argument("--storage", metavar="URL", help="one Optuna storage for every run")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the cells each stage would train; train none"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run, or with --dry-run plan, the study."""
    require("sweep", "loraplus study")
    from loraplus.study import load_study, run_study, write_report
    from loraplus.study.run import planned

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}.")
    cfg = load_study(args.file, smoke=args.smoke, sets=args.set, runs=args.runs, out=args.out)
    if args.dry_run:
        for name, cells in planned(cfg, args.stage).items():
            if cells is None:
                print(f"{name}: waits for an earlier stage's results")
                continue
            print(f"{name}: {len(cells)} cell(s)")
            for c in cells:
                print(f"  {c.run}: lr_A {c.lr_a:g}, {c.axis} {c.value}, seed {c.seed}")
        return 0
    result = run_study(cfg, args.stage, storage=args.storage, workers=args.workers)
    write_report(result)
    done = sum(len(d) for d in result.stages.values())
    print(f"{cfg.title}: {done} run(s); results in {cfg.out}/ (results.md, results.json)")
    return 0
