"""`loraplus experiment toy|width|methods`: the paper's toy model (Figure 2), width scaling, and
LoRA methods each at its own tuned lr on the LoRA MLP.

Every flag is a field of ToyConfig / WidthConfig / MethodsConfig (one parser builds them; the
defaults live in the dataclasses only), plus `--out`, where the outputs go (and `--config` for
methods: a YAML/TOML file of MethodsConfig fields, which flags override).
"""

from __future__ import annotations

import argparse

from loraplus import _config
from loraplus._config import DataclassParser
from loraplus._extras import require
from loraplus.cli.common import Subparsers


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus experiment toy|width|methods`."""
    from loraplus.experiments.methods import MethodsConfig
    from loraplus.experiments.toy_result import ToyConfig
    from loraplus.experiments.width import WidthConfig

    parser = subparsers.add_parser(
        "experiment",
        help="the paper's toy-model heatmaps (toy), width scaling (width), LoRA methods (methods)",
    )
    which = parser.add_subparsers(
        dest="experiment",
        required=True,
        metavar="{toy,width,methods}",
        parser_class=DataclassParser,
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
    methods = which.add_parser(
        "methods",
        dataclass_types=MethodsConfig,
        suppress=True,
        help="every LoRA method with its own tuned lr on the width-n LoRA MLP",
        description="On the teacher-student LoRA MLP at each width, every method (LoRA, LoRA+, "
        "the best ratio, auto, width-aware, LoRA-FA, Riemannian, rsLoRA, PiSSA, LoRA+ with "
        "rsLoRA) picks its lr on the first seed (loraplus tune's line search), then runs every "
        "seed there. Resumable: runs in OUT/results.json are not run again. Writes "
        "results.json, results.md (tables, seed-paired t-tests) and methods.png.",
    )
    methods.add_argument(
        "--config", metavar="FILE", help="YAML or TOML file of these settings; flags override it"
    )
    methods.add_argument("--out", default="runs/methods", metavar="DIR", help="output folder")
    methods.set_defaults(func=run_methods)


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


def run_methods(args: argparse.Namespace) -> int:
    """Run (or resume) the method study, write its outputs, print its tables."""
    require("plots", "loraplus experiment")
    import shlex

    import torch

    from loraplus.experiments import methods, methods_report

    flags = _config.passed(args, methods.MethodsConfig)
    cfg = _config.build(methods.MethodsConfig, args.config, **flags)
    words = ["loraplus", "experiment", "methods"] + ["--config", args.config] * bool(args.config)
    for key, value in flags.items():
        shown = value if isinstance(value, list) else [value]
        words += [
            f"--{key.replace('_', '-')}",
            *(str(v).lower() if isinstance(v, bool) else str(v) for v in shown),
        ]
    command = shlex.join([*words, "--out", args.out])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: fastest so, and every run sums in the same order
    try:
        summary = methods.run_methods(cfg, args.out, command=command, echo=print)
    finally:
        torch.set_num_threads(threads)
    print(methods_report.table(summary["rows"], cfg.widths))
    print(summary["paired"])
    print("\n".join(summary["comparisons"]))
    print(f"({summary['runs_this_call']} runs in {summary['seconds_this_call']:.0f} s)")
    print(f"outputs: {args.out}/results.json, results.md, methods.png")
    return 0
