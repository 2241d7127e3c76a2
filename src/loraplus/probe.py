"""Feature-update probes: how far A's and B's last step each moved a LoRA layer's output.

Paper §4, Definition 5: after a step, Δ(B A z) = δ¹ + δ² + δ³ with δ¹ = s·B·ΔA·z (A's share),
δ² = s·ΔB·A·z (B's share), δ³ = s·ΔB·ΔA·z, s the adapter's scaling. Fine-tuning is efficient when
δ¹ and δ² are of the same order; if one is far smaller, that matrix is effectively frozen. Values
are root-mean-square over the probed tokens and output coordinates.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loraplus.roles import unwrap
from loraplus.sharded import (
    LORA_ROLES,
    all_reduce_sum,
    check_whole_groups,
    full_value,
    innermost_optimizer,
    is_deepspeed,
    refuse_fsdp1,
    stepped_roles,
)
from loraplus.verdicts import module_kind


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


@torch.no_grad()
def feature_update_sums(
    a_before: torch.Tensor,
    b_before: torch.Tensor,
    a_after: torch.Tensor,
    b_after: torch.Tensor,
    z: torch.Tensor,
    scaling: float = 1.0,
) -> torch.Tensor:
    """[Σ(δ¹)², Σ(δ²)², Σ(δ³)², count] over the tokens z (..., n_in), in float32.

    Sums, so that ranks holding different tokens add them up (sharded.all_reduce_sum).
    """
    a0, b0 = a_before.float(), b_before.float()
    d_a, d_b = a_after.float() - a0, b_after.float() - b0
    tokens = z.reshape(-1, z.shape[-1]).to(device=a0.device, dtype=torch.float32)
    za, zda = tokens @ a0.T, tokens @ d_a.T
    terms = (scaling * zda @ b0.T, scaling * za @ d_b.T, scaling * zda @ d_b.T)
    count = torch.tensor(float(tokens.shape[0] * b0.shape[0]), device=a0.device)
    return torch.stack([*(t.pow(2).sum() for t in terms), count])


def rms(sums: torch.Tensor) -> torch.Tensor:
    """[δ¹, δ², δ³] as root-mean-squares from feature_update_sums' [..., 4] sums."""
    return (sums[..., :3] / sums[..., 3:].clamp_min(1.0)).sqrt()


def feature_update_terms(
    a_before: torch.Tensor,
    b_before: torch.Tensor,
    a_after: torch.Tensor,
    b_after: torch.Tensor,
    z: torch.Tensor,
    scaling: float = 1.0,
) -> tuple[float, float, float]:
    """RMS of δ¹ = s·B·ΔA·z, δ² = s·ΔB·A·z and δ³ = s·ΔB·ΔA·z for inputs z (..., n_in)."""
    d1, d2, d3 = rms(feature_update_sums(a_before, b_before, a_after, b_after, z, scaling))
    return float(d1), float(d2), float(d3)


class FeatureUpdateProbe:
    """Captures the inputs of PEFT LoRA Linear layers; snapshot() before a step, measure() after.

    Values are float32 whatever the adapters' dtype, read from what the optimizer really steps
    (DeepSpeed's fp32 masters, FSDP2's gathered DTensors); under several processes the δ's are
    over every rank's tokens, the same on each, and snapshot()/measure() are collectives: call
    them on every rank. `watch(optimizer)` calls both from the optimizer's own step hooks.
    """

    def __init__(self, model: nn.Module, max_tokens: int = 512) -> None:
        from peft.tuners.lora import LoraLayer

        refuse_fsdp1(model, "The δ probe")
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
        self.warned_half = False

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
            (name, key): (full_value(a), full_value(b)) for name, key, a, b, _ in self._adapters()
        }

    def measure(self) -> list[FeatureUpdate]:
        """δ¹, δ², δ³ of each adapter for its last recorded input (call after optimizer.step())."""
        found, sums, moved = [], [], []
        for name, key, a, b, scaling in self._adapters():
            if (name, key) not in self.before:
                continue
            a0, b0 = self.before[(name, key)]
            a1, b1 = full_value(a), full_value(b)
            z = self.inputs.get(name, torch.zeros(0, a0.shape[1]))
            found.append((name, key))
            sums.append(feature_update_sums(a0, b0, a1, b1, z, scaling))
            counts = unmoved_a(a, a0, a1, b0)
            moved += [counts] if counts is not None else []
        if not sums:
            return []
        if not self.inputs:
            warn_no_inputs("The δ probe measured nothing")
        total = all_reduce_sum(torch.stack(sums))  # one collective: every rank's tokens
        if moved and not self.warned_half:
            self.warned_half = True
            warn_half_precision(moved)
        values = rms(total).tolist()
        self.inputs = {}  # the next measure() needs inputs recorded after this one
        return [
            FeatureUpdate(name, key, *terms)
            for (name, key), terms, count in zip(found, values, total[:, 3].tolist(), strict=True)
            if count > 0
        ]

    def watch(self, optimizer: Any, when: Callable[[], bool] = lambda: True) -> None:
        """snapshot() and measure() from `optimizer`'s step hooks, on the steps `when()` allows.

        The latest measurement is in `self.last`. DeepSpeed steps the optimizer once per param
        group: the snapshot is taken before the first LoRA group's step, the measurement after
        the last one's.
        """
        inner = innermost_optimizer(optimizer)
        self.last: list[FeatureUpdate] | None = None
        done: set[str] = set()

        def before(opt: Any, *_: Any) -> None:
            roles = stepped_roles(opt) & LORA_ROLES
            check_whole_groups(roles, done, "The δ probe")
            if roles and not done and when():
                self.snapshot()
                done.add("open")

        def after(opt: Any, *_: Any) -> None:
            if "open" not in done:
                return
            done.update(stepped_roles(opt) & LORA_ROLES)
            if done >= LORA_ROLES:
                done.clear()
                self.last = self.measure()

        self.step_hooks = [
            inner.register_step_pre_hook(before),
            inner.register_step_post_hook(after),
        ]

    def remove(self) -> None:
        """Detach the forward hooks (and the optimizer's, after watch())."""
        for hook in [*self.hooks, *getattr(self, "step_hooks", [])]:
            hook.remove()
        self.hooks, self.step_hooks = [], []


def unmoved_a(
    a: torch.Tensor, a0: torch.Tensor, a1: torch.Tensor, b0: torch.Tensor
) -> torch.Tensor | None:
    """[entries of A that did not move, entries] for a half-precision A the optimizer steps
    itself (not a DeepSpeed fp32 master) that had a gradient (B ≠ 0); else None."""
    if a.dtype not in (torch.float16, torch.bfloat16) or is_deepspeed(a) or not b0.any():
        return None
    return torch.stack([(a1 == a0).sum(), torch.tensor(a1.numel(), device=a1.device)])


def warn_half_precision(counts: list[torch.Tensor]) -> None:
    """One warning: the share of A's entries whose update rounded away, and the fix."""
    total = torch.stack(counts).sum(0)
    still = float(total[0]) / float(total[1])
    warnings.warn(
        f"The LoRA adapters are kept in half precision: {still:.0%} of A's entries did not "
        "move in this step (updates smaller than the weight's rounding step are lost, which "
        "inflates the effective lr_B / lr_A). Keep the adapters in float32: leave PEFT's "
        "autocast_adapter_dtype=True and do not cast the model after get_peft_model, or "
        "train with mixed precision (bf16=True) over float32 adapters.",
        stacklevel=3,
    )


def warn_no_inputs(what: str) -> None:
    """Warn that no LoRA layer's forward hook saw an input (a graph compiled before the hooks)."""
    warnings.warn(
        f"{what}: no LoRA layer recorded an input since the last step. A model compiled with "
        "torch.compile before these forward hooks were registered runs its graph without them. "
        "Create the probe (or the optimizer with ratio='auto', signal='inputs') before the "
        "compiled model first runs, or call torch._dynamo.reset() after creating it so that "
        "the model recompiles with the hooks.",
        stacklevel=3,
    )


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
