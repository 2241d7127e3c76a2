"""A run's input checked before any model loads: model and data paths, output folder, rows.

Every refusal is a ValueError of one line that names the problem and the fix; nothing is written
before these checks pass.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from loraplus import zoo
from loraplus.data import TaskData, check_source, load_data
from loraplus.train.config import TrainConfig
from loraplus.train.lock import holder, in_use, is_main_launch
from loraplus.train.outputs import FINAL_FILES, LOGS, clear_previous
from loraplus.train.record import TrainResult

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
    check_source(cfg.data, cfg.eval_data)
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
    busy = holder(out) if is_main_launch() else None  # other ranks run beside their main one
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


def finished_run(cfg: TrainConfig) -> TrainResult | None:
    """With --resume, the record of the finished run in --output-dir when it had these very
    settings (nothing to resume); None when there is none, or with --overwrite. A finished run
    with other settings is refused: resuming would replace it."""
    from loraplus.train.checkpoint import config_changes
    from loraplus.train.record import RECORD_FILE, read_record

    path = Path(cfg.output_dir).expanduser() / RECORD_FILE
    if cfg.resume is None or cfg.overwrite or not path.is_file():
        return None
    try:
        record = read_record(path)
        saved = record.config
        if not isinstance(saved, dict) or not saved:
            raise TypeError("it records no config")
    except (ValueError, TypeError) as err:
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
    return record


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_PACKAGES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "flyte": "flytekit"}


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a library's may span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def _hub_problem(name: str) -> str | None:
    """Why hub id `name` cannot be fetched (offline, unreachable, no such repo), or None.
    One request without retries: the file download would retry for a minute, line by line."""
    import huggingface_hub
    from huggingface_hub import errors

    try:
        huggingface_hub.model_info(name, timeout=10)
    except errors.OfflineModeIsEnabled:
        return "it is not in the local cache and the hub is off (HF_HUB_OFFLINE)"
    except errors.RepositoryNotFoundError:
        return "the Hugging Face hub has no such model (or it is private: log in)"
    except errors.HfHubHTTPError as err:
        return f"the Hugging Face hub answered {one_line(err)}"
    except Exception as err:  # httpx's connection errors, timeouts, proxies
        return f"it is not cached and the Hugging Face hub is unreachable ({one_line(err)})"
    return None


def model_config(cfg: TrainConfig) -> Any:
    """The model's config (config.json only, no weights); one line where it cannot be had."""
    from transformers import AutoConfig

    path = zoo.resolve_model(cfg.model)
    local = Path(path).is_dir()
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as err:
        why = one_line(err) if local else _hub_problem(path)
    if why is None:
        try:
            return AutoConfig.from_pretrained(path)
        except Exception as err:
            why = one_line(err)
    raise ValueError(
        f"Cannot load model {cfg.model!r}: {why}. Pass a built-in model "
        f"({', '.join(zoo.MODELS)}), a local folder, or a hub id that is in the local cache."
    )


def _position_limit(config: Any, path: str) -> tuple[int, str] | None:
    """(tokens, where it comes from): the model's position limit, from its config and, in a
    local folder, its tokenizer's model_max_length (RoBERTa's positions are offset by 2)."""
    found = [(getattr(config, k), k) for k in _POSITION_KEYS if getattr(config, k, None)]
    limits = [(int(v), k) for v, k in found if isinstance(v, int) and v > 0][:1]
    tokenizer_file = Path(path) / "tokenizer_config.json"
    if tokenizer_file.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            most = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("model_max_length")
            if isinstance(most, int) and 0 < most < 10**8:
                limits.append((most, "its tokenizer's model_max_length"))
    return min(limits, key=lambda limit: limit[0]) if limits else None  # the config on a tie


def check_model_limits(cfg: TrainConfig) -> None:
    """--max-length within the model's position limit (config.json read, no weights)."""
    config = model_config(cfg)
    limit = _position_limit(config, zoo.resolve_model(cfg.model))
    if limit is not None and cfg.max_length is not None and cfg.max_length > limit[0]:
        raise ValueError(
            f"--max-length {cfg.max_length} is above the {limit[0]} positions of model "
            f"{cfg.model!r} ({limit[1]}): pass --max-length {limit[0]} or less."
        )


def check_report_to(cfg: TrainConfig) -> None:
    """Every --report-to integration is known to transformers and its package installed."""
    from transformers.integrations import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    available = set(get_available_reporting_integrations())
    for name in cfg.report_to:
        if name == "all":
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(
                f"--report-to {name}: not a logging integration; use none or any of "
                f"{', '.join(INTEGRATION_TO_CALLBACK)}."
            )
        if name not in available:
            raise ValueError(
                f"--report-to {name} needs the {_PACKAGES.get(name, name)} package: pip install "
                f"{_PACKAGES.get(name, name)}, or drop {name} from --report-to."
            )


def check_rows(cfg: TrainConfig, data: TaskData) -> None:
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


def load_checked(cfg: TrainConfig) -> TaskData:
    """The run's data after every check that needs no model; then an overwritten run is cleared."""
    check_paths(cfg)
    check_output_dir(cfg)
    check_report_to(cfg)
    check_model_limits(cfg)
    data = load_data(cfg.data, **data_options(cfg))
    check_rows(cfg, data)
    _clear_previous(cfg)
    return data
