"""`loraplus train`: one fine-tuning run from flags and/or a YAML/TOML config file."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from loraplus import _config
from loraplus._extras import require
from loraplus.cli.common import EXIT_DIVERGED, Subparsers, fmt
from loraplus.train import TrainConfig, TrainResult, make_config
from loraplus.train.checks import check_output_dir, check_paths


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus train`: one fine-tuning run."""
    parser = subparsers.add_parser(
        "train",
        dataclass_types=TrainConfig,
        suppress=True,
        help="fine-tune a model with LoRA+ (one run)",
        description="Fine-tune a model with LoRA+ (lr_B = ratio * lr_A) and write metrics.json, "
        "curves.png and the adapter into --output-dir. Every flag is also a config-file key; "
        "flags override --config. Exit status: 0 done, 2 bad input, 3 the loss diverged "
        "(NaN/inf, or above --divergence-factor x the first logged loss), 1 an unexpected "
        "error. --save-steps N writes complete checkpoints; --resume auto continues from the "
        "latest one.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML or TOML file of settings; flags override it"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved settings and exit"
    )
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """--config file, then the flags the user actually passed."""
    return make_config(getattr(args, "config", None), **_config.passed(args, TrainConfig))


def validate(cfg: TrainConfig, *, run: bool = True) -> None:
    """Before any model loads: model/data/eval paths; for a run, the extras and --output-dir.

    (The data's columns, labels and row counts are checked by `train` before the model loads.)
    """
    if run:  # a missing extra first: it is what a fresh install lacks before any model
        require("train", "loraplus train")
    check_paths(cfg)
    if run:
        from loraplus.train.model import check_machine

        check_machine(cfg)
        if not cfg.preview_data:
            check_output_dir(cfg)


def _print_run(result: TrainResult) -> None:
    final = result.final
    metric = str(final.get("metric", "eval_accuracy"))
    best = final.get(f"best_{metric}")
    print(
        f"{final.get('steps')} steps in {final.get('seconds', 0.0):.1f} s; "
        f"final {metric} {fmt(final.get(metric))}, best {fmt(best)}"
        + (f" (world size {result.world_size})" if result.world_size > 1 else "")
    )
    if result.param_groups:
        print("  ".join(f"lr[{g['role']}]={g['lr']:.3g}" for g in result.param_groups))
    last = result.history[-1] if result.history else {}
    chosen = {k.removeprefix("auto_ratio/"): v for k, v in last.items() if "auto_ratio/" in k}
    if chosen:  # --ratio auto: lr_B = chosen ratio x lr_A (the groups above hold ratio 16)
        print(
            "ratio chosen per layer (median by kind): "
            + ", ".join(f"{kind} {value:.3g}" for kind, value in sorted(chosen.items()))
        )
    probes = result.feature_updates
    if probes:
        print(
            "feature-update balance log2(δ²/δ¹), B's share over A's (0 = balanced), by step: "
            + ", ".join(f"{int(r['step'])}: {_balance(r.get('balance_log2'))}" for r in probes)
        )
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"outputs in {result.output_dir}/: {', '.join(_outputs(result.output_dir))}")
    if result.diverged:
        print(f"error: {result.diverged_reason}; no adapter saved", file=sys.stderr)


def _balance(value: Any) -> str:
    """log2(δ²/δ¹) for printing; none when a term is 0 (from Init[1] δ¹ = 0 at the first step)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a (δ¹ or δ² is 0)"
    return f"{value:+.1f}"


def _outputs(folder: Path) -> list[str]:
    names = ("metrics.json", "curves.png", "adapter", "merged", "demo.json", "demo.png")
    found = [n for n in names if (folder / n).exists()]
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found + ([f"{len(checkpoints)} checkpoints"] if checkpoints else [])


def eval_printer() -> Any:
    """A callback printing one line per evaluation (main process): --no-progress is not mute."""
    from transformers import TrainerCallback

    class EvalLines(TrainerCallback):
        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
        ) -> None:
            if not state.is_world_process_zero or not metrics:
                return
            shown = ("eval_accuracy", "eval_loss")
            values = ", ".join(f"{k} {metrics[k]:.4f}" for k in shown if k in metrics)
            print(f"step {state.global_step}/{state.max_steps}: {values}", flush=True)

    return EvalLines()


def _announce_resume(cfg: TrainConfig) -> None:
    """With --resume: say which checkpoint the run continues from, or that it starts fresh."""
    if cfg.resume is None or os.environ.get("RANK", "0") != "0":  # one line, from rank 0
        return
    from loraplus.train.checkpoint import resolve_resume

    found = resolve_resume(cfg.resume, Path(cfg.output_dir).expanduser())
    if found is None:
        print(f"--resume {cfg.resume}: no complete checkpoint in {cfg.output_dir}; starting fresh")
    else:
        print(f"resuming from {found} (step {found.name.removeprefix('checkpoint-')})")


def run(args: argparse.Namespace) -> int:
    """Run `loraplus train`."""
    from loraplus.train import train

    cfg = config_from_args(args)
    validate(cfg, run=not args.print_config)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if cfg.preview_data:
        import contextlib

        from loraplus.train.data import dumps
        from loraplus.train.run import preview

        # stdout holds the JSON lines only: what libraries print while loading goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            rows = preview(cfg)
        for row in rows:
            print(dumps(row))
        return 0
    _announce_resume(cfg)
    result = train(cfg, callbacks=[] if cfg.progress else [eval_printer()])
    if result.main_process:
        _print_run(result)
    return EXIT_DIVERGED if result.diverged else 0
