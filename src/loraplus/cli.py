"""The `loraplus` command line: one `add_<name>_parser` + `cmd_<name>` pair per subcommand.

To add a subcommand, write `add_x_parser(subparsers)` (which calls `set_defaults(func=cmd_x)`)
and `cmd_x(args) -> int`, and append the adder to SUBCOMMANDS. `main` turns ValueError,
FileNotFoundError and ImportError into `error: <message>` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from loraplus._io import write_json
from loraplus.train import TrainConfig, TrainResult, make_config

__all__ = [
    "DEMO_METHODS",
    "SUBCOMMANDS",
    "build_parser",
    "cmd_demo",
    "cmd_sweep",
    "cmd_toy",
    "cmd_train",
    "cmd_width",
    "demo_config",
    "load_demo_lrs",
    "main",
]

Subparsers = Any  # argparse's _SubParsersAction (private type)
EXIT_USAGE = 2  # bad input, as argparse uses
EXIT_DIVERGED = 1  # the run finished but its loss went NaN/inf


class CLIError(ValueError):
    """Bad input found by a subcommand: printed as `error: <message>`, exit status 2."""


# ---------------------------------------------------------------------------------------------
# loraplus train
# ---------------------------------------------------------------------------------------------

_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


_METAVARS = {"model": "NAME|DIR", "data": "NAME|FILE", "output_dir": "DIR", "task": "TASK"}


def _metavar(name: str) -> str:
    if name in _METAVARS:
        return _METAVARS[name]
    kind = str(_FIELD_TYPES[name])
    if kind.startswith("float"):
        return "X"
    if kind.startswith("int"):
        return "N"
    return "NAME"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--lr, --no-progress, ...), absent unless given."""
    group = parser.add_argument_group("run settings (override --config)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if callable(f.default_factory) else f.default
        shown = " ".join(default) if isinstance(default, list) else default
        text = str(f.metadata.get("help", "")) + ("" if shown is None else f" (default: {shown})")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        if f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif "dict" in str(f.type):
            group.add_argument(flag, nargs="+", metavar="ROLE=X", **kwargs)
        elif "list" in str(f.type):
            group.add_argument(flag, nargs="+", metavar="NAME", **kwargs)
        else:
            group.add_argument(flag, metavar=_metavar(f.name), **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """--config file, then the flags the user actually passed."""
    return make_config(getattr(args, "config", None), **_train_overrides(args))


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig flags the user actually passed (absent flags are not in `args`)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in fields}


def add_train_parser(subparsers: Subparsers) -> None:
    """`loraplus train`: one fine-tuning run."""
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model with LoRA+ (one run)",
        description="Fine-tune a model with LoRA+ (lr_B = ratio * lr_A) and write metrics.json, "
        "curves.png and the adapter into --output-dir. Exit status 1 if the loss diverged.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML or TOML file of settings; flags override it"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved settings and exit"
    )
    add_config_flags(parser)
    parser.set_defaults(func=cmd_train)


def _print_run(result: TrainResult) -> None:
    metrics = json.loads((result.output_dir / "metrics.json").read_text(encoding="utf-8"))
    final = result.final
    metric = str(final.get("metric", "eval_accuracy"))
    best = final.get(f"best_{metric}")
    print(
        f"{final.get('steps')} steps in {final.get('seconds', 0.0):.1f} s; "
        f"final {metric} {_fmt(final.get(metric))}, best {_fmt(best)}"
        + ("  [DIVERGED: loss became NaN/inf]" if result.diverged else "")
    )
    groups = metrics.get("param_groups", [])
    if groups:
        print("  ".join(f"lr[{g['role']}]={g['lr']:.3g}" for g in groups))
    probes = metrics.get("feature_updates", [])
    if probes:
        print(
            "feature-update balance log2(δ²/δ¹), B's share over A's (0 = balanced), by step: "
            + ", ".join(f"{int(r['step'])}: {r['balance_log2']:+.1f}" for r in probes)
        )
    print(f"outputs in {result.output_dir}/: {', '.join(_outputs(result.output_dir))}")


def _outputs(folder: Path) -> list[str]:
    names = ("metrics.json", "curves.png", "adapter", "merged", "demo.json", "demo.png")
    return [n for n in names if (folder / n).exists()]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def cmd_train(args: argparse.Namespace) -> int:
    """Run `loraplus train`."""
    from loraplus.train import train

    cfg = config_from_args(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    result = train(cfg)
    _print_run(result)
    return EXIT_DIVERGED if result.diverged else 0


# ---------------------------------------------------------------------------------------------
# loraplus demo
# ---------------------------------------------------------------------------------------------

DEMO_METHODS: dict[str, dict[str, Any]] = {
    "lora": {"label": "LoRA", "ratio": 1.0},
    "loraplus": {"label": "LoRA+", "ratio": 16.0},
}
# The demo's run settings; the sweep that picks the demo's lrs must use demo_config() as well.
DEMO_SETTINGS: dict[str, Any] = {
    "model": "minilm",
    "data": "rotten-tomatoes",
    "task": "classification",
    "rank": 8,
    "alpha": 16.0,
    "batch_size": 16,
    "max_length": 64,
    "max_steps": 150,
    "eval_steps": 25,
    "max_train": 4000,
    "max_eval": 400,
    "scheduler": "linear",
    "warmup_ratio": 0.0,
    "seed": 0,
    "report_to": [],
}
DEMO_QUICK: dict[str, Any] = {
    "max_steps": 4,
    "eval_steps": 2,
    "max_train": 64,
    "max_eval": 32,
    "batch_size": 8,
    "max_length": 32,
}
DEMO_LRS_RESOURCE = "data/demo_lrs.json"


def demo_config(
    method: str,
    lr: float,
    *,
    quick: bool = False,
    output_dir: str | Path = "runs/demo",
    ratio: float | None = None,
    **overrides: Any,
) -> TrainConfig:
    """The demo's TrainConfig for `method` ("lora" or "loraplus") at learning rate `lr`."""
    if method not in DEMO_METHODS:
        raise ValueError(f"Unknown demo method {method!r}: use one of {', '.join(DEMO_METHODS)}.")
    settings = {**DEMO_SETTINGS, **(DEMO_QUICK if quick else {}), **overrides}
    return make_config(
        **settings,
        lr=lr,
        ratio=DEMO_METHODS[method]["ratio"] if ratio is None else ratio,
        output_dir=str(Path(output_dir) / method),
    )


def _demo_lrs_path() -> Path:
    return Path(str(resources.files("loraplus").joinpath(DEMO_LRS_RESOURCE)))


def load_demo_lrs(path: str | Path | None = None) -> dict[str, Any]:
    """The demo's recorded lrs: {"lora": {"lr", ...}, "loraplus": {"lr", "ratio"?, ...},
    "provenance": {"command", "grid", "results", ...}}; raises CLIError when absent or bad."""
    file = Path(path) if path is not None else _demo_lrs_path()
    if not file.is_file():
        raise CLIError(
            f"The demo needs the learning rates a sweep found best, recorded in {file}, which "
            "is not there (this build ships no demo_lrs.json). Give them explicitly: "
            "loraplus demo --lr-lora LR --lr-loraplus LR."
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        for method in DEMO_METHODS:
            lr = float(data[method]["lr"])
            if not lr > 0:
                raise ValueError(f"{method}.lr must be > 0, got {lr}")
    except (ValueError, KeyError, TypeError) as err:
        raise CLIError(
            f"{file} is not a valid demo lr record ({err!r}); it needs "
            '{"lora": {"lr": ...}, "loraplus": {"lr": ...}, "provenance": {...}}.'
        ) from None
    return dict(data)


def _demo_lrs(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float], str]:
    """(lr per method, ratio per method, where they came from)."""
    given = {"lora": args.lr_lora, "loraplus": args.lr_loraplus}
    ratios = {m: float(spec["ratio"]) for m, spec in DEMO_METHODS.items()}
    if all(v is not None for v in given.values()):
        return {m: float(v) for m, v in given.items()}, ratios, "given on the command line"
    record = load_demo_lrs(args.lrs_file)
    lrs = {m: float(record[m]["lr"]) if given[m] is None else float(given[m]) for m in given}
    ratios.update({m: float(record[m].get("ratio", ratios[m])) for m in DEMO_METHODS})
    where = args.lrs_file or _demo_lrs_path()
    provenance = record.get("provenance", {})
    command = provenance.get("command") if isinstance(provenance, Mapping) else None
    source = f"recorded in {where}" + (f" by `{command}`" if command else "")
    overridden = [m for m, v in given.items() if v is not None]
    if overridden:
        source += f" ({', '.join(overridden)} overridden on the command line)"
    return lrs, ratios, source


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def add_demo_parser(subparsers: Subparsers) -> None:
    """`loraplus demo`: LoRA against LoRA+ on MiniLM / Rotten Tomatoes."""
    parser = subparsers.add_parser(
        "demo",
        help="LoRA vs LoRA+ on MiniLM / Rotten Tomatoes, each at its best recorded lr",
        description="Train MiniLM on Rotten Tomatoes twice, standard LoRA (ratio 1) and LoRA+ "
        "(ratio 16), each at the learning rate a recorded sweep found best, and compare eval "
        "accuracy along the way. Writes demo.json, demo.png and both adapters.",
    )
    parser.add_argument("--quick", action="store_true", help="a few steps on tiny subsets")
    parser.add_argument("--output-dir", default="runs/demo", metavar="DIR")
    parser.add_argument("--lr-lora", type=_positive_float, metavar="LR", help="override LoRA's lr")
    parser.add_argument(
        "--lr-loraplus", type=_positive_float, metavar="LR", help="override LoRA+'s lr (lr_A)"
    )
    parser.add_argument(
        "--lrs-file", metavar="FILE", help=f"lr record to read (default: {DEMO_LRS_RESOURCE})"
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars"
    )
    parser.set_defaults(func=cmd_demo)


def demo_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Eval accuracy against step, one column per method, then the best row."""
    headers = ["step", *(str(run["label"]) for run in runs.values())]
    by_step: dict[int, dict[str, Any]] = {}
    for method, run in runs.items():
        for row in run["history"]:
            by_step.setdefault(int(row["step"]), {})[method] = row.get("eval_accuracy")
    rows = [[str(step), *(_fmt(by_step[step].get(m)) for m in runs)] for step in sorted(by_step)]
    best = [_fmt(run["final"].get("best_eval_accuracy")) for run in runs.values()]
    rows.append(["best", *best])
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    head = "  ".join(cell.rjust(w) for cell, w in zip(headers, widths, strict=True))
    return "\n".join([head, "-" * len(head), *lines[:-1], "-" * len(head), lines[-1]])


def cmd_demo(args: argparse.Namespace) -> int:
    """Run `loraplus demo`."""
    from loraplus.plots import plot_demo
    from loraplus.train import train

    lrs, ratios, source = _demo_lrs(args)
    out = Path(args.output_dir)
    print(f"learning rates {source}:")
    for method, spec in DEMO_METHODS.items():
        print(f"  {spec['label']:6s} ratio {ratios[method]:g}  lr_A {lrs[method]:g}")
    runs: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for method, spec in DEMO_METHODS.items():
        cfg = demo_config(
            method,
            lrs[method],
            quick=args.quick,
            output_dir=out,
            ratio=ratios[method],
            progress=args.progress,
        )
        label = f"{spec['label']} (ratio {ratios[method]:g}, lr {lrs[method]:g})"
        print(f"\n{label}: {cfg.max_steps} steps, eval every {cfg.eval_steps} on {cfg.max_eval}")
        result = train(cfg)
        metrics = json.loads((result.output_dir / "metrics.json").read_text(encoding="utf-8"))
        runs[method] = {
            "label": label,
            "config": cfg.to_dict(),
            "history": result.history,
            "final": result.final,
            "diverged": result.diverged,
            "train_loss_log": metrics.get("train_loss_log", []),
            "adapter": str(result.output_dir / "adapter"),
        }
    seconds = time.perf_counter() - start
    table = demo_table(runs)
    print(f"\neval accuracy ({seconds:.0f} s in all)\n{table}")
    write_json(
        out / "demo.json",
        {"lrs_source": source, "lrs": lrs, "ratios": ratios, "seconds": seconds, "runs": runs},
    )
    plot_demo(
        out / "demo.png",
        {
            run["label"]: {
                "steps": [r["step"] for r in run["history"]],
                "accuracy": [r.get("eval_accuracy") for r in run["history"]],
                "train_steps": [r["step"] for r in run["train_loss_log"]],
                "train_loss": [r["loss"] for r in run["train_loss_log"]],
            }
            for run in runs.values()
        },
        title="MiniLM on Rotten Tomatoes, rank 8\nlearning rates "
        + re.sub(r"\S*/([^/\s]+\.json)", r"\1", source),  # the file's name, not its full path
    )
    print(f"\nwrote {out / 'demo.json'}, {out / 'demo.png'}; adapters in")
    for run in runs.values():
        print(f"  {run['adapter']}")
    return EXIT_DIVERGED if any(run["diverged"] for run in runs.values()) else 0


# ---------------------------------------------------------------------------------------------
# The parser and main
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# loraplus sweep
# ---------------------------------------------------------------------------------------------


def add_sweep_parser(subparsers: Subparsers) -> None:
    """`loraplus sweep`: an lr_A x ratio (or lr_A x lr_B) grid with Optuna, resumable."""
    parser = subparsers.add_parser(
        "sweep",
        help="grid of lr_A x ratio (or lr_B) on any training config, with a heatmap",
        description="Train every cell of an lr_A x ratio (or lr_A x lr_B) grid with Optuna "
        "(SQLite by default, so a sweep resumes after a crash and several --workers or machines "
        "share one study), then write sweep.json and a Figure-3-style heatmap into --out-dir "
        "and print the best cell, the best standard-LoRA cell (ratio 1) and the gain.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML/TOML training settings")
    parser.add_argument("--lr-a", nargs="+", type=float, metavar="LR", help="lr_A values")
    axis = parser.add_mutually_exclusive_group()
    axis.add_argument("--ratios", nargs="+", type=float, metavar="R", help="default 1 4 16 64")
    axis.add_argument("--lr-b", nargs="+", type=float, metavar="LR", help="lr_B values instead")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="N")
    parser.add_argument("--metric", default="eval_accuracy", choices=["eval_accuracy", "eval_loss"])
    parser.add_argument("--storage", metavar="URL", help="Optuna storage (default: SQLite file)")
    parser.add_argument("--study-name", default="loraplus-sweep")
    parser.add_argument("--out-dir", default="runs/sweep", metavar="DIR")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--n-trials", type=int, metavar="N", help="trials per worker (default all)")
    parser.add_argument("--pruner", default="none", choices=["none", "median"])
    parser.add_argument(
        "--budget", action="store_true", help="paper recipe: ratio fixed, 1-D lr_A search vs LoRA"
    )
    parser.add_argument("--budget-ratio", type=float, default=16.0, metavar="R")
    parser.add_argument(
        "--summarize-only", action="store_true", help="report the stored study, train nothing"
    )
    add_config_flags(parser)
    parser.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run (or just summarize) a sweep and print its best cells."""
    from loraplus import sweep

    overrides = _train_overrides(args)
    grid: dict[str, Any] = {} if args.lr_a is None else {"lr_a": args.lr_a}
    cfg = sweep.SweepConfig(
        **grid,
        ratios=args.ratios,
        lr_b=args.lr_b,
        seeds=args.seeds,
        config=args.config,
        overrides=overrides,
        metric=args.metric,
        storage=args.storage,
        study_name=args.study_name,
        out_dir=args.out_dir,
        pruner=args.pruner,
        budget=args.budget,
        budget_ratio=args.budget_ratio,
        workers=args.workers,
    )
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


# ---------------------------------------------------------------------------------------------
# loraplus experiment toy | width
# ---------------------------------------------------------------------------------------------


def add_experiment_parser(subparsers: Subparsers) -> None:
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


SUBCOMMANDS: list[Callable[[Subparsers], None]] = [
    add_train_parser,
    add_demo_parser,
    add_sweep_parser,
    add_experiment_parser,
]


def build_parser() -> argparse.ArgumentParser:
    """The `loraplus` parser with every subcommand in SUBCOMMANDS."""
    from loraplus import __version__

    parser = argparse.ArgumentParser(
        prog="loraplus",
        description="LoRA+ fine-tuning: LoRA's B matrices train at ratio x the lr of A.",
    )
    parser.add_argument("--version", action="version", version=f"loraplus {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show transformers' info and warnings"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `loraplus` script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error argparse already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        with _quiet(not args.verbose):
            status: int = args.func(args)
        return status
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """Without --verbose: transformers' errors only; no loading bars, FutureWarnings, bnb notes."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # bitsandbytes (imported by peft) logs a warning about an optional CPU kernel package.
    bnb_log = logging.getLogger("bitsandbytes")
    bnb_level = bnb_log.level
    bnb_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        bnb_log.setLevel(bnb_level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
