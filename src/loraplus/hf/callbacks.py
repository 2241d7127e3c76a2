"""Trainer callbacks: each role's learning rate in the logs (TensorBoard, W&B, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from loraplus.autoratio import auto_ratio_logs

if TYPE_CHECKING:
    from transformers.trainer_callback import CallbackHandler


def role_learning_rates(optimizer: Any) -> dict[str, float]:
    """{"lr/lora_A": ..., "lr/lora_B": ...}: the current lr of each param group, keyed by role."""
    out: dict[str, float] = {}
    for i, group in enumerate(optimizer.param_groups):
        key = f"lr/{group.get('role', f'group_{i}')}"
        if key in out:
            key = f"{key}_{i}"
        lr = group["lr"]
        out[key] = float(lr.item() if torch.is_tensor(lr) else lr)
    return out


class LoraPlusLogCallback(TrainerCallback):
    """Adds each role's current lr (lr/lora_A, lr/lora_B, ...) to every training log.

    Callbacks run in order, so reporters (TensorBoard, W&B) only see the lrs if this one comes
    first: LoraPlusMixin puts it there; with a plain Trainer use
    `trainer.callback_handler.callbacks.insert(0, LoraPlusLogCallback())`. `state.log_history`
    gets them either way.
    """

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        optimizer: Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the per-role lrs to `logs` and to the log_history entry just written."""
        if logs is None or optimizer is None or "learning_rate" not in logs:
            return
        lrs = {**role_learning_rates(optimizer), **auto_ratio_logs(optimizer)}
        logs.update(lrs)
        last = state.log_history[-1] if state.log_history else None
        if (
            last is not None
            and last.get("step") == state.global_step
            and last.get("learning_rate") == logs["learning_rate"]
        ):
            last.update(lrs)


def _log_callback_first(handler: CallbackHandler) -> None:
    existing = [cb for cb in handler.callbacks if isinstance(cb, LoraPlusLogCallback)]
    for cb in existing:
        handler.callbacks.remove(cb)
    handler.callbacks.insert(0, existing[0] if existing else LoraPlusLogCallback())
