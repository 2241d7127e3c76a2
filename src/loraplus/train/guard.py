"""Divergence guard and collapse check: a run that blew up or learned nothing says so.

A logged train loss, eval loss or gradient norm that is NaN/inf, or a loss above `factor` times
the first logged train loss (step 1's, the untrained model's), stops training at once (no further
eval, no checkpoint of the bad weights). Trainable
weights are checked for NaN/inf before every checkpoint and before the final save.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from loraplus.hf.callbacks import role_learning_rates


@dataclass
class Divergence:
    """Where and why a run diverged, with every group's lr and the fix: one line for the user."""

    step: int
    reason: str
    lrs: dict[str, float]

    def message(self) -> str:
        """One line: the step, the cause, every group's lr and the likely fix."""
        lrs = ", ".join(f"{k.removeprefix('lr/')} {v:.3g}" for k, v in self.lrs.items())
        fix = "lower --lr or --ratio"
        if "first logged loss" in self.reason:
            fix += " (or raise --divergence-factor if such a rise is expected)"
        return f"diverged at step {self.step}: {self.reason} (lr {lrs}); {fix}"


def loss_problem(loss: float, grad_norm: float | None, first: float, factor: float) -> str | None:
    """Why a logged loss / gradient norm means divergence, or None when it looks sane."""
    if not math.isfinite(loss):
        return f"the training loss is {loss}"
    if grad_norm is not None and not math.isfinite(grad_norm):
        return f"the gradient norm is {grad_norm}"
    if math.isfinite(first) and first > 0 and loss > factor * first:
        return (
            f"the training loss {loss:.4g} is above {factor:g} x the first logged loss {first:.4g}"
        )
    return None


def nonfinite_weights(model: torch.nn.Module) -> list[str]:
    """Names of trainable tensors holding NaN or inf."""
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and not bool(torch.isfinite(p.detach()).all())
    ]


class DivergenceGuard(TrainerCallback):
    """Stops training on a non-finite or exploding loss; `diverged` says where and why."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.diverged: Divergence | None = None

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, float] | None = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """Check a train log (loss, grad_norm) against the bound."""
        if not logs or "loss" not in logs or self.diverged is not None:
            return
        first = next(float(e["loss"]) for e in state.log_history if "loss" in e)
        grad_norm = logs.get("grad_norm")
        problem = loss_problem(
            float(logs["loss"]), None if grad_norm is None else float(grad_norm), first, self.factor
        )
        if problem is not None:
            self.stop(state.global_step, problem, _used_lrs(logs, optimizer), control)

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, float] | None = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """Check the eval loss against the same bound (a blow-up between two train logs)."""
        loss = (metrics or {}).get("eval_loss")
        firsts = [float(e["loss"]) for e in state.log_history if "loss" in e]
        if loss is None or not firsts or self.diverged is not None:
            return
        problem = loss_problem(float(loss), None, firsts[0], self.factor)
        if problem is not None:
            problem = problem.replace("the training loss", "the eval loss")
            self.stop(state.global_step, problem, _used_lrs(_last_lrs(state), optimizer), control)

    def check_weights(self, model: torch.nn.Module, state: Any, optimizer: Any) -> bool:
        """True when every trainable weight is finite; otherwise record the divergence."""
        bad = nonfinite_weights(model)
        if bad and self.diverged is None:
            reason = f"{len(bad)} trainable tensors hold NaN/inf (first: {bad[0]})"
            lrs = _used_lrs(_last_lrs(state), optimizer)
            self.diverged = Divergence(state.global_step, reason, lrs)
        return not bad

    def stop(self, step: int, reason: str, lrs: dict[str, float], control: Any) -> None:
        """Record the divergence and stop: no eval and no checkpoint of these weights."""
        self.diverged = Divergence(step, reason, lrs)
        control.should_training_stop = True
        control.should_evaluate = False
        control.should_save = False


def _last_lrs(state: Any) -> dict[str, float]:
    """The per-role lrs of the latest log_history entry that has them (the last used ones)."""
    for entry in reversed(state.log_history):
        lrs = {k: float(v) for k, v in entry.items() if k.startswith("lr/")}
        if lrs:
            return lrs
    return {}


def _used_lrs(logs: Mapping[str, Any], optimizer: Any) -> dict[str, float]:
    """The per-role lrs of the logged step (LoraPlusLogCallback put them in logs), else current."""
    lrs = {k: float(v) for k, v in logs.items() if k.startswith("lr/")}
    if lrs or optimizer is None:
        return lrs
    return role_learning_rates(optimizer)


def collapse_warning(final: Mapping[str, Any], num_labels: int, eval_labels: int) -> str | None:
    """A warning when a classifier predicts one class for all eval rows, or its eval loss is
    within 1% of ln K (what a model that learned nothing scores on balanced classes)."""
    if num_labels < 2:
        return None
    ln_k = math.log(num_labels)
    classes = final.get("eval_predicted_classes")
    loss = final.get("eval_loss")
    if isinstance(classes, (int, float)) and classes <= 1 and eval_labels > 1:
        what = "predicts one class for every eval example"
    elif isinstance(loss, float) and abs(loss - ln_k) <= 0.01 * ln_k:
        what = f"has eval loss {loss:.4f}, within 1% of ln {num_labels} = {ln_k:.4f}"
    else:
        return None
    return (
        f"the model collapsed: it {what}, so it learned nothing beyond chance; try a lower "
        "--lr or --ratio, or more steps"
    )
