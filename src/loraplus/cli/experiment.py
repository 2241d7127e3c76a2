"""`loraplus experiment toy|width`: the paper's toy model (Figure 2) and width scaling.

Every flag is a field of ToyConfig / WidthConfig (one parser builds them; the defaults live in
the dataclasses only), plus `--out`, where the outputs go.
"""

from __future__ import annotations

import argparse

from loraplus import _config
from loraplus._config import DataclassParser
from loraplus._extras import require
from loraplus.cli.common import Subparsers


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus experiment toy|width`."""
    from loraplus.experiments.toy_result import ToyConfig
    from loraplus.experiments.width import WidthConfig

    parser = subparsers.add_parser(
        "experiment", help="the paper's toy-model heatmaps (toy) and width scaling (width)"
    )
    which = parser.add_subparsers(
        dest="experiment", required=True, metavar="{toy,width}", parser_class=DataclassParser
    )
    toy = which.add_parser(
        "toy",
        dataclass_types=ToyConfig,
        suppress=True,
        help="train the toy LoRA MLP over an (lr_A, lr_B) grid (paper Figure 2)",
        description="f(x) = W_out ReLU(B A ReLU(W_in x)), only A and B trained, over a grid of "
        "(lr_A, lr_B), vectorized; --setup paper is the ICML appendix C.1.1 set-up. Writes loss "
        "heatmaps (early and final, 1% band) and toy.json.",
    )
    toy.add_argument("--out", default="runs/toy", metavar="DIR", help="output folder")
    toy.set_defaults(func=run_toy)
    width = which.add_parser(
        "width",
        dataclass_types=WidthConfig,
        suppress=True,
        help="optimal lr_A and lr_B against width n, fitted slopes vs theory",
        description="Repeat the toy grid for several widths and seeds, with GD and Adam; fit "
        "log-log slopes of the optimal lr_A and lr_B against n (theory: -1 and 0).",
    )
    width.add_argument("--out", default="runs/width", metavar="DIR", help="output folder")
    width.set_defaults(func=run_width)


def run_toy(args: argparse.Namespace) -> int:
    """Run the toy grid, write its heatmaps and JSON, print the best cells."""
    require("plots", "loraplus experiment")
    from loraplus.experiments import toy, toy_io
    from loraplus.experiments.toy_result import ToyConfig, best, format_best

    cfg = ToyConfig(**_config.passed(args, ToyConfig))
    result = toy.run_toy(cfg)
    paths = toy_io.write_toy_outputs(result, args.out)
    for stage in ("early", "final"):
        print(f"{stage:5s} train: {format_best(best(result, stage, 'train'))}")
    print(format_best(best(result, "final", "test")))
    print(f"outputs: {', '.join(str(p) for p in paths)}")
    return 0


def run_width(args: argparse.Namespace) -> int:
    """Run the width scan, write its PNG and JSON, print the fitted slopes."""
    require("plots", "loraplus experiment")
    from loraplus.experiments import width

    cfg = width.WidthConfig(**_config.passed(args, width.WidthConfig))
    result = width.run_width(cfg)
    paths = width.write_width_outputs(result, args.out)
    print("\n".join(width.summary_lines(result)))
    print(f"outputs: {', '.join(str(p) for p in paths)}")
    return 0
