"""A run's record: what `train` returns, written as <output_dir>/metrics.json, read by read_record.

This dataclass is the schema of metrics.json (one key per field below, except `output_dir` and
`main_process`, which say where and on which process the record lives). Nothing else reads or
writes that file by hand. Imports nothing heavy: reading records needs no training extras.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplus._io import from_dict, write_json

RECORD_FILE = "metrics.json"
_NOT_IN_FILE = ("output_dir", "main_process")


@dataclass
class TrainResult:
    """One run's record: settings, eval history, final metrics, divergence, groups, data.

    history: one row per evaluation (step, eval_*, train_loss since the last eval, lr/<role>,
    auto_ratio/<kind> with ratio auto; see train/history.py). final: the last eval metrics,
    best_eval_*, metric, steps, seconds (no metrics when the run diverged). train_loss_log:
    every logged [{"step", "loss"}]. feature_updates: the δ¹/δ² probe rows (--probe-every).
    param_groups: per group role, lr, weight_decay, tensors, parameters (fan_in: width-aware).
    data: source, split, train_rows, eval_rows, train_examples, label_names. max_length,
    truncation, precision: what the causal-LM path cut and how the run computed.
    """

    history: list[dict[str, Any]]
    final: dict[str, Any]
    output_dir: Path
    diverged: bool  # the divergence guard stopped the run (NaN/inf, or loss above the bound)
    diverged_reason: str | None = None  # one line: step, cause, every group's lr, the fix
    diverged_at_step: int | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. collapse to one class
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig.to_dict() of the run
    world_size: int = 1
    global_batch_size: int | None = None
    resumed_from: str | None = None  # the checkpoint the run resumed from
    train_loss_log: list[dict[str, Any]] = field(default_factory=list)
    feature_updates: list[dict[str, Any]] = field(default_factory=list)
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    max_length: int | None = (
        None  # the tokens an example was cut to (the task's default or --max-length)
    )
    truncation: dict[str, int] | None = None  # causal LM: examples, truncated, lost_end, dropped
    precision: dict[str, Any] = field(
        default_factory=dict
    )  # bf16/fp16/checkpointing/compile, dtypes
    main_process: bool = True  # False on the other ranks of a distributed run (they print nothing)

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json content: every field but output_dir and main_process."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _NOT_IN_FILE
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], output_dir: str | os.PathLike[str]) -> TrainResult:
        """The record from `to_dict()` data (unknown keys ignored) found in `output_dir`."""
        missing = sorted({"history", "final", "diverged"} - set(data))
        if missing:
            raise ValueError(
                f"{Path(output_dir) / RECORD_FILE} lacks {', '.join(missing)}: it was not "
                "written by loraplus.train.train."
            )
        return from_dict(cls, data, output_dir=Path(output_dir), main_process=True)


def write_record(result: TrainResult) -> Path:
    """Write `result` as <output_dir>/metrics.json (atomic, strict JSON); return its path."""
    return write_json(Path(result.output_dir) / RECORD_FILE, result.to_dict())


def read_record(run: str | os.PathLike[str]) -> TrainResult:
    """The record of a run folder (or of its metrics.json file). ValueError naming the file and
    what is wrong with it: missing, unreadable, not JSON, not an object, not a run's record."""
    path = Path(run).expanduser()
    path = path / RECORD_FILE if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"{path} does not exist: pass a run folder written by `loraplus train`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"Cannot read {path}: {err}.") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): it "
            "was cut short or edited."
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} holds a JSON {type(data).__name__}, not the object `loraplus train` writes; "
            "pass a run folder written by `loraplus train`."
        )
    return TrainResult.from_dict(data, path.parent)
