"""A run's final files: adapter, merged model, curves.png, then metrics.json, each atomic.

A fresh run first removes the previous run's final files from the output folder, and metrics.json
is written last, so a kill at any moment never leaves one run's metrics beside another's adapter:
metrics.json present means this run's files are complete.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loraplus.train.record import RECORD_FILE, TrainResult, write_record

FINAL_FILES = (RECORD_FILE, "curves.png", "adapter", "merged")
LOGS = ("tensorboard",)  # a new run would append to these instead of replacing them


def clear_previous(output_dir: Path, *, overwrite: bool = False) -> None:
    """Remove an earlier run's final files (metrics.json first: it marks them complete); with
    `overwrite` also its logs and checkpoints, so that none of them mixes into the new run."""
    paths = [output_dir / name for name in FINAL_FILES]
    if overwrite:
        paths += [output_dir / name for name in LOGS] + sorted(output_dir.glob("checkpoint-*"))
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _number(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:g}"  # "auto" or 16


def resumed_settings(checkpoint: Path | None) -> tuple[str, dict[str, Any]] | None:
    """(step, config) of the checkpoint a run resumes from, read when it starts: the checkpoint
    may be rotated away (--save-total-limit) before the run writes its curves."""
    if checkpoint is None:
        return None
    from loraplus.train.checkpoint import saved_config

    return checkpoint.name.removeprefix("checkpoint-"), saved_config(checkpoint)


def curves_title(
    cfg: Any, lrs: Mapping[str, float], resumed: tuple[str, Mapping[str, Any]] | None = None
) -> str:
    """The curves' title: model, data and every group's learning rate; for a run resumed
    (`resumed_settings`) with another lr or ratio, a second line with the settings the
    checkpoint's steps trained at."""
    groups = ", ".join(f"{role} {lr:.3g}" for role, lr in lrs.items())
    title = f"{cfg.model} on {cfg.data} (ratio {_number(cfg.ratio)}): lr {groups}"
    if resumed is not None:
        step, saved = resumed
        before = [
            f"{key} {_number(saved[key])}"
            for key in ("lr", "ratio")
            if key in saved and saved[key] != getattr(cfg, key)
        ]
        if before:
            title += f"\nsteps 1-{step} trained at {', '.join(before)} (resumed from {step})"
    return title


def write_outputs(
    result: TrainResult,
    curves: dict[str, Any],
    model: Any,
    tokenizer: Any,
    *,
    save_adapter: bool,
    merge: bool,
    base: str,
) -> None:
    """Write the adapter (and merged model) unless the run diverged, the curves, then the record.

    The adapter names its base as `base` (adapter.portable_base: a built-in's name, not its
    cache folder) and carries a classifier's labels (labels.json)."""
    from loraplus import adapter
    from loraplus.plots import plot_training_curves

    output_dir = result.output_dir
    if not result.diverged:
        if save_adapter:
            adapter.save_adapter(model, tokenizer, output_dir / "adapter", base=base)
        if merge:
            adapter.save_merged(model, tokenizer, output_dir / "merged")
    plot_training_curves(output_dir / "curves.png", curves)
    write_record(result)
