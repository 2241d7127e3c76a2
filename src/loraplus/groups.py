"""The LoRA+ policy: each role's learning rate and weight decay, and the param groups it yields.

The width argument (SPEC.md, Theorem 1): a tensor whose update is summed over the n-dimensional
input (lora_A, a full matrix) needs lr ~ 1/n; one whose input is r-dimensional, a lookup, or an
elementwise scale (lora_B, embedding adapters, vectors) needs lr ~ 1. LoRA+ stands in `lr` for the
first kind and `ratio * lr` for the second, so ratio = 1 is exactly standard LoRA.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from loraplus.roles import Role, as_role, classify, lora_fan_ins, trainable_parameters


@dataclass(frozen=True)
class RolePolicy:
    """How one role is trained: its lr as `lr` or `ratio * lr`, and whether it decays."""

    scale: Literal["lr", "ratio"]
    decay: bool
    why: str


POLICY: dict[Role, RolePolicy] = {
    Role.LORA_A: RolePolicy("lr", True, "A·z sums over the width n, so lr_A ~ 1/n"),
    Role.LORA_B: RolePolicy("ratio", True, "B·(Az) sums over the rank r only, so lr_B ~ 1"),
    Role.EMBEDDING_A: RolePolicy(
        "ratio", True, "a lookup (one-hot input), no sum over n, so ~ 1; same lr as its B"
    ),
    Role.EMBEDDING_B: RolePolicy("ratio", True, "B·(Az) sums over the rank r only, so ~ 1"),
    Role.MAGNITUDE: RolePolicy("ratio", False, "DoRA's elementwise scale: ~ 1, never decayed"),
    Role.SINGULAR: RolePolicy(
        "ratio", False, "AdaLoRA's lora_E scales the r bottleneck elementwise: ~ 1, no decay"
    ),
    Role.TOKENS: RolePolicy(
        "ratio",
        True,
        "trainable_tokens_delta rows are a lookup (one-hot input), no sum over n: ~ 1",
    ),
    Role.VECTOR: RolePolicy("ratio", False, "biases and norm gains act elementwise: ~ 1, no decay"),
    Role.HEAD: RolePolicy(
        "ratio",
        True,
        "a modules_to_save matrix (a new classifier head) learns from scratch beside B: at lr it "
        "starves under LoRA+ (README: the head's learning rate)",
    ),
    Role.OTHER: RolePolicy("lr", True, "any other trainable matrix sums over n: ~ 1/n, like A"),
}


def as_float(value: Any, name: str, *, positive: bool = True, allow_zero: bool = False) -> float:
    """`value` as a finite float; numbers written as strings ("1e-6") are accepted."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got the boolean {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number, got {value!r} ({type(value).__name__}). "
            "Write it as 2e-4 or '2e-4'."
        ) from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if positive and (number < 0 or (number == 0 and not allow_zero)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")
    return number


def as_ratio(value: Any, name: str = "ratio") -> float | str:
    """lr_B / lr_A as a float > 0, or "auto" (loraplus.autoratio sets it per layer)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return as_float(value, name)


def role_lrs(
    lr: float,
    ratio: float = 16.0,
    lr_embedding: float | None = None,
    lr_multipliers: Mapping[Role | str, float] | None = None,
    lr_roles: Mapping[Role | str, float] | None = None,
) -> dict[Role, float]:
    """The learning rate of every role: POLICY, then lr_embedding, then lr_multipliers (x lr),
    then lr_roles (absolute: the role's lr whatever lr and ratio are, e.g. a head's own lr)."""
    lrs = {role: lr * (ratio if p.scale == "ratio" else 1.0) for role, p in POLICY.items()}
    if lr_embedding is not None:
        lrs[Role.EMBEDDING_A] = lrs[Role.EMBEDDING_B] = lr_embedding
    for key, mult in (lr_multipliers or {}).items():
        lrs[as_role(key)] = lr * as_float(mult, f"lr_multipliers[{key!r}]", allow_zero=True)
    lrs.update(check_lr_roles(lr_multipliers, lr_roles))
    for role, value in lrs.items():
        _check_finite_lr(value, role.value, lr, ratio, lr_multipliers)
    return lrs


def _check_finite_lr(
    value: float,
    role: str,
    lr: float,
    ratio: float,
    lr_multipliers: Mapping[Role | str, float] | None,
) -> None:
    """A role's lr after multiplication must be finite (1e300 x 16 overflows to inf)."""
    if math.isfinite(value):
        return
    factors = {as_role(k).value: v for k, v in (lr_multipliers or {}).items()}
    factor = f"multiplier {factors[role]:g}" if role in factors else f"ratio {ratio:g}"
    raise ValueError(
        f"The {role} learning rate is {value} (lr {lr:g} x {factor} overflows): pass a smaller "
        "lr, ratio or multiplier."
    )


def absolute_roles(lr_roles: Mapping[Role | str, float] | None) -> dict[Role, float]:
    """lr_roles checked: {Role: absolute lr >= 0}."""
    return {
        as_role(k): as_float(v, f"lr_roles[{k!r}]", allow_zero=True)
        for k, v in (lr_roles or {}).items()
    }


def check_lr_roles(
    lr_multipliers: Mapping[Role | str, float] | None,
    lr_roles: Mapping[Role | str, float] | None,
    width_aware: bool = False,
) -> dict[Role, float]:
    """lr_roles as {Role: lr}, refused where a role also has a multiplier, or where it sets
    lora_A's lr that width_aware sets per layer (one check for the API, Trainer and CLI)."""
    absolute = absolute_roles(lr_roles)
    both = sorted(r.value for r in absolute if r in {as_role(k) for k in (lr_multipliers or {})})
    if both:
        raise ValueError(
            f"{', '.join(both)} is set in both lr_multipliers and lr_roles: give each role "
            "either a multiplier of lr or an absolute lr, not both."
        )
    if width_aware and Role.LORA_A in absolute:
        raise ValueError("width_aware sets lora_A's lr per layer: drop lora_A from lr_roles.")
    return absolute


def param_groups(
    model: nn.Module,
    lr: float | str,
    ratio: float | str = 16.0,
    lr_embedding: float | str | None = None,
    weight_decay: float | str = 0.0,
    lr_multipliers: Mapping[Role | str, float] | None = None,
    patterns: Mapping[Role | str, str | Sequence[str]] | None = None,
    width_aware: bool = False,
    n_ref: float | str | None = None,
    lr_roles: Mapping[Role | str, float] | None = None,
) -> list[dict[str, Any]]:
    """One torch param group per role present: params, param_names, role, lr, weight_decay.

    `weight_decay` applies to the matrix roles; biases, norms and DoRA magnitudes never decay.
    `lr_roles` gives roles an absolute lr (`{"other": 1e-3}`: a new head's own lr, the same
    whatever lr and ratio are). With `width_aware`, lora_A gets one group per fan-in n at
    lr · n_ref / n (the theory's lr_A ~ 1/n; n_ref defaults to the median lora_A fan-in), and
    every group has a `fan_in` key (None where the lr does not depend on the width).
    """
    lr_ = as_float(lr, "lr")
    ratio_ = as_float(ratio, "ratio")
    emb = None if lr_embedding is None else as_float(lr_embedding, "lr_embedding")
    wd = as_float(weight_decay, "weight_decay", allow_zero=True)
    if n_ref is not None and not width_aware:
        raise ValueError("n_ref only applies with width_aware=True: pass both, or neither.")
    check_lr_roles(lr_multipliers, lr_roles, width_aware)
    lrs = role_lrs(lr_, ratio_, emb, lr_multipliers, lr_roles)
    roles = classify(model, patterns)
    widths = lora_fan_ins(model, roles) if width_aware else {}
    if n_ref is not None:
        ref = as_float(n_ref, "n_ref")
    else:
        ref = float(statistics.median(widths.values())) if widths else 1.0
    members: dict[tuple[Role, int | None], list[tuple[str, nn.Parameter]]] = {}
    for name, param in trainable_parameters(model):
        members.setdefault((roles[name], widths.get(name)), []).append((name, param))
    order = list(Role)
    groups = []
    for (role, fan_in), named in sorted(
        members.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1] or 0)
    ):
        group_lr = lrs[role] * (ref / fan_in if fan_in else 1.0)
        if not math.isfinite(group_lr):
            raise ValueError(
                f"The {role.value} learning rate of fan-in {fan_in} is {group_lr} (lr {lr_:g} x "
                f"n_ref {ref:g} / {fan_in} overflows): pass a smaller lr or n_ref."
            )
        group: dict[str, Any] = {
            "params": [p for _, p in named],
            "param_names": [n for n, _ in named],
            "role": role.value,
            "lr": group_lr,
            "weight_decay": wd if POLICY[role].decay else 0.0,
        }
        if width_aware:
            group["fan_in"] = fan_in
        groups.append(group)
    return groups
