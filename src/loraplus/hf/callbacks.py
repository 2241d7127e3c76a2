"""Trainer callbacks: each role's learning rate, and the feature-update probe, in the logs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from loraplus.autoratio import auto_ratio_logs
from loraplus.probe import FeatureUpdateProbe, layer_records, summarize_updates
from loraplus.verdicts import kind_scalars

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
    """Adds each role's lr (lr/lora_A, lr/lora_B, ...) to every training log: the lrs that the
    logged step used, read just before its optimizer step (the scheduler steps right after).

    Callbacks run in order, so reporters (TensorBoard, W&B) only see the lrs if this one comes
    first: LoraPlusMixin puts it there; with a plain Trainer use
    `trainer.callback_handler.callbacks.insert(0, LoraPlusLogCallback())`. `state.log_history`
    gets them either way, on evaluation entries too (the lrs of the last step before it).
    """

    def __init__(self) -> None:
        self._used: dict[str, float] | None = None  # the lrs of the latest optimizer step

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember the lrs this optimizer step is about to use."""
        if optimizer is not None:
            self._used = role_learning_rates(optimizer)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        optimizer: Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the per-role lrs to a training log and to the log_history entry just written."""
        if logs is None or optimizer is None:
            return
        last = state.log_history[-1] if state.log_history else None
        used = self._used if self._used is not None else role_learning_rates(optimizer)
        lrs = {**used, **auto_ratio_logs(optimizer)}
        if "learning_rate" in logs:
            logs.update(lrs)
        elif not any(k.startswith("eval_") for k in logs):
            return
        if last is not None and last.get("step") == state.global_step and _same(last, logs, lrs):
            last.update(lrs)


def _same(entry: dict[str, Any], logs: dict[str, float], added: dict[str, float]) -> bool:
    """Whether a log_history entry is the one made from `logs` (before `added` joined them)."""
    return all(entry.get(k) == v for k, v in logs.items() if k not in added)


def _log_callback_first(handler: CallbackHandler) -> None:
    existing = [cb for cb in handler.callbacks if isinstance(cb, LoraPlusLogCallback)]
    for cb in existing:
        handler.callbacks.remove(cb)
    handler.callbacks.insert(0, existing[0] if existing else LoraPlusLogCallback())


class FeatureUpdateCallback(TrainerCallback):
    """Every `every` optimizer steps, records δ¹, δ², δ³ per LoRA layer in `self.history`.

    Each row holds the medians over layers (step, delta_a, delta_b, balance_log2) and the
    per-layer records under "layers" (the shape loraplus.verdicts reads). The medians per module
    kind (probe/q/balance_log2, probe/mlp/delta_a, ...) join the next training log; reporters such
    as TensorBoard see them when this callback runs before them (insert it at position 0).
    """

    def __init__(self, every: int = 10, max_tokens: int = 512) -> None:
        self.every, self.max_tokens = every, max_tokens
        self.probe: FeatureUpdateProbe | None = None
        self.history: list[dict[str, Any]] = []
        self.pending: dict[str, float] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.probe = FeatureUpdateProbe(kw["model"], self.max_tokens)
        self.probe.recording = False
        # DeepSpeed steps inside backward, before on_pre_optimizer_step: watch the step itself
        self.probe.watch(kw["optimizer"], lambda: self.probe is not None and self.probe.recording)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.probe is not None:
            self.probe.recording = state.global_step % self.every == 0

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Called after DeepSpeed's step too (Trainer order: backward, step hooks, this)."""
        probe = self.probe
        if probe is None or not probe.recording:
            return
        probe.recording = False
        if probe.last is None:
            return  # skipped step (fp16 overflow): nothing moved
        updates, probe.last = probe.last, None
        layers = layer_records(updates)
        row = {"step": float(state.global_step + 1), **summarize_updates(updates)}
        self.history.append({**row, "layers": layers})
        self.pending = kind_scalars(layers)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        """Add the latest probe's per-kind medians to this log (and its log_history entry)."""
        if logs is None or not self.pending:
            return
        logs.update(self.pending)
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step:
            last.update(self.pending)
        self.pending = {}

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.probe is not None:
            self.probe.remove()
