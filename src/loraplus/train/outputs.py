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

from loraplus._io import atomic_dir
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


def curves_title(cfg: Any, lrs: Mapping[str, float]) -> str:
    """The curves' title: model, data and every group's learning rate."""
    groups = ", ".join(f"{role} {lr:.3g}" for role, lr in lrs.items())
    ratio = cfg.ratio if isinstance(cfg.ratio, str) else f"{cfg.ratio:g}"  # "auto" or 16
    return f"{cfg.model} on {cfg.data} (ratio {ratio}): lr {groups}"


def write_outputs(
    result: TrainResult,
    curves: dict[str, Any],
    model: Any,
    tokenizer: Any,
    *,
    save_adapter: bool,
    merge: bool,
) -> None:
    """Write the adapter (and merged model) unless the run diverged, the curves, then the record."""
    from loraplus.plots import plot_training_curves

    output_dir = result.output_dir
    if not result.diverged:
        if save_adapter:

            def save_adapter_to(folder: Path) -> None:
                model.save_pretrained(folder)  # safetensors
                tokenizer.save_pretrained(folder)

            atomic_dir(output_dir / "adapter", save_adapter_to)
        if merge:
            merged = model.merge_and_unload()

            def save_merged_to(folder: Path) -> None:
                merged.save_pretrained(folder)  # safetensors
                tokenizer.save_pretrained(folder)

            atomic_dir(output_dir / "merged", save_merged_to)
    plot_training_curves(output_dir / "curves.png", curves)
    write_record(result)
