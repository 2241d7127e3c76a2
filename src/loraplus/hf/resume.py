"""Resuming with changed LoRA+ settings: compare the checkpoint's groups and apply this run's."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

OPTIMIZER_FILE = "optimizer.pt"


def read_checkpoint_param_groups(checkpoint: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The param groups (without state) saved in `checkpoint`/optimizer.pt."""
    state = torch.load(Path(checkpoint) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    return [dict(g) for g in state["param_groups"]]


def _base_lr(group: Mapping[str, Any]) -> float:
    """A group's unscheduled lr: the scheduler's `initial_lr` when it has one."""
    return float(group.get("initial_lr", group["lr"]))


def _fmt_ratio(groups: Sequence[Mapping[str, Any]]) -> str:
    lrs = {g.get("role"): _base_lr(g) for g in groups}
    a, b = lrs.get("lora_A"), lrs.get("lora_B")
    return f"ratio {b / a:g}" if a and b is not None else "ratio ?"


def compare_param_groups(
    saved: Sequence[Mapping[str, Any]], built: Sequence[Mapping[str, Any]]
) -> list[str]:
    """What differs between a checkpoint's param groups and this run's: one line per change.

    Compares each role's base lr (`initial_lr`) and weight decay. Raises a ValueError when the
    groups are not the same roles in the same order, since the saved state would then be
    attached to the wrong tensors.
    """
    saved_roles = [g.get("role") for g in saved]
    built_roles = [g.get("role") for g in built]
    if saved_roles != built_roles:
        origin = (
            "was not written by LoRA+ (its groups have no role)"
            if all(r is None for r in saved_roles)
            else "has different LoRA+ groups"
        )
        raise ValueError(
            f"The checkpoint's optimizer {origin}: saved groups {saved_roles}, this run "
            f"built {built_roles} (the trainable tensors or their roles changed). Resume with "
            f"the same model and adapter set-up, or restart the optimizer state by deleting "
            f"{OPTIMIZER_FILE} and scheduler.pt from the checkpoint folder."
        )
    changes = []
    for old, new in zip(saved, built, strict=True):
        role = new.get("role")
        old_lr, new_lr = _base_lr(old), _base_lr(new)
        if not math.isclose(old_lr, new_lr, rel_tol=1e-9, abs_tol=0.0):
            changes.append(f"{role}: lr {old_lr:g} -> {new_lr:g}")
        old_wd, new_wd = float(old.get("weight_decay", 0.0)), float(new.get("weight_decay", 0.0))
        if not math.isclose(old_wd, new_wd, rel_tol=1e-9, abs_tol=0.0):
            changes.append(f"{role}: weight decay {old_wd:g} -> {new_wd:g}")
    if changes:
        changes.insert(0, f"{_fmt_ratio(saved)} -> {_fmt_ratio(built)}")
    return changes


def _apply_new_hyperparameters(
    optimizer: Any, scheduler: Any, built: Sequence[Mapping[str, Any]]
) -> None:
    """Put this run's base lrs and weight decays back after a checkpoint load, schedule kept.

    The scheduler gets the new lrs through its public state round trip (`state_dict()`, edited,
    `load_state_dict()`: the way a checkpoint restores it; torch documents the state as the
    scheduler's attributes), so that `base_lrs` drive its next steps and `get_last_lr()` says
    at once what the groups now use. torch has no setter for the last lrs: only `step()` sets
    them, and it would advance the schedule.
    """
    sched = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
    lambdas = getattr(sched, "lr_lambdas", None)
    last_epoch = getattr(sched, "last_epoch", None)
    for i, (group, new) in enumerate(zip(optimizer.param_groups, built, strict=True)):
        old_base, new_base = _base_lr(group), _base_lr(new)
        if lambdas is not None and last_epoch is not None:
            group["lr"] = new_base * lambdas[i](last_epoch)
        elif old_base > 0:
            group["lr"] = float(group["lr"]) * new_base / old_base
        else:
            group["lr"] = new_base
        if "initial_lr" in group:
            group["initial_lr"] = new_base
        group["weight_decay"] = new.get("weight_decay", group.get("weight_decay", 0.0))
    if sched is not None and hasattr(sched, "state_dict"):
        state = sched.state_dict()
        if "base_lrs" in state:
            state["base_lrs"] = [_base_lr(g) for g in built]
        if "_last_lr" in state:
            state["_last_lr"] = [g["lr"] for g in optimizer.param_groups]
        sched.load_state_dict(state)
