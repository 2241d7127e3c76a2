"""A run's input checked before any model loads: model and data paths, output folder, rows.

Every refusal is a ValueError of one line that names the problem and the fix; nothing is written
before these checks pass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loraplus import zoo
from loraplus.train.config import TrainConfig
from loraplus.train.lock import holder, in_use
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
    busy = holder(out)
    if busy is not None:
        raise in_use(out, busy)
    previous = _previous_run(out)
    if previous and not cfg.overwrite and not cfg.resume:
        raise ValueError(
            f"--output-dir {cfg.output_dir} holds another run ({', '.join(previous[:4])}): pass "
            "--resume auto to continue it (from its latest checkpoint), --overwrite to replace "
            "it, or another --output-dir."
        )
    finished_run(cfg)


def finished_run(cfg: TrainConfig) -> dict[str, Any] | None:
    """With --resume, the metrics of the finished run in --output-dir when it had these very
    settings (nothing to resume); None when there is none, or with --overwrite. A finished run
    with other settings is refused: resuming would replace it."""
    from loraplus.train.checkpoint import config_changes

    path = Path(cfg.output_dir).expanduser() / "metrics.json"
    if cfg.resume is None or cfg.overwrite or not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        saved = metrics["config"]
        if not isinstance(saved, dict):
            raise TypeError("its config is not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"--output-dir {cfg.output_dir} holds a finished run whose {path.name} cannot be read "
            f"({err}): pass --overwrite to replace that run, or another --output-dir."
        ) from None
    changes = config_changes(saved, cfg.to_dict())
    if changes:
        raise ValueError(
            f"--output-dir {cfg.output_dir} holds a finished run with other settings "
            f"({'; '.join(changes)}): --resume would replace it. Pass --overwrite to replace "
            "it (continuing from its latest checkpoint), or another --output-dir."
        )
    return dict(metrics)


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
