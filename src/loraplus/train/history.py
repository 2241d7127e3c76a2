"""A run's history, read from the Trainer's own `state.log_history` (which a checkpoint keeps).

One row per evaluation: step, eval metrics, the mean train loss of the steps since the previous
evaluation (logged means weighted by the steps they cover), and each role's lr (lr/lora_A, ...)
as LoraPlusLogCallback recorded it (and, with ratio="auto", the ratios chosen per module kind).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

_SKIP = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def eval_rows(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluation step (a repeated step keeps its last evaluation)."""
    rows: list[dict[str, Any]] = []
    since: list[tuple[float, int]] = []  # (logged mean loss, steps it covers)
    last_logged = 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            since.append((float(entry["loss"]), max(1, int(entry["step"]) - last_logged)))
            last_logged = int(entry["step"])
        if not any(k.startswith("eval_") for k in entry):
            continue
        row: dict[str, Any] = {"step": int(entry["step"])}
        row.update(
            {k: float(v) for k, v in entry.items() if k.startswith("eval_") and k not in _SKIP}
        )
        losses, since = since, []
        steps = sum(n for _, n in losses)
        row["train_loss"] = sum(v * n for v, n in losses) / steps if losses else None
        row.update({k: float(v) for k, v in entry.items() if k.startswith(("lr/", "auto_ratio/"))})
        if rows and rows[-1]["step"] == row["step"]:  # evaluated again (a resumed run)
            if row["train_loss"] is None:
                row["train_loss"] = rows[-1]["train_loss"]
            rows[-1] = row
        else:
            rows.append(row)
    return rows


def train_losses(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every logged train loss: [{"step", "loss"}] (the curves' left panel)."""
    return [
        {"step": int(e["step"]), "loss": float(e["loss"])}
        for e in log_history
        if "loss" in e and "step" in e
    ]


def final_metrics(
    rows: list[dict[str, Any]], metric: str, steps: int, seconds: float, diverged: bool
) -> dict[str, Any]:
    """The last eval metrics, the best eval accuracy / loss, steps and seconds.

    Only evaluations after training started count, and a diverged run has no final metrics:
    the step-0 evaluation is never reported as the result of training.
    """
    trained = [r for r in rows if r["step"] > 0]
    final: dict[str, Any] = {metric: None}
    if trained and not diverged:
        final.update({k: v for k, v in trained[-1].items() if k.startswith("eval_")})
    for key, pick in (("eval_accuracy", max), ("eval_loss", min)):
        values = [r[key] for r in trained if isinstance(r.get(key), float)]
        values = [v for v in values if math.isfinite(v)]
        if values:
            final[f"best_{key}"] = pick(values)
    final["metric"] = metric
    final["steps"] = steps
    final["seconds"] = round(seconds, 3)
    return final


def steps_to_reach(rows: Sequence[Mapping[str, Any]], metric: str, target: float) -> int | None:
    """The first evaluated step after 0 whose `metric` reaches `target` (eval_accuracy: at or
    above it; a loss: at or below it), None if none does."""
    higher = "accuracy" in metric
    for row in rows:
        value = row.get(metric)
        if int(row["step"]) <= 0 or value is None:
            continue
        if (value >= target - 1e-12) if higher else (value <= target + 1e-12):
            return int(row["step"])
    return None
