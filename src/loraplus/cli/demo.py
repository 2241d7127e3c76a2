"""`loraplus demo`: LoRA against LoRA+ on MiniLM / Rotten Tomatoes, at recorded learning rates.

The demo's settings live here with the demo; the study that chose its learning rates
(`benchmarks/studies/paper.toml`) trains with the same settings (tests/test_study_paper.py checks),
so both measure the same run.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from loraplus import _config
from loraplus._extras import require
from loraplus._io import write_json
from loraplus.cli.common import EXIT_DIVERGED, CLIError, Subparsers, fmt
from loraplus.groups import as_float
from loraplus.train import TrainConfig, make_config

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
DEMO_LRS_RESOURCE = "cli/demo_lrs.json"


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
        overwrite=True,  # the demo replaces its own earlier output
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


@dataclass
class DemoOptions:
    """The flags of `loraplus demo`."""

    quick: bool = field(default=False, metadata={"help": "a few steps on tiny subsets"})
    output_dir: str = field(default="runs/demo", metadata={"help": "where the runs are written"})
    lr_lora: float | None = field(default=None, metadata={"help": "override LoRA's lr"})
    lr_loraplus: float | None = field(default=None, metadata={"help": "override LoRA+'s lr (lr_A)"})
    lrs_file: str | None = field(
        default=None, metadata={"help": f"lr record to read (default: {DEMO_LRS_RESOURCE})"}
    )
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        for name in ("lr_lora", "lr_loraplus"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, as_float(value, f"--{name.replace('_', '-')}"))


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus demo`: LoRA against LoRA+ on MiniLM / Rotten Tomatoes."""
    parser = subparsers.add_parser(
        "demo",
        dataclass_types=DemoOptions,
        help="LoRA vs LoRA+ on MiniLM / Rotten Tomatoes, each at its best recorded lr",
        description="Train MiniLM on Rotten Tomatoes twice, standard LoRA (ratio 1) and LoRA+ "
        "(ratio 16), each at the learning rate a recorded sweep found best, and compare eval "
        "accuracy along the way. Writes demo.json, demo.png and both adapters.",
    )
    parser.set_defaults(func=run)


def demo_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Eval accuracy against step, one column per method, then the best row: the best value in
    the column above it (step 0, the untrained model, included, so the row never contradicts
    the rows it sums up)."""
    headers = ["step", *(str(run["label"]) for run in runs.values())]
    by_step: dict[int, dict[str, Any]] = {}
    for method, run in runs.items():
        for row in run["history"]:
            by_step.setdefault(int(row["step"]), {})[method] = row.get("eval_accuracy")
    rows = [[str(step), *(fmt(by_step[step].get(m)) for m in runs)] for step in sorted(by_step)]
    best = [
        fmt(max((v for row in by_step.values() if (v := row.get(m)) is not None), default=None))
        for m in runs
    ]
    rows.append(["best", *best])
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    head = "  ".join(cell.rjust(w) for cell, w in zip(headers, widths, strict=True))
    return "\n".join([head, "-" * len(head), *lines[:-1], "-" * len(head), lines[-1]])


def demo_title(source: str, quick: bool) -> str:
    """The figure's title: what was trained, and where the lrs came from (the record's file
    name, not its path or the command that made it, which is printed on the console)."""
    settings = {**DEMO_SETTINGS, **(DEMO_QUICK if quick else {})}
    what = f"MiniLM on Rotten Tomatoes, rank {settings['rank']}, {settings['max_steps']} steps"
    if quick:
        what += f" (--quick: {settings['max_train']} train rows, {settings['max_eval']} eval)"
    origin = re.sub(r" by `[^`]*`", "", source)
    origin = re.sub(r"\S*/([^/\s]+\.json)", r"\1", origin)  # the file's name, not its full path
    return f"{what}\nlearning rates {origin}"


def run(args: argparse.Namespace) -> int:
    """Run `loraplus demo`."""
    DemoOptions(**_config.passed(args, DemoOptions))  # validates the lrs: > 0 and finite
    require("train", "loraplus demo")
    from loraplus.cli.train import eval_printer
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
        result = train(cfg, callbacks=[] if args.progress else [eval_printer()])
        runs[method] = {
            "label": label,
            "config": cfg.to_dict(),
            "history": result.history,
            "final": result.final,
            "diverged": result.diverged,
            "train_loss_log": result.train_loss_log,
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
        title=demo_title(source, args.quick),
    )
    print(f"\nwrote {out / 'demo.json'}, {out / 'demo.png'}; adapters in")
    for run in runs.values():
        print(f"  {run['adapter']}")
    return EXIT_DIVERGED if any(run["diverged"] for run in runs.values()) else 0
