"""Which role each trainable tensor plays in a LoRA model: found by module type, not by name.

PEFT models are read structurally (every `LoraLayer` and the adapter dicts it owns); models with
LoRA that is not PEFT's fall back to name patterns. Wrappers (torch.compile, DDP, FSDP) are seen
through, so a model classifies the same way however it is wrapped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum

from torch import nn


class Role(str, Enum):
    """What a trainable tensor is, which decides its learning rate and weight decay."""

    LORA_A = "lora_A"
    LORA_B = "lora_B"
    EMBEDDING_A = "embedding_A"
    EMBEDDING_B = "embedding_B"
    MAGNITUDE = "magnitude"
    VECTOR = "vector"
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


LORA_ROLES = (Role.LORA_A, Role.LORA_B, Role.EMBEDDING_A, Role.EMBEDDING_B)

# Name fallback for LoRA that is not PEFT's: one dotted component of the parameter's name.
DEFAULT_PATTERNS: dict[Role, tuple[str, ...]] = {
    Role.EMBEDDING_A: (r"lora_embedding_A",),
    Role.EMBEDDING_B: (r"lora_embedding_B",),
    Role.LORA_A: (r"lora_A", r"lora_a", r"lora_down"),
    Role.LORA_B: (r"lora_B", r"lora_b", r"lora_up"),
    Role.MAGNITUDE: (r"lora_magnitude_vector", r"dora_scale"),
}

# PEFT LoraLayer attribute -> role of the matrices it holds.
_PEFT_ATTRS: dict[str, Role] = {
    "lora_A": Role.LORA_A,
    "lora_B": Role.LORA_B,
    "lora_embedding_A": Role.EMBEDDING_A,
    "lora_embedding_B": Role.EMBEDDING_B,
    "lora_magnitude_vector": Role.MAGNITUDE,
}

# Prefixes that wrappers put in front of parameter names.
_WRAPPER_PARTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside torch.compile / DistributedDataParallel / DataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        return model


def canonical_name(name: str) -> str:
    """A parameter name with wrapper components (compile, FSDP, checkpointing) removed."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def trainable_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(canonical name, parameter) for each trainable tensor, each shared tensor once."""
    for name, param in unwrap(model).named_parameters():
        if param.requires_grad:
            yield canonical_name(name), param


def _peft_roles(model: nn.Module) -> tuple[dict[int, Role], int]:
    """Roles of the tensors held by PEFT LoRA layers, keyed by id(param), and the layer count."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return {}, 0
    roles: dict[int, Role] = {}
    layers = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        layers += 1
        for attr, role in _PEFT_ATTRS.items():
            holder = getattr(module, attr, None)
            if holder is None:
                continue
            for param in holder.parameters():
                # lora_B's bias (PEFT's lora_bias=True) is a vector, not a matrix.
                _assign(
                    roles, param, role if param.ndim >= 2 or role is Role.MAGNITUDE else Role.VECTOR
                )
    return roles, layers


def _assign(roles: dict[int, Role], param: nn.Parameter, role: Role) -> None:
    previous = roles.setdefault(id(param), role)
    if previous is not role:
        raise ValueError(
            f"A tensor of shape {tuple(param.shape)} is shared between a {previous} and a {role} "
            "LoRA matrix, so it cannot have one learning rate. Untie it, or give both roles the "
            "same multiplier with lr_multipliers=."
        )


def _compile_patterns(
    patterns: Mapping[Role | str, str | Sequence[str]] | None,
) -> dict[Role, list[re.Pattern[str]]]:
    merged: dict[Role, list[str]] = {role: list(p) for role, p in DEFAULT_PATTERNS.items()}
    for key, value in (patterns or {}).items():
        role = as_role(key)
        extra = [value] if isinstance(value, str) else list(value)
        merged[role] = extra + merged.get(role, [])
    return {
        role: [
            re.compile(rf"(?:^|\.){p}(?:\.|$)") if p.isidentifier() else re.compile(p) for p in ps
        ]
        for role, ps in merged.items()
    }


def as_role(key: Role | str) -> Role:
    """A Role from its value ("lora_B"), raising a ValueError that lists the valid ones."""
    if isinstance(key, Role):
        return key
    try:
        return Role(key)
    except ValueError:
        valid = ", ".join(r.value for r in Role)
        raise ValueError(f"Unknown role {key!r}: use one of {valid}.") from None


def classify(
    model: nn.Module,
    patterns: Mapping[Role | str, str | Sequence[str]] | None = None,
) -> dict[str, Role]:
    """{parameter name: Role} for every trainable parameter of `model`.

    PEFT LoRA layers are found by type; without them, names are matched against `patterns`
    (regexes per role, added in front of the built-in spellings lora_A/lora_a/lora_down, ...).
    """
    inner = unwrap(model)
    by_id, layers = _peft_roles(inner)
    compiled = _compile_patterns(patterns) if (not layers or patterns) else {}
    roles: dict[str, Role] = {}
    for name, param in trainable_parameters(inner):
        role = by_id.get(id(param))
        if role is None and compiled:
            hits = [r for r, ps in compiled.items() if any(p.search(name) for p in ps)]
            if len(set(hits)) > 1:
                raise ValueError(
                    f"Parameter {name!r} of {type(inner).__name__} matches the patterns of "
                    f"several roles ({', '.join(str(h) for h in hits)}). Pass patterns= that "
                    "match it once, e.g. patterns={'lora_A': r'\\.down\\.'}."
                )
            role = hits[0] if hits else None
            if role is not None and param.ndim < 2 and role is not Role.MAGNITUDE:
                role = Role.VECTOR
        roles[name] = role if role is not None else (Role.VECTOR if param.ndim < 2 else Role.OTHER)
    if not any(r in LORA_ROLES for r in roles.values()):
        searched = (
            f"{layers} PEFT LoraLayer module(s), none with a trainable adapter"
            if layers
            else "no PEFT LoraLayer modules"
        )
        spellings = ", ".join(p.pattern for ps in compiled.values() for p in ps) or "none"
        raise ValueError(
            f"Found no trainable LoRA parameter in {type(inner).__name__} "
            f"({len(roles)} trainable tensor(s)). Searched: {searched}; name patterns: "
            f"{spellings}. Fix: wrap the model with peft.get_peft_model(model, LoraConfig(...)), "
            "make the adapter trainable (model.set_adapter(name)), or pass "
            "patterns={'lora_A': ..., 'lora_B': ...} matching your LoRA parameter names."
        )
    return roles
