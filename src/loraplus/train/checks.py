"""A run's input checked before any model loads: model and data paths, output folder, rows.

Every refusal is a ValueError of one line that names the problem and the fix; nothing is written
before these checks pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loraplus import zoo
from loraplus.train.config import TrainConfig
from loraplus.train.outputs import FINAL_FILES, LOGS, clear_previous

RUN_FILES = (*FINAL_FILES, *LOGS)  # what a run writes


def data_options(cfg: TrainConfig) -> dict[str, Any]:
    """load_data's keyword arguments for this config."""
    return {
        "task": cfg.task,
        "seed": cfg.seed_of_data(),
        "max_train": cfg.max_train,
        "max_eval": cfg.max_eval,
        "text_column": cfg.text_column,
        "label_column": cfg.label_column,
        "prompt_column": cfg.prompt_column,
        "response_column": cfg.response_column,
        "eval_data": cfg.eval_data,
    }


def check_paths(cfg: TrainConfig) -> None:
    """--model, --data and --eval-data name something that exists (nothing is read or loaded)."""
    zoo.check_model(cfg.model)
    zoo.check_source(cfg.data, cfg.eval_data)
    check_deepspeed(cfg)


def check_deepspeed(cfg: TrainConfig) -> None:
    """--deepspeed names a JSON object without an optimizer or a flattening scheduler block."""
    if cfg.deepspeed is None:
        return
    import importlib.util
    import json

    from loraplus.hf.deepspeed import check_deepspeed_config

    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError("--deepspeed needs the deepspeed package: pip install deepspeed")
    path = Path(cfg.deepspeed).expanduser()
    if not path.is_file():
        raise ValueError(
            f"--deepspeed {cfg.deepspeed}: no such file; pass a DeepSpeed JSON config."
        )
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"--deepspeed {cfg.deepspeed} is not valid JSON ({err}); fix the file."
        ) from None
    if not isinstance(loaded, dict):
        raise ValueError(f"--deepspeed {cfg.deepspeed} holds no JSON object; pass a config dict.")
    check_deepspeed_config(loaded)


def _previous_run(folder: Path) -> list[str]:
    """The files of an earlier run in `folder` (run outputs and Trainer checkpoints)."""
    if not folder.is_dir():
        return []
    found = [name for name in RUN_FILES if (folder / name).exists()]
    return found + sorted(p.name for p in folder.glob("checkpoint-*"))


def check_output_dir(cfg: TrainConfig) -> None:
    """--output-dir is (or can become) a writable folder that holds no other run."""
    out = Path(cfg.output_dir).expanduser()
    for part in (out, *out.parents):
        if part.exists() and not part.is_dir():
            where = "" if part == out else f" ({part} is a file)"
            raise ValueError(
                f"--output-dir {cfg.output_dir} cannot be a folder{where}: pass a folder path."
            )
        if part.exists():
            if not os.access(part, os.W_OK | os.X_OK):
                raise ValueError(
                    f"--output-dir {cfg.output_dir}: {part} is not writable; pass a folder you "
                    "can write to."
                )
            break
    previous = _previous_run(out)
    if previous and not cfg.overwrite and not cfg.resume:
        raise ValueError(
            f"--output-dir {cfg.output_dir} holds another run ({', '.join(previous[:4])}): pass "
            "--resume auto to continue it (from its latest checkpoint), --overwrite to replace "
            "it, or another --output-dir."
        )


def check_rows(cfg: TrainConfig, data: zoo.TaskData) -> None:
    """At least one full batch of train rows."""
    if len(data.train) < cfg.batch_size:
        raise ValueError(
            f"{data.source}: {len(data.train)} train rows (and {len(data.eval)} eval rows) are "
            f"fewer than one batch (--batch-size {cfg.batch_size}): add rows or lower "
            "--batch-size."
        )


def _clear_previous(cfg: TrainConfig) -> None:
    """With --overwrite, remove the old run's files, logs and checkpoints so none mixes in."""
    out = Path(cfg.output_dir).expanduser()
    if cfg.overwrite and not cfg.resume and out.is_dir():
        clear_previous(out, overwrite=True)


def load_checked(cfg: TrainConfig) -> zoo.TaskData:
    """The run's data after every check that needs no model; then an overwritten run is cleared."""
    check_paths(cfg)
    check_output_dir(cfg)
    data = zoo.load_data(cfg.data, **data_options(cfg))
    check_rows(cfg, data)
    _clear_previous(cfg)
    return data
