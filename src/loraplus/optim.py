"""Build the LoRA+ optimizer: any torch optimizer over the role param groups, plus summary().

Also the drop-in `create_loraplus_optimizer` with peft.optimizers' signature, fixed where PEFT's
behaviour is a defect (dropped weight_decay, a head's weight and bias at different rates).
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from loraplus.autoratio import attach_auto_ratio, controller
from loraplus.groups import POLICY, param_groups, role_lrs
from loraplus.init import init_lora_
from loraplus.roles import Role, as_role, classify, full_numel, trainable_parameters
from loraplus.settings import (
    LoraPlusSettings,
    absolute_roles,
    as_float,
    as_settings,
    split_settings,
)

# name -> (module, attribute, pip package that provides it)
OPTIMIZERS: dict[str, tuple[str, str, str]] = {
    "adamw": ("torch.optim", "AdamW", "torch"),
    "adam": ("torch.optim", "Adam", "torch"),
    "sgd": ("torch.optim", "SGD", "torch"),
    "rmsprop": ("torch.optim", "RMSprop", "torch"),
    "adagrad": ("torch.optim", "Adagrad", "torch"),
    "adafactor": ("transformers.optimization", "Adafactor", "transformers"),
    "adamw_8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "adam_8bit": ("bitsandbytes.optim", "Adam8bit", "bitsandbytes"),
    "paged_adamw_8bit": ("bitsandbytes.optim", "PagedAdamW8bit", "bitsandbytes"),
    "paged_adamw_32bit": ("bitsandbytes.optim", "PagedAdamW32bit", "bitsandbytes"),
    "lion_8bit": ("bitsandbytes.optim", "Lion8bit", "bitsandbytes"),
}

# Default hyperparameters that break per-group learning rates, by optimizer family.
_SINGLE_LR_MARKERS = ({"d0", "d_coef"}, {"d", "growth_rate"})

# transformers' Adafactor (and any optimizer taking these flags) steps at its own lr only with
# all three off: relative_step derives the step from the step count instead of the group's lr,
# and scale_parameter multiplies it by max(1e-3, RMS(p)), so a lora_B that starts at 0 moves at
# about 1e-3 · lr_B, slower than A: LoRA+ inverted. (The Trainer's optim="adafactor" sets the
# first two off too.)
_PER_GROUP_LR_FLAGS = {"relative_step": False, "scale_parameter": False, "warmup_init": False}


def resolve_optimizer(optimizer: str | type[Optimizer]) -> type[Optimizer]:
    """An optimizer class from a class or a name such as "adamw" or "adamw_8bit"."""
    if isinstance(optimizer, type):
        if not issubclass(optimizer, Optimizer):
            raise ValueError(f"{optimizer.__name__} is not a torch.optim.Optimizer subclass.")
        return optimizer
    key = str(optimizer).lower().replace("-", "_")
    if key not in OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}, "
            "or pass the optimizer class itself."
        )
    module, attr, package = OPTIMIZERS[key]
    try:
        cls: type[Optimizer] = getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise ImportError(
            f"Optimizer {optimizer!r} needs the {package} package: pip install {package}"
        ) from err
    return cls


def _coerce_kwargs(cls: type[Optimizer], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers written as strings become floats where the optimizer's default is a number."""
    try:
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
    except (TypeError, ValueError):
        defaults = {}
    out = dict(kwargs)
    for key, value in kwargs.items():
        default = defaults.get(key)
        if (
            isinstance(value, str)
            and isinstance(default, (int, float))
            and not isinstance(default, bool)
        ):
            out[key] = as_float(value, key, positive=False)
        elif isinstance(value, (list, tuple)) and isinstance(default, tuple):
            out[key] = tuple(as_float(v, key, positive=False) for v in value)
    return out


def _per_group_lr_flags(cls: type[Optimizer], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """kwargs with Adafactor's relative step and parameter scaling off (refused if turned on),
    so each param group steps at its own lr."""
    try:
        accepted = set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return dict(kwargs)
    if not set(_PER_GROUP_LR_FLAGS) <= accepted:
        return dict(kwargs)
    on = [k for k in _PER_GROUP_LR_FLAGS if kwargs.get(k)]
    if on:
        raise ValueError(
            f"{cls.__name__} with {', '.join(f'{k}=True' for k in on)} ignores each param "
            "group's lr (relative_step derives the step from the step count; scale_parameter "
            "scales it by the tensor's RMS, so a lora_B that starts at 0 barely moves), which "
            f"undoes LoRA+. Drop {', '.join(on)}: loraplus runs {cls.__name__} with "
            "relative_step=False, scale_parameter=False, warmup_init=False and your lr."
        )
    return {**kwargs, **_PER_GROUP_LR_FLAGS}


def _refuse_single_lr(optimizer: Optimizer) -> None:
    keys = set(optimizer.defaults)
    if any(marker <= keys for marker in _SINGLE_LR_MARKERS):
        name = type(optimizer).__name__
        raise ValueError(
            f"{name} adapts one step size for all param groups (it reads the first group, or "
            "the largest lr), so LoRA+'s per-role learning rates would be ignored or rejected "
            "mid-training. Use an optimizer with per-group lr (adamw, adam, sgd, adamw_8bit), "
            "or train plain LoRA with ratio=1."
        )
    torch_adafactor = getattr(torch.optim, "Adafactor", None)  # torch >= 2.5
    if torch_adafactor is not None and isinstance(optimizer, torch_adafactor):
        raise ValueError(
            "torch.optim.Adafactor scales every step by the tensor's RMS (max(1e-3, RMS(p)) · "
            "lr), so a lora_B that starts at 0 moves about 1000x slower than lr_B and LoRA+ is "
            'inverted. Use "adafactor" (transformers\' Adafactor, which loraplus runs with '
            'relative_step=False and scale_parameter=False) or "adamw".'
        )


def _is_8bit(optimizer: Optimizer) -> bool:
    """True for a bitsandbytes optimizer that will keep 8-bit state, whatever its class name."""
    try:
        from bitsandbytes.optim.optimizer import Optimizer8bit
    except ImportError:
        return False
    args = getattr(optimizer, "args", None)
    return isinstance(optimizer, Optimizer8bit) and getattr(args, "optim_bits", 32) == 8


def _keep_embeddings_32bit(optimizer: Optimizer, model: nn.Module) -> list[torch.Tensor]:
    """Ask bitsandbytes for 32-bit state on embedding tensors (8-bit state is unstable there)."""
    if not _is_8bit(optimizer):
        return []
    from bitsandbytes.optim import GlobalOptimManager

    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    targets: dict[int, torch.Tensor] = {}
    embedding_roles = {Role.EMBEDDING_A.value, Role.EMBEDDING_B.value}
    for group in optimizer.param_groups:
        if embedding_roles & set(str(group.get("role")).split("+")):
            targets.update((id(p), p) for p in group["params"])
    for module in model.modules():
        if isinstance(module, nn.Embedding) and id(module.weight) in in_groups:
            targets[id(module.weight)] = module.weight
    if targets:
        GlobalOptimManager.get_instance().override_config(
            list(targets.values()), key_value_dict={"optim_bits": 32}
        )
    return list(targets.values())


def create_optimizer(
    model: nn.Module,
    optimizer_cls: str | type[Optimizer] = "adamw",
    settings: LoraPlusSettings | None = None,
    *,
    weight_decay: float | str = 0.0,
    patterns: Mapping[Role | str, str | Sequence[str]] | None = None,
    **kwargs: Any,
) -> Optimizer:
    """The LoRA+ optimizer for `model`: lr for A, ratio * lr for B, one group per role.

    The LoRA+ settings come as a LoraPlusSettings, as its fields given as keywords
    (`lr=2e-4, ratio=16, width_aware=True, ...`), or both (keywords win); every other keyword
    goes to the optimizer. `init="init2"` re-initializes the adapters first (init_lora_).
    `width_aware=True` sets each lora_A's lr from its fan-in n: lr · n_ref / n (param_groups).
    `lr_roles={"other": 1e-3}` sets a role's lr absolutely (param_groups).
    `ratio="auto"` builds it at `auto_ratio.start` and attaches loraplus.autoratio's controller.
    """
    s = as_settings(settings, **split_settings(kwargs))
    cls = resolve_optimizer(optimizer_cls)
    fixed = replace(s, ratio=s.start_ratio, auto_ratio=None)
    groups = param_groups(model, fixed, weight_decay=weight_decay, patterns=patterns)
    optimizer = _build(model, cls, groups, s.lr, kwargs)
    if s.init is not None:  # once every check has passed: a refused call leaves the model as is
        init_lora_(model, s.init)
    if s.auto_config is not None:  # LoRA+ at the start ratio, then the controller on its hooks
        attach_auto_ratio(optimizer, model, s.auto_config)
    return optimizer


def _build(
    model: nn.Module,
    cls: type[Optimizer],
    groups: list[dict[str, Any]],
    lr: float | str,
    optimizer_kwargs: Mapping[str, Any],
) -> Optimizer:
    """`cls` over `groups`; refused if it ignores per-group lrs; embeddings keep 32-bit state."""
    kwargs = _per_group_lr_flags(cls, _coerce_kwargs(cls, optimizer_kwargs))
    kwargs.pop("lr", None)
    kwargs.pop("weight_decay", None)
    build: Any = cls
    optimizer: Optimizer = build(groups, lr=as_float(lr, "lr"), **kwargs)
    _refuse_single_lr(optimizer)
    _keep_embeddings_32bit(optimizer, model)
    return optimizer


# peft.optimizers.create_loraplus_optimizer's four groups, in its order, and the roles each holds.
# Keeping that count and order in state_dict() (empty groups included, _drop_empty_groups) lets
# an optimizer state saved with PEFT's builder load into ours, and back, wherever both put a
# tensor in the same group (README: "saved optimizer state").
_PEFT_LAYOUT: tuple[tuple[Role, ...], ...] = (
    (Role.LORA_A, Role.HEAD, Role.OTHER),  # groupA: lr (PEFT's rule for every other matrix)
    (Role.EMBEDDING_A, Role.EMBEDDING_B),  # embedding: loraplus_lr_embedding
    (Role.LORA_B, Role.TOKENS),  # groupB: ratio · lr, decayed
    (Role.VECTOR, Role.MAGNITUDE, Role.SINGULAR),  # groupB_no_decay: ratio · lr
)


def _peft_layout(
    groups: list[dict[str, Any]], model: nn.Module, lrs: Mapping[Role, float], weight_decay: float
) -> list[dict[str, Any]]:
    """The role groups merged into PEFT's four (role "lora_A+other", ...), in model order."""
    order = {id(p): i for i, (_, p) in enumerate(trainable_parameters(model))}
    by_role = {g["role"]: g for g in groups}
    merged = []
    for slot in _PEFT_LAYOUT:
        parts = [by_role[r.value] for r in slot if r.value in by_role]
        settings = {(g["lr"], g["weight_decay"]) for g in parts}
        if len(settings) > 1:
            raise ValueError(
                f"PEFT's optimizer layout puts {' and '.join(g['role'] for g in parts)} in one "
                "group, but lr_multipliers or lr_roles give them different learning rates. Use "
                "loraplus.create_optimizer, which keeps one group per role."
            )
        default = (lrs[slot[0]], weight_decay if POLICY[slot[0]].decay else 0.0)
        lr, wd = settings.pop() if settings else default
        named = sorted(
            (pair for g in parts for pair in zip(g["param_names"], g["params"], strict=True)),
            key=lambda pair: order[id(pair[1])],
        )
        merged.append(
            {
                "params": [p for _, p in named],
                "param_names": [n for n, _ in named],
                "role": "+".join(g["role"] for g in parts) or slot[0].value,
                "lr": lr,
                "weight_decay": wd,
            }
        )
    return merged


def _tensor_ids(optimizer: Optimizer) -> list[tuple[int, ...]]:
    return [tuple(id(p) for p in g["params"]) for g in optimizer.param_groups]


def _drop_empty_groups(optimizer: Optimizer) -> None:
    """Remove PEFT's layout's empty groups, which DeepSpeed drops behind an LR scheduler's back
    (torch's schedulers then fail on the group count), yet keep them in state_dict(): states
    saved by PEFT's builder load here and this optimizer's load into PEFT's. Once DeepSpeed has
    swapped in its own partitions, state dicts pass unchanged (DeepSpeed saves its own)."""
    groups = optimizer.param_groups
    empty = {
        i: {k: v for k, v in g.items() if k != "params"}
        for i, g in enumerate(groups)
        if not g["params"]
    }
    if not empty:
        return
    total = len(groups)
    groups[:] = [g for g in groups if g["params"]]
    built = _tensor_ids(optimizer)

    def with_empty(opt: Optimizer, state: dict[str, Any]) -> dict[str, Any] | None:
        if _tensor_ids(opt) != built:
            return None
        kept = iter(state["param_groups"])
        slots = (({**empty[i], "params": []} if i in empty else next(kept)) for i in range(total))
        return {**state, "param_groups": list(slots)}

    def without_empty(opt: Optimizer, state: dict[str, Any]) -> dict[str, Any] | None:
        saved = state["param_groups"]
        if (
            _tensor_ids(opt) != built
            or len(saved) != total
            or any(saved[i]["params"] for i in empty)
        ):
            return None  # not this layout: torch's own checks report the mismatch
        return {**state, "param_groups": [g for i, g in enumerate(saved) if i not in empty]}

    optimizer.register_state_dict_post_hook(with_empty)
    optimizer.register_load_state_dict_pre_hook(without_empty)


def create_loraplus_optimizer(
    model: nn.Module,
    optimizer_cls: str | type[Optimizer],
    *,
    lr: float | str,
    loraplus_lr_ratio: float | str,
    **kwargs: Any,
) -> Optimizer:
    """Drop-in for peft.optimizers.create_loraplus_optimizer, with its keyword names.

    Kept from PEFT: `loraplus_lr_embedding` defaults to 1e-6, a saved head's matrix trains at lr
    (role head, which create_optimizer gives ratio * lr), and the four groups in PEFT's order in
    state_dict(), so saved optimizer states load either way; the empty ones are left out of
    param_groups (DeepSpeed drops them under a scheduler's feet). Fixed: `weight_decay` (or PEFT's
    `loraplus_weight_decay`) applies to every decaying group, and a saved head's weight and bias
    follow the LoRA+ policy instead of being split by name.
    """
    if kwargs.pop("width_aware", False):
        raise ValueError(
            "width_aware=True makes one lora_A group per fan-in, which PEFT's four groups cannot "
            "hold. Use loraplus.create_optimizer(..., width_aware=True)."
        )
    explicit_embedding = "loraplus_lr_embedding" in kwargs
    lr_embedding = kwargs.pop("loraplus_lr_embedding", 1e-6)
    wd = kwargs.pop("weight_decay", None)
    loraplus_wd = kwargs.pop("loraplus_weight_decay", None)
    if wd is not None and loraplus_wd is not None:
        a = as_float(wd, "weight_decay", allow_zero=True)
        b = as_float(loraplus_wd, "loraplus_weight_decay", allow_zero=True)
        if a != b:
            raise ValueError(
                f"weight_decay={wd!r} and loraplus_weight_decay={loraplus_wd!r} disagree; "
                "pass only one of them."
            )
    chosen = wd if wd is not None else (loraplus_wd if loraplus_wd is not None else 0.0)
    cls = resolve_optimizer(optimizer_cls)
    multipliers = kwargs.pop("lr_multipliers", None)
    absolute = kwargs.pop("lr_roles", None)
    given = {as_role(k) for k in (*(multipliers or {}), *(absolute or {}))}
    if Role.HEAD not in given:  # PEFT's rule: a saved head trains at lr, like lora_A
        multipliers = {**(multipliers or {}), Role.HEAD: 1.0}
    s = as_settings(
        lr=lr,
        ratio=loraplus_lr_ratio,
        lr_embedding=lr_embedding,
        lr_multipliers=multipliers,
        lr_roles=absolute,
    )
    if s.ratio == "auto":
        raise ValueError(
            "loraplus_lr_ratio='auto' needs its controller, which PEFT's four groups cannot "
            "hold. Use loraplus.create_optimizer(..., ratio='auto')."
        )
    groups = param_groups(model, s, weight_decay=chosen, patterns=kwargs.pop("patterns", None))
    lrs = role_lrs(s.lr, s.start_ratio, s.lr_embedding, s.lr_multipliers, s.lr_roles)
    decay = as_float(chosen, "weight_decay", allow_zero=True)
    optimizer = _build(model, cls, _peft_layout(groups, model, lrs, decay), lr, kwargs)
    _drop_empty_groups(optimizer)
    embedding_roles = (Role.EMBEDDING_A.value, Role.EMBEDDING_B.value)
    if not explicit_embedding and any(g["role"] in embedding_roles for g in groups):
        warnings.warn(
            "Embedding LoRA adapters get loraplus_lr_embedding=1e-6 (PEFT's default), which all "
            "but freezes them. Pass loraplus_lr_embedding=... or use loraplus.create_optimizer, "
            "whose default trains them at ratio * lr.",
            stacklevel=2,
        )
    return optimizer


def group_sizes(optimizer: Optimizer, model: nn.Module | None = None) -> list[tuple[int, int]]:
    """(tensors, parameters) of each param group, at full size wherever DeepSpeed runs it.

    ZeRO-3's partitioned tensors count by `ds_numel`. DeepSpeed replaces a group's tensors by
    its flat fp32 partition (ZeRO-1/2) or empties the list between steps (ZeRO-3), so with
    `model` a group's `param_names` are counted on the model's own tensors instead.
    """
    named = dict(trainable_parameters(model)) if model is not None else {}
    sizes = []
    for group in optimizer.param_groups:
        names = group.get("param_names") or []
        found = bool(named) and bool(names) and all(n in named for n in names)
        tensors = [named[n] for n in names] if found else list(group["params"])
        sizes.append((len(tensors), sum(full_numel(p) for p in tensors)))
    return sizes


def summary(optimizer: Optimizer, model: nn.Module | None = None) -> str:
    """A text table of the optimizer's groups: role, (fan-in,) tensors, parameters, lr, decay.

    Pass `model` under DeepSpeed, whose groups hold partitions (group_sizes). Once a scheduler
    has moved the lrs (after or during training), "lr" is each group's lr as built (the
    scheduler's `initial_lr`) and a column "lr now" the current one, with a line saying so;
    when every lr is 0 the line says the schedule has ended."""
    groups = optimizer.param_groups
    width_aware = any("fan_in" in g for g in groups)
    moved = any(not math.isclose(g["lr"], g.get("initial_lr", g["lr"])) for g in groups)
    rows: list[tuple[str, ...]] = [
        ("role", "fan-in", "tensors", "parameters", "lr", "lr now", "weight decay")
    ]
    sizes = group_sizes(optimizer, model)
    for i, group in enumerate(groups):
        fan_in = group.get("fan_in")
        tensors, parameters = sizes[i]
        rows.append(
            (
                str(group.get("role", f"group {i}")),
                "-" if fan_in is None else str(fan_in),
                str(tensors),
                f"{parameters:,}",
                f"{group.get('initial_lr', group['lr']):.3g}",
                f"{group['lr']:.3g}",
                f"{group.get('weight_decay', 0.0):.3g}",
            )
        )
    drop = {1} if not width_aware else set()
    drop |= set() if moved else {5}
    rows = [tuple(cell for c, cell in enumerate(row) if c not in drop) for row in rows]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    if moved:
        ended = all(g["lr"] == 0 for g in groups)
        lines.append(
            "lr now is 0: the lr schedule has ended (lr: each group's lr before the schedule)"
            if ended
            else "lr now: the lr scheduler's current value (lr: each group's lr before it)"
        )
    auto = controller(optimizer)
    lines += auto.ratio_lines() if auto is not None else []  # ratio="auto": the ratios chosen
    return "\n".join(lines)


def with_role_lrs(
    optimizer: Optimizer,
    model: nn.Module,
    lr_roles: Mapping[Role | str, float],
    patterns: Mapping[Role | str, str | Sequence[str]] | None = None,
) -> Optimizer:
    """Move the params of each role in `lr_roles` into a group of its own at that absolute lr.

    For optimizers built elsewhere (peft's LoRA-FA and Riemannian builders put every param in
    one group at one lr), e.g. so that a new classifier head trains at the same lr under every
    method. Per-param lists of a group (LoRA-FA's names, scaling_factors) are split alongside.
    Call it before the first step: the moved params must have no optimizer state yet.
    """
    absolute = absolute_roles(lr_roles)
    if not absolute:
        return optimizer
    if optimizer.state:
        raise ValueError("with_role_lrs moves params between groups: call it before any step.")
    roles = classify(model, patterns)
    role_of = {id(p): roles[n] for n, p in trainable_parameters(model)}
    kept_groups, moved_groups = [], []
    for group in optimizer.param_groups:
        params = list(group["params"])
        lists = [k for k, v in group.items() if isinstance(v, list) and len(v) == len(params)]
        by_role: dict[Role | None, list[int]] = {}
        for i, p in enumerate(params):
            role = role_of.get(id(p))
            by_role.setdefault(role if role in absolute else None, []).append(i)
        for role, index in by_role.items():
            part = {
                k: ([group[k][i] for i in index] if k in lists else v) for k, v in group.items()
            }
            if role is None:
                kept_groups.append(part)
            else:
                part.update(lr=absolute[role], role=role.value)
                part.pop("initial_lr", None)
                moved_groups.append(part)
    merged: dict[str, dict[str, Any]] = {}
    for part in moved_groups:  # one group per role, whatever group its params came from
        name = str(part["role"])
        if name in merged:
            for k, v in part.items():
                if isinstance(v, list) and k in merged[name]:
                    merged[name][k] = merged[name][k] + v
        else:
            merged[name] = part
    optimizer.param_groups[:] = [g for g in kept_groups if g["params"]] + list(merged.values())
    return optimizer
