"""`loraplus diagnose RUN_DIR`: does A learn, does B learn? One verdict per module kind, a figure.

Reads the δ¹/δ² probe records that `loraplus train --probe-every K` wrote into metrics.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loraplus._extras import require
from loraplus.cli.common import Subparsers


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus diagnose RUN_DIR`."""
    parser = subparsers.add_parser(
        "diagnose",
        help="verdict per module kind (q, k, v, o, MLP) from a run's δ¹/δ² probe records",
        description="From a run trained with --probe-every K: one line per module kind, "
        "'balanced', 'B barely learns: raise the ratio' or 'A barely learns: lower the ratio', "
        "with the median log2(δ²/δ¹) over the late half of the probed steps (balanced within "
        "±3, i.e. the smaller share at least 1/8 of the larger), and probe.png in RUN_DIR.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="output folder of `loraplus train`")
    parser.add_argument("--out", metavar="PNG", help="figure path (default: RUN_DIR/probe.png)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the verdicts and write the figure."""
    from loraplus.verdicts import probe_figure, read_probe_records, run_config, verdicts

    rows = read_probe_records(args.run_dir)
    config = run_config(args.run_dir)
    auto = config.get("ratio") == "auto"
    for verdict in verdicts(rows, auto=auto):
        print(verdict.line())
    require("plots", "the figure of loraplus diagnose")
    run_dir = Path(args.run_dir)
    out = (
        Path(args.out)
        if args.out
        else (run_dir if run_dir.is_dir() else run_dir.parent) / "probe.png"
    )
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: pass a .png file path.")
    title = str(args.run_dir)
    if config:
        title += f": {config.get('model')} on {config.get('data')}, ratio {config.get('ratio')}"
    try:
        probe_figure(rows, out, title=title, auto=auto)
    except OSError as err:
        raise ValueError(f"Cannot write the figure {out}: {err.strerror or err}.") from None
    print(f"figure: {out}")
    return 0
