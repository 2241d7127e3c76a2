"""Which role each trainable tensor plays in a LoRA model: found by module type, not by name.

PEFT models are read structurally (every `LoraLayer`, AdaLoRA's and trainable tokens' layers, and
the adapter dicts they own); models with LoRA that is not PEFT's fall back to name patterns.
Matrix or vector is read from a tensor's module, not its current shape, and wrappers
(torch.compile, DDP, FSDP1's flat shards, FSDP2, DeepSpeed ZeRO-3's partitions) are seen through,
so a model classifies the same way however it is wrapped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd


class Role(str, Enum):
    """What a trainable tensor is, which decides its learning rate and weight decay."""

    LORA_A = "lora_A"
    LORA_B = "lora_B"
    EMBEDDING_A = "embedding_A"
    EMBEDDING_B = "embedding_B"
    MAGNITUDE = "magnitude"
    SINGULAR = "singular"
    TOKENS = "tokens"
    VECTOR = "vector"
    HEAD = "head"
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


LORA_ROLES = (Role.LORA_A, Role.LORA_B, Role.EMBEDDING_A, Role.EMBEDDING_B)
_MATRIX_ROLES = (*LORA_ROLES, Role.TOKENS, Role.HEAD, Role.OTHER)

# Name fallback for LoRA that is not PEFT's: one dotted component of the parameter's name.
DEFAULT_PATTERNS: dict[Role, tuple[str, ...]] = {
    Role.EMBEDDING_A: (r"lora_embedding_A",),
    Role.EMBEDDING_B: (r"lora_embedding_B",),
    Role.LORA_A: (r"lora_A", r"lora_a", r"lora_down"),
    Role.LORA_B: (r"lora_B", r"lora_b", r"lora_up"),
    Role.MAGNITUDE: (r"lora_magnitude_vector", r"dora_scale"),
}

# PEFT adapter attribute (in a layer's adapter_layer_names) -> role of the tensors it holds:
# LoraLayer's, AdaLoraLayer's singular values lora_E, and TrainableTokensLayer's rows for the new
# tokens of trainable_token_indices. An attribute not listed here leaves its tensors to the
# fallback (other / vector).
_PEFT_ATTRS: dict[str, Role] = {
    "lora_A": Role.LORA_A,
    "lora_B": Role.LORA_B,
    "lora_embedding_A": Role.EMBEDDING_A,
    "lora_embedding_B": Role.EMBEDDING_B,
    "lora_magnitude_vector": Role.MAGNITUDE,
    "lora_E": Role.SINGULAR,
    "trainable_tokens_delta": Role.TOKENS,
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


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    """A tensor's whole shape: DeepSpeed ZeRO-3 leaves each rank a (0,) tensor and the real
    shape in `ds_shape`."""
    shape = getattr(param, "ds_shape", None)
    return tuple(shape if shape is not None else param.shape)


def full_numel(param: torch.Tensor) -> int:
    """A tensor's whole size: ZeRO-3's `ds_numel` where present, else its numel."""
    numel = getattr(param, "ds_numel", None)
    return int(numel) if numel is not None else param.numel()


def _is_matrix(owner: nn.Module, local: str, param: nn.Parameter) -> bool:
    """Whether a tensor is a matrix, by its module where that says (FSDP1 shards are 1-D views),
    else by its whole shape (ZeRO-3's partitions are (0,))."""
    if local == "bias":
        return False
    if local == "weight" and isinstance(owner, (nn.Linear, nn.Embedding, _ConvNd)):
        return True
    return len(full_shape(param)) >= 2


def _peft_roles(model: nn.Module) -> tuple[dict[int, Role], int]:
    """Roles of the tensors held by PEFT adapter layers, keyed by id(param), and the LoRA layers."""
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.trainable_tokens import TrainableTokensLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return {}, 0
    roles: dict[int, Role] = {}
    layers = 0
    for module in model.modules():
        if not isinstance(module, (LoraLayer, TrainableTokensLayer)):
            continue
        layers += isinstance(module, LoraLayer)
        for attr in module.adapter_layer_names:  # the layer's own list of its adapter dicts
            holder, role = getattr(module, attr, None), _PEFT_ATTRS.get(attr)
            if role is None or not isinstance(holder, nn.Module):
                continue
            for key, param in holder.named_parameters():
                # lora_B's bias (PEFT's lora_bias=True: "<adapter>.bias") is a vector.
                _assign(roles, param, Role.VECTOR if key.endswith(".bias") else role)
    return roles, layers


def _saved(model: nn.Module) -> set[int]:
    """id(param) of the tensors of PEFT's `modules_to_save` copies (a new classifier head)."""
    try:
        from peft.utils.other import ModulesToSaveWrapper
    except ImportError:  # pragma: no cover - peft is a dependency
        return set()
    return {
        id(p)
        for m in model.modules()
        if isinstance(m, ModulesToSaveWrapper)
        for p in m.modules_to_save.parameters()
    }


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


def _fallback_role(
    model: nn.Module,
    raw: str,
    param: nn.Parameter,
    compiled: dict[Role, list[re.Pattern[str]]],
    saved: set[int],
) -> Role:
    """The role of a tensor no PEFT layer holds: its name against the patterns, then its module
    (a matrix of a `modules_to_save` copy is a head)."""
    name = canonical_name(raw)
    path, _, local = raw.rpartition(".")
    owner = model.get_submodule(path)
    hits = [r for r, ps in compiled.items() if any(p.search(name) for p in ps)]
    if len(set(hits)) > 1:
        raise ValueError(
            f"Parameter {name!r} of {type(model).__name__} matches the patterns of several roles "
            f"({', '.join(str(h) for h in hits)}). Pass patterns= that match it once, e.g. "
            "patterns={'lora_A': r'\\.down\\.'}."
        )
    if not hits:
        if not _is_matrix(owner, local, param):
            return Role.VECTOR
        return Role.HEAD if id(param) in saved else Role.OTHER
    if hits[0] in _MATRIX_ROLES and not _is_matrix(owner, local, param):
        return Role.VECTOR
    return hits[0]


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
    saved = _saved(inner)
    roles: dict[str, Role] = {}
    for raw, param in inner.named_parameters():
        if param.requires_grad:
            name = canonical_name(raw)
            role = by_id.get(id(param))
            if role is None:
                role = _fallback_role(inner, raw, param, compiled, saved)
            roles[name] = role
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


def _input_width(owner: nn.Module, parent: nn.Module, param: nn.Parameter) -> int | None:
    """A matrix's fan-in from its module: a Linear's in_features, a Conv's in_channels x kernel."""
    # PEFT holds some adapters (AdaLoRA's) as bare tensors in a ParameterDict of the LoRA layer.
    for module in (owner, parent) if isinstance(owner, nn.ParameterDict) else (owner,):
        if isinstance(module, _ConvNd):
            return module.in_channels // module.groups * math.prod(module.kernel_size)
        width = getattr(module, "in_features", None)
        if isinstance(width, int):
            return width
    shape = full_shape(param)
    return math.prod(shape[1:]) if len(shape) >= 2 else None


def lora_fan_ins(model: nn.Module, roles: Mapping[str, Role]) -> dict[str, int]:
    """{name: fan-in n} of each lora_A tensor in `roles` (from classify), read from its module.

    The module's width, not the tensor's current shape: FSDP1 shards a matrix into 1-D views.
    """
    inner = unwrap(model)
    modules = dict(inner.named_modules())
    widths: dict[str, int] = {}
    for raw, param in inner.named_parameters():
        name = canonical_name(raw)
        if roles.get(name) is not Role.LORA_A:
            continue
        path = raw.rpartition(".")[0]
        owner = modules[path]
        width = _input_width(owner, modules[path.rpartition(".")[0]], param)
        if width is None:
            raise ValueError(
                f"Cannot tell the input width of the lora_A tensor {name!r}: its module "
                f"{type(owner).__name__} has no in_features and its shape {full_shape(param)} "
                "is not a matrix. Give the module an int attribute in_features, or pass "
                "width_aware=False."
            )
        widths[name] = width
    return widths
