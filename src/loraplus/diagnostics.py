"""Feature-update probes: how far A's and B's last step each moved a LoRA layer's output.

Paper §4, Definition 5: after a step, Δ(B A z) = δ¹ + δ² + δ³ with δ¹ = s·B·ΔA·z (A's share),
δ² = s·ΔB·A·z (B's share), δ³ = s·ΔB·ΔA·z, s the adapter's scaling. Fine-tuning is efficient when
δ¹ and δ² are of the same order; if one is far smaller, that matrix is effectively frozen. Values
are root-mean-square over the probed tokens and output coordinates.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from loraplus.diagnose import kind_scalars, module_kind
from loraplus.roles import unwrap


@dataclass(frozen=True)
class FeatureUpdate:
    """δ¹ (A's share), δ² (B's share) and δ³ of one adapter's output change, as RMS values."""

    layer: str
    adapter: str
    delta_a: float
    delta_b: float
    delta_ab: float

    @property
    def balance(self) -> float:
        """log2(δ² / δ¹): 0 when A and B move the features equally; ±inf when one is frozen."""
        if self.delta_a == 0 or self.delta_b == 0:
            return math.inf if self.delta_b > self.delta_a else -math.inf
        return math.log2(self.delta_b / self.delta_a)


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


@torch.no_grad()
def feature_update_terms(
    a_before: torch.Tensor,
    b_before: torch.Tensor,
    a_after: torch.Tensor,
    b_after: torch.Tensor,
    z: torch.Tensor,
    scaling: float = 1.0,
) -> tuple[float, float, float]:
    """RMS of δ¹ = s·B·ΔA·z, δ² = s·ΔB·A·z and δ³ = s·ΔB·ΔA·z for inputs z (..., n_in)."""
    tokens = z.reshape(-1, z.shape[-1]).to(a_before.dtype)
    d_a, d_b = a_after - a_before, b_after - b_before
    za, zda = tokens @ a_before.T, tokens @ d_a.T
    return (
        _rms(scaling * zda @ b_before.T),
        _rms(scaling * za @ d_b.T),
        _rms(scaling * zda @ d_b.T),
    )


class FeatureUpdateProbe:
    """Captures the inputs of PEFT LoRA Linear layers; snapshot() before a step, measure() after."""

    def __init__(self, model: nn.Module, max_tokens: int = 512) -> None:
        from peft.tuners.lora import LoraLayer

        self.max_tokens = max_tokens
        self.recording = True  # the callback records only the forwards of the steps it probes
        self.layers: dict[str, Any] = {
            name: m
            for name, m in unwrap(model).named_modules()
            if isinstance(m, LoraLayer) and any(isinstance(a, nn.Linear) for a in m.lora_A.values())
        }
        if not self.layers:
            raise ValueError(
                f"{type(unwrap(model)).__name__} has no PEFT LoRA Linear layer to probe; wrap it "
                "with peft.get_peft_model(model, LoraConfig(...)) first."
            )
        self.inputs: dict[str, torch.Tensor] = {}
        self.before: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.hooks = [
            m.register_forward_pre_hook(self._recorder(name)) for name, m in self.layers.items()
        ]

    def _recorder(self, name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if not self.recording:
                return
            x = args[0].detach()
            self.inputs[name] = x.reshape(-1, x.shape[-1])[: self.max_tokens].clone()

        return hook

    def _adapters(self) -> list[tuple[str, str, nn.Parameter, nn.Parameter, float]]:
        found = []
        for name, layer in self.layers.items():
            for key in layer.active_adapters:
                if key in layer.lora_A and layer.lora_A[key].weight.requires_grad:
                    a, b = layer.lora_A[key].weight, layer.lora_B[key].weight
                    found.append((name, key, a, b, float(layer.scaling[key])))
        return found

    def snapshot(self) -> None:
        """Copy every trainable adapter's A and B (call right before optimizer.step())."""
        self.before = {
            (name, key): (a.detach().clone(), b.detach().clone())
            for name, key, a, b, _ in self._adapters()
        }

    def measure(self) -> list[FeatureUpdate]:
        """δ¹, δ², δ³ of each adapter for its last recorded input (call after optimizer.step())."""
        out = []
        for name, key, a, b, scaling in self._adapters():
            if (name, key) not in self.before or name not in self.inputs:
                continue
            a0, b0 = self.before[(name, key)]
            terms = feature_update_terms(a0, b0, a.detach(), b.detach(), self.inputs[name], scaling)
            out.append(FeatureUpdate(name, key, *terms))
        return out

    def remove(self) -> None:
        """Detach the forward hooks."""
        for hook in self.hooks:
            hook.remove()
        self.hooks = []


def layer_records(updates: list[FeatureUpdate]) -> list[dict[str, Any]]:
    """One plain record per adapter (the "layers" of a probe row); balance None if not finite."""
    return [
        {
            "layer": u.layer,
            "adapter": u.adapter,
            "kind": module_kind(u.layer),
            "delta_a": u.delta_a,
            "delta_b": u.delta_b,
            "delta_ab": u.delta_ab,
            "balance_log2": u.balance if math.isfinite(u.balance) else None,
        }
        for u in updates
    ]


def summarize_updates(updates: list[FeatureUpdate]) -> dict[str, float]:
    """Medians over layers: delta_a, delta_b, and log2(δ²/δ¹) (the balance)."""
    finite = [u.balance for u in updates if math.isfinite(u.balance)]
    return {
        "delta_a": statistics.median(u.delta_a for u in updates) if updates else math.nan,
        "delta_b": statistics.median(u.delta_b for u in updates) if updates else math.nan,
        "balance_log2": statistics.median(finite) if finite else math.nan,
    }


class FeatureUpdateCallback(TrainerCallback):
    """Every `every` optimizer steps, records δ¹, δ², δ³ per LoRA layer in `self.history`.

    Each row holds the medians over layers (step, delta_a, delta_b, balance_log2) and the
    per-layer records under "layers" (the shape loraplus.diagnose reads). The medians per module
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

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.probe is not None:
            self.probe.recording = state.global_step % self.every == 0

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.probe is not None and self.probe.recording:
            self.probe.snapshot()

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.probe is not None and self.probe.recording:
            updates = self.probe.measure()
            layers = layer_records(updates)
            row = {"step": float(state.global_step + 1), **summarize_updates(updates)}
            self.history.append({**row, "layers": layers})
            self.pending = kind_scalars(layers)
            self.probe.recording = False

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
