"""`loraplus experiment toy|width`: the paper's toy model (Figure 2) and width scaling."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from loraplus._extras import require
from loraplus.cli.common import CLIError, Subparsers


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus experiment toy|width`: the paper's toy model (Figure 2) and width scaling."""
    parser = subparsers.add_parser(
        "experiment", help="the paper's toy-model heatmaps (toy) and width scaling (width)"
    )
    which = parser.add_subparsers(dest="experiment", required=True, metavar="{toy,width}")
    toy = which.add_parser(
        "toy",
        help="train the toy LoRA MLP over an (lr_A, lr_B) grid (paper Figure 2)",
        description="f(x) = W_out ReLU(B A ReLU(W_in x)), only A and B trained, over a grid of "
        "(lr_A, lr_B), vectorized. Writes loss heatmaps (early and final) and toy.json.",
    )
    toy.add_argument("--n", type=int, default=100, help="width")
    toy.add_argument("--rank", type=int, default=4)
    toy.add_argument("--steps", type=int, default=200)
    toy.add_argument("--early-step", type=int, default=10)
    toy.add_argument("--lr-log2-range", nargs=2, type=float, default=[-10.0, 4.0], metavar="LO HI")
    toy.add_argument("--num-lrs", type=int, default=15, help="grid points per axis")
    toy.add_argument("--optimizer", default="gd", choices=["gd", "adam"])
    toy.add_argument("--init", default="init1", choices=["init1", "init2"])
    toy.add_argument("--readout", default="standard", choices=["standard", "mup"])
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--out", default="runs/toy", metavar="DIR")
    toy.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    toy.set_defaults(func=cmd_toy)
    width = which.add_parser(
        "width",
        help="optimal lr_A and lr_B against width n, fitted slopes vs theory",
        description="Repeat the toy grid for several widths and seeds, with GD and Adam; fit "
        "log-log slopes of the optimal lr_A and lr_B against n (theory: -1 and 0).",
    )
    width.add_argument("--widths", default="64,128,256,512,1024,2048", metavar="N,N,...")
    width.add_argument("--seeds", default="0,1,2", metavar="S,S,...")
    width.add_argument("--optimizers", default="gd,adam", metavar="gd,adam")
    width.add_argument("--steps", type=int, default=50)
    width.add_argument("--n-train", type=int, default=64)
    width.add_argument("--readout", default="standard", choices=["standard", "mup"])
    width.add_argument("--init", default="init1", choices=["init1", "init2"])
    width.add_argument("--out", default="runs/width", metavar="DIR")
    width.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    width.set_defaults(func=cmd_width)


def _csv(text: str, kind: Callable[[str], Any], name: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise CLIError(f"--{name} must be a comma-separated list, got {text!r}.") from None


def cmd_toy(args: argparse.Namespace) -> int:
    """Run the toy grid, write its heatmaps and JSON, print the best line."""
    require("plots", "loraplus experiment")
    from loraplus.experiments import toy

    lrs = toy.log2_grid(args.lr_log2_range[0], args.lr_log2_range[1], args.num_lrs)
    cfg = toy.ToyConfig(
        n=args.n,
        r=args.rank,
        steps=args.steps,
        early_step=args.early_step,
        lr_a=lrs,
        lr_b=lrs,
        optimizer=args.optimizer,
        init=args.init,
        readout=args.readout,
        seed=args.seed,
        progress=args.progress,
    )
    result = toy.run_toy(cfg)
    paths = toy.write_toy_outputs(result, args.out)
    for stage in ("early", "final"):
        print(f"{stage:5s} train: {toy.format_best(toy.best(result, stage, 'train'))}")
    print(toy.format_best(toy.best(result, "final", "test")))
    print(f"outputs: {', '.join(str(p) for p in paths)}")
    return 0


def cmd_width(args: argparse.Namespace) -> int:
    """Run the width scan, write its PNG and JSON, print the fitted slopes."""
    require("plots", "loraplus experiment")
    from loraplus.experiments import width

    cfg = width.WidthConfig(
        widths=_csv(args.widths, int, "widths"),
        seeds=_csv(args.seeds, int, "seeds"),
        optimizers=_csv(args.optimizers, str, "optimizers"),
        steps=args.steps,
        n_train=args.n_train,
        readout=args.readout,
        init=args.init,
        progress=args.progress,
    )
    result = width.run_width(cfg)
    paths = width.write_width_outputs(result, args.out)
    print("\n".join(width.summary_lines(result)))
    print(f"outputs: {', '.join(str(p) for p in paths)}")
    return 0
