"""The real update wherever the optimizer steps: plain, DDP, FSDP2 (DTensor) or DeepSpeed ZeRO.

Auto's controller and the δ probe watch an optimizer step through torch's step hooks on the
innermost torch optimizer (the one Accelerate's and DeepSpeed's wrappers step). DeepSpeed steps
that optimizer once per param group on its own fp32 partitions and copies them into the model's
tensors afterwards, so values are read from the fp32 masters (`deepspeed.utils.safe_get_full_*`),
and `stepped_roles` says which roles a hook call is about. Every reader of full values is a
collective under ZeRO and FSDP2: every rank calls it, in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

LORA_ROLES = frozenset({"lora_A", "lora_B"})


def innermost_optimizer(optimizer: Any) -> Any:
    """The optimizer under any depth of wrappers (Accelerate, DeepSpeed): what really steps."""
    seen = set()
    while getattr(optimizer, "optimizer", None) is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    return optimizer


def is_deepspeed(p: torch.Tensor) -> bool:
    """True for a tensor whose fp32 master DeepSpeed steps (ZeRO-1/2/3, its bf16 optimizer)."""
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def _is_dtensor(p: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


@torch.no_grad()
def full_value(p: torch.Tensor) -> torch.Tensor:
    """A float32 copy of the whole tensor: DeepSpeed's fp32 master, an FSDP2 DTensor gathered."""
    if is_deepspeed(p):
        from deepspeed.utils import safe_get_full_fp32_param

        value: torch.Tensor | None = safe_get_full_fp32_param(p)
        if value is not None:
            return value.detach().float().clone()
    if _is_dtensor(p):
        full: torch.Tensor = p.full_tensor()  # type: ignore[attr-defined]
        return full.detach().float()
    return p.detach().float().clone()


def local_master(p: torch.Tensor) -> torch.Tensor | None:
    """The part of `p` this rank's optimizer updates, as a view (None: no part on this rank).

    DeepSpeed: the fp32 fragment of the master weights (ZeRO-1/2 and 3); FSDP2: the local shard;
    otherwise the tensor itself. Writing into the view changes what the next forward sees.
    """
    if hasattr(p, "ds_id"):
        from deepspeed.utils import safe_get_local_fp32_param

        local = safe_get_local_fp32_param(p)
        return None if local is None or local.numel() == 0 else local
    if hasattr(p, "_hp_mapping"):
        mapping = p._hp_mapping
        return None if mapping is None else mapping.get_hp_fragment()
    if _is_dtensor(p):
        shard: torch.Tensor = p.to_local()  # type: ignore[attr-defined]
        return shard.detach()
    return p.detach()


def set_local_master(p: torch.Tensor, view: torch.Tensor, value: torch.Tensor) -> None:
    """Write `value` into the view local_master(p) returned (ZeRO-3 through DeepSpeed's setter)."""
    if hasattr(p, "ds_id"):
        from deepspeed.utils import safe_set_local_fp32_param

        safe_set_local_fp32_param(p, value)
    else:
        view.copy_(value)


def stepped_roles(optimizer: Any) -> set[str]:
    """The roles of the param groups this step call updates (DeepSpeed steps one group at a time).

    ZeRO-1/2 leave only the group being stepped in `param_groups`, ZeRO-3 empties the others'
    params; a plain step updates every group. Groups without a role count as every LoRA role.
    """
    roles: set[str] = set()
    for group in optimizer.param_groups:
        if not group["params"]:
            continue
        role = group.get("role")
        roles |= set(LORA_ROLES) if role is None else set(str(role).split("+"))
    return roles


def check_whole_groups(roles: set[str], done: set[str], what: str) -> None:
    """Raise if a LoRA role's group is stepped again before the step ends (stepped in pieces)."""
    again = sorted(roles & done & LORA_ROLES)
    if again:
        raise RuntimeError(
            f"{what} needs each param group stepped whole, but the {', '.join(again)} group was "
            "stepped in pieces (DeepSpeed ZeRO-3 with a zero_optimization.sub_group_size smaller "
            "than the group). Raise sub_group_size above the LoRA parameter count (its default, "
            "1e9, is), or train without it."
        )


def world_size() -> int:
    """Processes in the default process group (1 when none is initialized)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over every rank (in place; `t` itself when not distributed)."""
    import torch.distributed as dist

    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def refuse_fsdp1(model: nn.Module, what: str) -> None:
    """Raise for FSDP1: its 1-D flat shards of a LoRA matrix have no public full-value reader."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise ValueError(
            f"{what} cannot read whole LoRA matrices under FSDP1 (FullyShardedDataParallel keeps "
            "each as a 1-D piece of a flat shard). Shard with FSDP2 (torch.distributed.fsdp."
            "fully_shard), DeepSpeed or DDP, or train without it."
        )
