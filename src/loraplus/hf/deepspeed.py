"""Refuse DeepSpeed configs whose own optimizer or lr schedule would silently drop LoRA+."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainingArguments

if TYPE_CHECKING:
    pass


# DeepSpeed schedulers that scale each group's own lr; the others set one absolute lr for all.
_RATIO_PRESERVING_DS_SCHEDULERS = ("WarmupCosineLR",)


def _parse_deepspeed(value: Any) -> dict[str, Any] | None:
    if value is None or value is False or value == "":
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if path.is_file():
            loaded = json.loads(path.read_text(encoding="utf-8"))
            return dict(loaded) if isinstance(loaded, Mapping) else None
        text = str(value)
        for decode in (lambda s: s, lambda s: base64.urlsafe_b64decode(s).decode("utf-8")):
            try:
                loaded = json.loads(decode(text))
            except (ValueError, binascii.Error, UnicodeDecodeError):
                continue
            return dict(loaded) if isinstance(loaded, Mapping) else None
        raise ValueError(
            f"DeepSpeed config {text!r} is not a file, a JSON string or base64 JSON; "
            "pass a dict or the path of a JSON file."
        )
    return None


def deepspeed_config(source: Any) -> dict[str, Any] | None:
    """The DeepSpeed config of a dict, a JSON path, TrainingArguments or a Trainer (else None)."""
    if source is None or isinstance(source, (Mapping, str, os.PathLike)):
        return _parse_deepspeed(source)
    inner_args = getattr(source, "args", None)
    if inner_args is not None and not isinstance(source, TrainingArguments):  # a Trainer
        found = deepspeed_config(inner_args)
        if found is not None:
            return found
        state = getattr(getattr(source, "accelerator", None), "state", None)
        plugin = getattr(state, "deepspeed_plugin", None) if state is not None else None
        cfg = getattr(plugin, "deepspeed_config", None)
        return dict(cfg) if isinstance(cfg, Mapping) else None
    hf_cfg = getattr(getattr(source, "hf_deepspeed_config", None), "config", None)
    if isinstance(hf_cfg, Mapping):
        return dict(hf_cfg)
    return _parse_deepspeed(getattr(source, "deepspeed", None))


def check_deepspeed_config(source: Any) -> None:
    """Raise if a DeepSpeed config would replace the LoRA+ optimizer or flatten its lrs.

    With an `optimizer` block, transformers builds DeepSpeed's optimizer (one lr for all tensors)
    and never calls create_optimizer. A `scheduler` block other than WarmupCosineLR sets one
    absolute lr (warmup_max_lr) on every param group at each step. Both drop the ratio silently.
    """
    cfg = deepspeed_config(source)
    if not cfg:
        return
    problems = []
    if "optimizer" in cfg:
        kind = (cfg.get("optimizer") or {}).get("type", "?")
        problems.append(
            f'its "optimizer" block ({kind}) makes transformers build DeepSpeed\'s optimizer with '
            "one learning rate for every tensor and skip create_optimizer"
        )
    sched = cfg.get("scheduler")
    if sched is not None and (sched or {}).get("type") not in _RATIO_PRESERVING_DS_SCHEDULERS:
        problems.append(
            f'its "scheduler" block ({(sched or {}).get("type", "?")}) sets the same absolute '
            "lr (warmup_max_lr) on every param group at each step"
        )
    if problems:
        raise ValueError(
            "The DeepSpeed config would silently drop LoRA+ (lr_B = ratio · lr_A): "
            + "; ".join(problems)
            + '. Fix: delete the "optimizer" block (and any "scheduler" block other than '
            "WarmupCosineLR) so the Trainer builds the LoRA+ optimizer from args.optim / "
            "learning_rate / weight_decay and schedules it with lr_scheduler_type / warmup_steps; "
            "DeepSpeed then wraps that optimizer. (Under DeepSpeed the Trainer discards an "
            "optimizer passed as optimizers=(...), so that is no way around it.)"
        )
