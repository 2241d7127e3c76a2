"""One cell of the grid as a training run: TrialSpec in, best/final metric and status out.

Every trial stores user attrs: status (complete | pruned | diverged | error | interrupted, or
idle / duplicate for a trial that ran no cell), value (the best evaluation, see
`SweepConfig.metric`), best_step, final_value, seconds, error, worker (host:pid), lock (see
alive.py), input_error (True when the run refused its input: the cell is retried on the next
start) and, for a diverged run, cause. Diverged runs (TrainResult.diverged, or a NaN/inf
evaluation) are state FAIL with status "diverged": the objective returns NaN, which Optuna stores
as FAIL; the sweep goes on and the cell is not retried.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import optuna

from loraplus.sweep.alive import WorkerLock
from loraplus.sweep.config import TRIAL_DEFAULTS, SweepConfig
from loraplus.sweep.grid import Grid, cell_of

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from loraplus.train import TrainConfig, TrainResult

log = logging.getLogger(__name__)

# What a run raises for bad input (the CLI's exit 2): a trial that failed so holds no cell.
INPUT_ERRORS = (ValueError, FileNotFoundError, ImportError)


@dataclass(frozen=True)
class TrialSpec:
    """One cell of the grid as a training run: what `train_fn` receives."""

    number: int
    lr_a: float
    ratio: float | str | None  # "auto" for the auto method; None: the training config's
    seed: int
    output_dir: Path
    config: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    method: str | None = None  # a method cell (loraplus.train.methods): its settings apply
    setting: Mapping[str, Any] = field(default_factory=dict)  # an --axis cell's field and value

    @property
    def lr_b(self) -> float | None:
        """lr_B = ratio * lr_A (None when the ratio is set online or by the config)."""
        return self.ratio * self.lr_a if isinstance(self.ratio, (int, float)) else None

    def train_config(self) -> TrainConfig:
        """The TrainConfig of this cell: file, then sweep defaults and overrides, then the cell."""
        from loraplus.train import make_config

        values = {**TRIAL_DEFAULTS, **dict(self.overrides)}
        if self.method is not None:
            from loraplus.train.methods import method_settings

            values.update(method_settings(self.method))
        values.update(lr=self.lr_a, seed=self.seed, output_dir=str(self.output_dir))
        values.update(self.setting)
        if self.ratio is not None:
            values["ratio"] = self.ratio
        if self.config is not None:  # the file's own settings win over the sweep's defaults
            from loraplus.train import read_config_file

            for key in set(read_config_file(self.config)) & set(TRIAL_DEFAULTS):
                if key not in self.overrides:
                    values.pop(key)
        return make_config(self.config, **values)


class Reporter:
    """Feeds each evaluation to the Optuna trial (`trial.report`) and says when to stop.

    A real run gets it as a TrainerCallback (`callback()`); an injected `train_fn` may call
    `report(value, step)` itself and stop when it returns True (pruned, or a NaN/inf value).
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.curve: list[tuple[int, float]] = []
        self.pruned = False
        self.diverged = False
        self.cause: str | None = None

    def report(self, value: float, step: int) -> bool:
        """Record one evaluation of the metric at `step`; True when training should stop."""
        value, step = float(value), int(step)
        if not math.isfinite(value):
            self.diverged = True
            self.cause = self.cause or f"{self.metric} was {value} at step {step}"
            return True
        if any(s == step for s, _ in self.curve):
            return self.pruned
        self.curve.append((step, value))
        self.trial.report(value, step)
        if not self.pruned and self.trial.should_prune():
            self.pruned = True
        return self.pruned

    def callback(self) -> TrainerCallback:
        """A transformers TrainerCallback that reports `metric` at each evaluation."""
        from transformers import TrainerCallback

        reporter = self

        class OptunaReportCallback(TrainerCallback):
            """Reports the sweep metric to Optuna at each evaluation; stops a pruned run."""

            def on_evaluate(
                self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
            ) -> None:
                value = (metrics or {}).get(reporter.metric)
                if value is not None and reporter.report(float(value), int(state.global_step)):
                    control.should_training_stop = True

        return OptunaReportCallback()


class ResultLike(Protocol):
    """What the sweep reads from a training run (loraplus.train.TrainResult has it)."""

    history: list[dict[str, Any]]
    final: dict[str, Any]
    diverged: bool


TrainFn = Callable[[TrialSpec, Reporter], ResultLike]


def train_trial(spec: TrialSpec, reporter: Reporter) -> TrainResult:
    """The default `train_fn`: loraplus.train.train on the cell's config, reporting to Optuna."""
    from loraplus.train import train

    return train(spec.train_config(), callbacks=[reporter.callback()])


@dataclass
class Outcome:
    """A run's best and final metric; `cause` says why it diverged (None when it did not)."""

    value: float | None
    best_step: int | None
    final_value: float | None
    cause: str | None


def _cause(result: ResultLike, reporter: Reporter, bad: list[tuple[int, float]]) -> str | None:
    """Why a run diverged: a NaN/inf training loss, or a NaN/inf evaluation; None if it did not."""
    if result.diverged:
        step = result.final.get("diverged_at_step")
        return "training loss was NaN/inf" + ("" if step is None else f" at step {step}")
    if reporter.cause:
        return reporter.cause
    if bad:
        return f"{reporter.metric} was {bad[0][1]} at step {bad[0][0]}"
    return None


def outcome(result: ResultLike, reporter: Reporter, direction: str) -> Outcome:
    """Best / final metric of a run and why it diverged."""
    metric = reporter.metric
    rows = [r for r in result.history if r.get(metric) is not None]
    points = [(int(r.get("step", 0)), float(r[metric])) for r in rows]
    if not points:
        points = list(reporter.curve)
    if not points and result.final.get(metric) is not None:
        points = [(int(result.final.get("steps", 0)), float(result.final[metric]))]
    if not points:
        cause = _cause(result, reporter, [])
        if cause is not None:
            return Outcome(None, None, None, cause)
        keys = sorted({k for r in result.history for k in r} | set(result.final))
        raise ValueError(
            f"The run reported no {metric} (it has: {', '.join(keys) or 'nothing'}); use "
            "metric eval_loss for causal-lm, and evaluate at least once (eval_steps)."
        )
    trained = [p for p in points if p[0] > 0] or points
    finite = [p for p in trained if math.isfinite(p[1])]
    cause = _cause(result, reporter, [p for p in trained if not math.isfinite(p[1])])
    if not finite:
        return Outcome(None, None, None, cause)
    sign = 1.0 if direction == "maximize" else -1.0
    best_step, best = max(finite, key=lambda p: (sign * p[1], -p[0]))
    final = trained[-1][1]
    return Outcome(best, best_step, final if math.isfinite(final) else None, cause)


def objective(
    cfg: SweepConfig, grid: Grid, train_fn: TrainFn, ran: list[int]
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: one training run of the cell of the queued trial it was given."""
    lock = WorkerLock(grid.out_dir)

    def run(trial: optuna.Trial) -> float:
        attrs = trial.user_attrs
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("lock", lock.hold())
        if cell_of(attrs) is None:  # the queue ran empty between our look and ask()
            trial.set_user_attr("status", "idle")
            trial.study.stop()
            return float("nan")  # stored as FAIL; ignored by summarize
        holder = grid.claim(trial.study, trial.number, attrs)
        if holder is not None:
            trial.set_user_attr("status", "duplicate")
            trial.set_user_attr("error", f"the cell is trial {holder}'s")
            return float("nan")
        lr_a = trial.suggest_float("lr_a", min(cfg.lr_a), max(cfg.lr_a), log=True)
        method: str | None = None
        setting: dict[str, Any] = {}
        ratio: float | str | None = None
        if cfg.axis == "method":
            from loraplus.train.methods import method_settings

            method = str(trial.suggest_categorical("method", cfg.y))
            ratio = method_settings(method)["ratio"]
        elif cfg.axis in ("ratio", "lr_b"):
            second = trial.suggest_float(cfg.axis, min(cfg.y), max(cfg.y), log=True)
            ratio = second / lr_a if cfg.axis == "lr_b" else second
        else:  # --axis FIELD=...: the field's value; the ratio is the training config's
            setting = {cfg.axis: trial.suggest_categorical(cfg.axis, cfg.y)}
        seed = trial.suggest_int("seed", min(cfg.seeds), max(cfg.seeds))
        spec = TrialSpec(
            number=trial.number,
            lr_a=lr_a,
            ratio=ratio,
            seed=seed,
            output_dir=grid.trial_dir(trial.number),
            config=cfg.config,
            overrides=dict(cfg.overrides),
            method=method,
            setting=setting,
        )
        ran.append(trial.number)
        return _train(trial, spec, train_fn, cfg)

    return run


def _describe(spec: TrialSpec) -> str:
    """The cell's second axis for a log line: its field setting, else its ratio."""
    if spec.setting:
        return ", ".join(f"{k} {v}" for k, v in spec.setting.items())
    return f"ratio {spec.ratio}"


def _train(trial: optuna.Trial, spec: TrialSpec, train_fn: TrainFn, cfg: SweepConfig) -> float:
    """Train one cell and record how it went in the trial's user attrs."""
    reporter = Reporter(trial, cfg.metric)
    start = time.perf_counter()
    try:
        result = outcome(train_fn(spec, reporter), reporter, cfg.direction)
    except KeyboardInterrupt:
        trial.set_user_attr("status", "interrupted")
        raise
    except Exception as err:
        trial.set_user_attr("status", "error")
        trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
        if not isinstance(err, INPUT_ERRORS):
            raise
        # the run refused its input (no traceback: it is no bug): a re-run retries the cell
        trial.set_user_attr("input_error", True)
        log.warning("Trial %d refused its input: %s", trial.number, err)
        return float("nan")  # Optuna stores NaN as FAIL
    trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
    trial.set_user_attr("best_step", result.best_step)
    trial.set_user_attr("final_value", result.final_value)
    trial.set_user_attr("value", result.value)
    if result.cause is not None or result.value is None:
        trial.set_user_attr("status", "diverged")
        trial.set_user_attr("cause", result.cause or f"no finite {cfg.metric}")
        log.warning(
            "Trial %d diverged (lr_A %g, %s): %s.",
            trial.number,
            spec.lr_a,
            f"method {spec.method}" if spec.method else _describe(spec),
            result.cause,
        )
        return float("nan")  # Optuna stores NaN as FAIL
    if reporter.pruned:
        trial.set_user_attr("status", "pruned")
        raise optuna.TrialPruned(f"{cfg.metric} {result.value:.4g} below the median")
    trial.set_user_attr("status", "complete")
    return result.value
