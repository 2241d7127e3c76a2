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
from loraplus.settings import (
    LoraPlusSettings,
    absolute_roles,
    as_float,
    as_ratio,
    as_settings,
    check_lr_roles,
)

__all__ = [
    "POLICY",
    "RolePolicy",
    "absolute_roles",
    "as_float",
    "as_ratio",
    "check_lr_roles",
    "param_groups",
    "role_lrs",
]


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


def param_groups(
    model: nn.Module,
    settings: LoraPlusSettings | float | str | None = None,
    *,
    weight_decay: float | str = 0.0,
    patterns: Mapping[Role | str, str | Sequence[str]] | None = None,
    **fields: Any,
) -> list[dict[str, Any]]:
    """One torch param group per role present: params, param_names, role, lr, weight_decay.

    The LoRA+ settings come as a LoraPlusSettings, as its fields given as keywords
    (`param_groups(model, lr=1e-4, ratio=16)`), or both (keywords win); a number in place of the
    object is lr, as before. `weight_decay` applies to the matrix roles; biases, norms and DoRA
    magnitudes never decay. `lr_roles` gives roles an absolute lr (`{"other": 1e-3}`: a new
    head's own lr, the same whatever lr and ratio are). With `width_aware`, lora_A gets one group
    per fan-in n at lr · n_ref / n (the theory's lr_A ~ 1/n; n_ref defaults to the median lora_A
    fan-in), and every group has a `fan_in` key (None where the lr does not depend on the width).
    `init` is not applied here (create_optimizer and the Trainer apply it); ratio="auto" needs
    its controller, so it is refused here (create_optimizer attaches it).
    """
    if settings is not None and not isinstance(settings, LoraPlusSettings):
        fields = {"lr": settings, **fields}  # param_groups(model, 1e-4, ...): lr positional
        settings = None
    s = as_settings(settings, **fields)
    if s.ratio == "auto":
        raise ValueError(
            "param_groups builds fixed ratios; ratio='auto' needs its controller: use "
            "loraplus.create_optimizer(model, ..., ratio='auto')."
        )
    wd = as_float(weight_decay, "weight_decay", allow_zero=True)
    ratio = s.start_ratio
    lrs = role_lrs(s.lr, ratio, s.lr_embedding, s.lr_multipliers, s.lr_roles)
    roles = classify(model, patterns)
    widths = lora_fan_ins(model, roles) if s.width_aware else {}
    if s.n_ref is not None:
        ref = s.n_ref
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
                f"The {role.value} learning rate of fan-in {fan_in} is {group_lr} (lr {s.lr:g} x "
                f"n_ref {ref:g} / {fan_in} overflows): pass a smaller lr or n_ref."
            )
        group: dict[str, Any] = {
            "params": [p for _, p in named],
            "param_names": [n for n, _ in named],
            "role": role.value,
            "lr": group_lr,
            "weight_decay": wd if POLICY[role].decay else 0.0,
        }
        if s.width_aware:
            group["fan_in"] = fan_in
        groups.append(group)
    return groups
