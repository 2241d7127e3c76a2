"""Learning-rate sweeps of LoRA+ on real models, kept in an Optuna study (paper Figure 3).

    SweepConfig --open_study--> Optuna study (any SQLAlchemy URL; default sqlite:///<out_dir>/sweep.db)
        --run_sweep / run_worker--> one training run per grid cell (lr_A x ratio|lr_B x seed)
        --summarize--> SweepSummary --write_outputs--> sweep.json + sweep_heatmap.png

Cells are handed out by `CellGridSampler`, an Optuna `GridSampler` that runs every cell exactly
once, also when several processes or machines share one study. Plain GridSampler (Optuna 5.0)
maps trial number k < grid size to cell k, but later trials (after a failure, or when workers race
at the end of the grid) pick among unfinished cells, including cells another worker is running,
and it counts crashed (FAIL) cells as done. `CellGridSampler` instead claims a cell in
`before_trial`: trial numbers are assigned atomically by the storage, each trial waits until every
lower-numbered running trial has published its claim (a system attr), then takes the first cell
that no trial holds. A trial holds its cell while RUNNING and after COMPLETE, PRUNED or a diverged
or errored FAIL; a crashed trial (interrupted, its process gone, or stale by Optuna's heartbeat)
releases it, so a resumed sweep re-runs only those cells. A worker that finds no free cell records
one "idle" trial (FAIL, user attr status="idle") and stops.

Every trial stores user attrs: status (complete | pruned | diverged | error | interrupted |
crashed | idle), value (the best evaluation, see `SweepConfig.metric`), best_step, final_value,
seconds, error. Diverged runs (TrainResult.diverged, or a NaN/inf evaluation) are recorded as
state FAIL with status "diverged": the objective returns NaN, which Optuna stores as FAIL, and the
sweep goes on; the cell is not retried.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import socket
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.samplers import GridSampler
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from loraplus.train import TrainConfig, TrainResult

log = logging.getLogger(__name__)

__all__ = [
    "CellGridSampler",
    "Reporter",
    "SweepConfig",
    "SweepSummary",
    "TrialSpec",
    "load_summary",
    "make_storage",
    "open_study",
    "run_sweep",
    "run_worker",
    "summarize",
    "train_trial",
    "write_outputs",
]

METRICS = {"eval_accuracy": "maximize", "eval_loss": "minimize"}
PRUNERS = ("none", "median")
DEFAULT_LR_A = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
DEFAULT_RATIOS = (1.0, 4.0, 16.0, 64.0)
STUDY_ATTR = "loraplus_sweep"  # study user attr: the grid, metric and mode of the sweep
# Trial system attr that publishes a claim, in one write: {"cell": [lr_a, ratio|lr_b, seed] (sorted
# param names), "worker": {host, pid, start} of the process running it}.
CLAIM = "loraplus:claim"
IDLE = "loraplus:idle"  # trial system attr: this trial found no free cell
HOLDING = ("complete", "pruned", "diverged", "error")  # statuses that keep a cell taken
# Per-trial TrainConfig defaults a sweep needs (a config file or `overrides` may change them).
TRIAL_DEFAULTS: dict[str, Any] = {"progress": False, "save_adapter": False, "report_to": []}
_SWEPT = ("lr", "ratio", "seed", "output_dir")  # set per cell: not allowed in overrides


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def _floats(name: str, values: Sequence[Any]) -> list[float]:
    """Sorted distinct positive finite floats (strings such as "1e-4" accepted)."""
    if isinstance(values, (str, bytes)) or not values:
        raise ValueError(f"{name} must be a non-empty list of numbers, got {values!r}.")
    try:
        numbers = sorted({float(v) for v in values})
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {values!r}.") from None
    if not all(v > 0 and math.isfinite(v) for v in numbers):
        raise ValueError(f"{name} must be finite numbers > 0, got {values!r}.")
    return numbers


@dataclass
class SweepConfig:
    """One learning-rate sweep: a TrainConfig (file + overrides), the grid, the study, the outputs.

    The grid is `lr_a` x `ratios` (lr_B = ratio * lr_A; default 1, 4, 16, 64, where ratio 1 is
    standard LoRA) or `lr_a` x `lr_b` (paper Figure 3), each cell trained once per seed in
    `seeds`. `metric` is "eval_accuracy" (maximized) or "eval_loss" (minimized); a trial's value
    is the BEST evaluation over its run (evaluations after step 0; the step-0 evaluation before
    any update counts only when there is no other). `budget=True` is the paper's practical recipe:
    the ratio is fixed to `budget_ratio` (16) and only lr_A is searched, against the same number
    of standard-LoRA trials (ratio 1). `pruner="median"` stops runs below the median of earlier
    runs at the same step (Optuna MedianPruner, after 5 finished trials); pruned cells are never
    the best. `storage` is any Optuna/SQLAlchemy URL (default sqlite:///<out_dir>/sweep.db); every
    process (`workers`) or machine that opens the same URL and `study_name` shares the grid.
    `heartbeat_s` enables Optuna's heartbeat, so a trial whose machine died is marked failed and
    re-run after 2 x heartbeat_s; on one machine a dead process is noticed at once.
    `retry_failed` re-runs cells whose earlier attempt raised an error (once per start).
    """

    lr_a: list[float] = field(default_factory=lambda: list(DEFAULT_LR_A))
    ratios: list[float] | None = None
    lr_b: list[float] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = "eval_accuracy"
    storage: str | None = None
    study_name: str = "loraplus-sweep"
    out_dir: str = "runs/sweep"
    pruner: str = "none"
    budget: bool = False
    budget_ratio: float = 16.0
    workers: int = 1
    heartbeat_s: int | None = 60
    retry_failed: bool = False

    def __post_init__(self) -> None:
        """Normalize the grid (sorted, distinct) and check every field."""
        self.lr_a = _floats("lr_a", self.lr_a)
        if self.budget:
            if self.ratios is not None or self.lr_b is not None:
                raise ValueError(
                    "budget mode fixes the ratios to 1 and budget_ratio: drop ratios / lr_b."
                )
            if not (self.budget_ratio > 0 and math.isfinite(self.budget_ratio)):
                raise ValueError(f"budget_ratio must be a number > 0, got {self.budget_ratio!r}.")
            if self.budget_ratio == 1:
                raise ValueError("budget_ratio must differ from 1 (ratio 1 is the LoRA baseline).")
            self.budget_ratio = float(self.budget_ratio)
        if self.ratios is not None and self.lr_b is not None:
            raise ValueError("Give either ratios (lr_A x ratio) or lr_b (lr_A x lr_B), not both.")
        if self.ratios is not None:
            self.ratios = _floats("ratios", self.ratios)
        if self.lr_b is not None:
            self.lr_b = _floats("lr_b", self.lr_b)
        if isinstance(self.seeds, (str, int)) or not self.seeds:
            raise ValueError(f"seeds must be a non-empty list of integers, got {self.seeds!r}.")
        try:
            numbers = [float(s) for s in self.seeds]
        except (TypeError, ValueError):
            numbers = [math.nan]
        if not all(n.is_integer() for n in numbers):
            raise ValueError(f"seeds must be integers, got {self.seeds!r}.")
        self.seeds = sorted({int(n) for n in numbers})
        if self.metric not in METRICS:
            raise ValueError(
                f"metric must be one of {', '.join(METRICS)}, got {self.metric!r} "
                "(eval_loss for causal-lm)."
            )
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}.")
        if int(self.workers) < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers!r}.")
        self.workers = int(self.workers)
        if self.heartbeat_s is not None and int(self.heartbeat_s) < 1:
            raise ValueError(f"heartbeat_s must be >= 1 second or None, got {self.heartbeat_s!r}.")
        if not self.study_name:
            raise ValueError("study_name must not be empty.")
        self.overrides = {k.replace("-", "_"): v for k, v in dict(self.overrides).items()}
        swept = sorted(set(self.overrides) & set(_SWEPT))
        if swept:
            raise ValueError(
                f"overrides may not set {', '.join(swept)}: the sweep sets them per cell "
                "(use lr_a / ratios / lr_b / seeds / out_dir)."
            )

    @property
    def direction(self) -> str:
        """'maximize' for eval_accuracy, 'minimize' for eval_loss."""
        return METRICS[self.metric]

    @property
    def axis(self) -> str:
        """The grid's second axis: 'ratio' or 'lr_b'."""
        return "lr_b" if self.lr_b is not None else "ratio"

    @property
    def y(self) -> list[float]:
        """The values of the second axis (ratios or lr_B)."""
        if self.budget:
            return [1.0, self.budget_ratio] if self.budget_ratio > 1 else [self.budget_ratio, 1.0]
        if self.lr_b is not None:
            return list(self.lr_b)
        return list(self.ratios if self.ratios is not None else DEFAULT_RATIOS)

    @property
    def search_space(self) -> dict[str, list[Any]]:
        """The GridSampler search space: lr_a, ratio|lr_b, seed."""
        return {"lr_a": list(self.lr_a), self.axis: self.y, "seed": list(self.seeds)}

    @property
    def grid_size(self) -> int:
        """Number of trials in the full grid (cells x seeds)."""
        return len(self.lr_a) * len(self.y) * len(self.seeds)

    @property
    def storage_url(self) -> str:
        """The storage URL: `storage`, or sqlite:///<out_dir>/sweep.db (absolute)."""
        if self.storage:
            return _as_url(self.storage)
        return _as_url(Path(self.out_dir) / "sweep.db")

    def record(self) -> dict[str, Any]:
        """What the study remembers about the sweep (checked when the study is opened again)."""
        return {
            "version": 1,
            "axis": self.axis,
            "lr_a": list(self.lr_a),
            "y": self.y,
            "seeds": list(self.seeds),
            "metric": self.metric,
            "direction": self.direction,
            "budget": bool(self.budget),
            "budget_ratio": self.budget_ratio if self.budget else None,
        }


def _as_url(storage: str | os.PathLike[str]) -> str:
    """A storage URL; a plain path (…/sweep.db) becomes an absolute sqlite:/// URL."""
    text = os.fspath(storage)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def make_storage(url: str, *, heartbeat_s: int | None = None) -> optuna.storages.RDBStorage:
    """An Optuna RDBStorage for `url`; SQLite waits for locks (several processes) and its folder
    is created; `heartbeat_s` enables Optuna's heartbeat (stale trials fail after 2 beats)."""
    url = _as_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 600}}
        database = url.split(":///", 1)[-1]
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if heartbeat_s:
        kwargs["heartbeat_interval"] = int(heartbeat_s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, **kwargs)
    if url.startswith("sqlite"):
        from sqlalchemy import event

        event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # pooled connections reconnect with the pragmas
    return storage


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    """WAL journal + synchronous=NORMAL: a commit costs ~0.1 ms instead of an fsync (~20 ms),
    readers do not block the writer; still safe for several processes on one machine."""
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    except Exception as err:  # e.g. locked while another process switches it: keep the default
        log.debug("SQLite pragmas not applied: %s", err)
    finally:
        cursor.close()


# ---------------------------------------------------------------------------------------------
# Exactly-once cells: the sampler
# ---------------------------------------------------------------------------------------------


def _proc_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process, None if unknown or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    parts = stat[stat.rfind(")") + 2 :].split()
    if not parts or parts[0] == "Z" or len(parts) < 20:
        return None
    return int(parts[19])


def _worker_id() -> dict[str, Any]:
    """Who runs a trial: host name, pid and the process's start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def _dead_here(worker: Any) -> bool:
    """True when `worker` (a claim's worker) was a process on this host that no longer runs."""
    if not isinstance(worker, Mapping) or worker.get("host") != socket.gethostname():
        return False
    pid = int(worker.get("pid", -1))
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    start = _proc_start(pid)
    if start is None:
        return Path("/proc").is_dir()  # on Linux: a zombie, or gone since the kill check
    return worker.get("start") is not None and start != worker["start"]


def _status(trial: FrozenTrial) -> str:
    """The sweep status of a trial (user attr, else from its Optuna state)."""
    status = trial.user_attrs.get("status")
    if isinstance(status, str):
        return status
    return {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }.get(trial.state, "crashed")


class CellGridSampler(GridSampler):
    """A GridSampler that runs each grid cell exactly once across workers on one storage.

    `before_trial` waits until every lower-numbered RUNNING trial has published its cell, then
    claims the first cell (in GridSampler's fixed order, seed 0) that no trial holds, and writes
    GridSampler's own `grid_id` so `suggest_*` returns that cell's values. Holding: RUNNING (its
    process alive), COMPLETE, PRUNED, FAIL with status diverged or error (error is released for
    trials numbered below `retry_errors_before`). Trials with no free cell are listed in `idle`.
    """

    def __init__(
        self,
        search_space: Mapping[str, Sequence[Any]],
        *,
        retry_errors_before: int = 0,
        claim_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(search_space, seed=0)  # the same cell order in every worker
        if not hasattr(self, "_all_grids") or not hasattr(self, "_param_names"):
            raise RuntimeError("This Optuna GridSampler has no _all_grids: update loraplus.")
        self.names: list[str] = list(self._param_names)
        self.cells: list[tuple[Any, ...]] = [tuple(c) for c in self._all_grids]
        self.retry_errors_before = retry_errors_before
        self.claim_timeout_s = claim_timeout_s
        self.idle: set[int] = set()
        self._me = _worker_id()

    def cell_of(self, trial: FrozenTrial) -> tuple[Any, ...] | None:
        """The cell a trial claimed (or ran, from its params), None if it has none."""
        claim = trial.system_attrs.get(CLAIM)
        if isinstance(claim, Mapping) and len(claim.get("cell", ())) == len(self.names):
            return tuple(claim["cell"])
        fixed = trial.system_attrs.get("fixed_params")
        source = fixed if isinstance(fixed, Mapping) else trial.params
        if all(name in source for name in self.names):
            return tuple(source[name] for name in self.names)
        return None

    def holds(self, trial: FrozenTrial) -> bool:
        """Whether `trial` keeps its cell from being run again."""
        if trial.state == TrialState.RUNNING:
            return True
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return True
        if trial.state == TrialState.FAIL:
            status = _status(trial)
            if status == "error":
                return trial.number >= self.retry_errors_before
            return status in HOLDING
        return False

    def free_cells(self, trials: Sequence[FrozenTrial]) -> list[int]:
        """Indices (into `cells`) of the cells no trial holds, in claiming order."""
        taken = {self.cell_of(t) for t in trials if self.holds(t)}
        return [i for i, cell in enumerate(self.cells) if cell not in taken]

    def _trials(self, study: optuna.Study) -> list[FrozenTrial]:
        # The storage directly (as GridSampler does): some pruners hand samplers a filtered study.
        return study._storage.get_all_trials(study._study_id, deepcopy=False)

    def _reap(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> bool:
        """Mark RUNNING trials whose process on this host is gone as crashed (FAIL)."""
        reaped = False
        for t in trials:
            claim = t.system_attrs.get(CLAIM)
            worker = claim.get("worker") if isinstance(claim, Mapping) else None
            if t.state == TrialState.RUNNING and _dead_here(worker):
                try:
                    study._storage.set_trial_user_attr(t._trial_id, "status", "crashed")
                    study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                    log.warning("Trial %d: its process is gone; its cell will be re-run.", t.number)
                    reaped = True
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass
        return reaped

    def pending(self, study: optuna.Study) -> list[int]:
        """Free cells now (after reaping dead local trials)."""
        trials = self._trials(study)
        if self._reap(study, trials):
            trials = self._trials(study)
        return self.free_cells(trials)

    def _published_trials(self, study: optuna.Study, number: int) -> list[FrozenTrial]:
        """All trials, once every RUNNING trial below `number` has published its claim."""
        deadline = time.monotonic() + self.claim_timeout_s
        while True:
            trials = self._trials(study)
            unpublished = [
                t
                for t in trials
                if t.number < number
                and t.state == TrialState.RUNNING
                and not {CLAIM, IDLE, "grid_id", "fixed_params"} & set(t.system_attrs)
            ]
            if not unpublished:
                return trials
            if time.monotonic() > deadline:  # their process died between create and claim
                log.warning(
                    "Trials %s never claimed a cell: failing them.", [t.number for t in unpublished]
                )
                for t in unpublished:
                    try:
                        study._storage.set_trial_user_attr(t._trial_id, "status", "crashed")
                        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                    except optuna.exceptions.UpdateFinishedTrialError:
                        pass
                return self._trials(study)
            time.sleep(0.02)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Claim a free cell for `trial` (or mark it idle)."""
        if "grid_id" in trial.system_attrs or "fixed_params" in trial.system_attrs:
            super().before_trial(study, trial)  # enqueued or retried by Optuna: GridSampler's way
            return
        storage, trial_id = study._storage, trial._trial_id
        trials = self._published_trials(study, trial.number)
        if self._reap(study, trials):
            trials = self._trials(study)
        free = self.free_cells([t for t in trials if t.number != trial.number])
        if not free:
            storage.set_trial_system_attr(trial_id, IDLE, True)
            self.idle.add(trial.number)
            return
        grid_id = free[0]
        # The claim first: once any of these attrs is visible, lower-numbered trials count as
        # published to the trials above them, so the cell must already be readable.
        claim: dict[str, Any] = {"cell": list(self.cells[grid_id]), "worker": self._me}
        storage.set_trial_system_attr(trial_id, CLAIM, claim)
        storage.set_trial_system_attr(trial_id, "search_space", self._search_space)
        storage.set_trial_system_attr(trial_id, "grid_id", grid_id)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Stop this worker when no cell is left to start."""
        if not self.free_cells(self._trials(study)):
            study.stop()

    def is_exhausted(self, study: optuna.Study) -> bool:
        """True when every cell is held (done, or running somewhere)."""
        return not self.free_cells(self._trials(study))


def open_study(
    cfg: SweepConfig, *, retry_errors_before: int | None = None
) -> tuple[optuna.Study, CellGridSampler]:
    """Create or load (load_if_exists) the sweep's study; a study made for another grid raises."""
    storage = make_storage(cfg.storage_url, heartbeat_s=cfg.heartbeat_s)
    sampler = CellGridSampler(cfg.search_space)
    pruner: optuna.pruners.BasePruner
    if cfg.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=cfg.study_name,
        direction="maximize" if cfg.direction == "maximize" else "minimize",
        load_if_exists=True,
    )
    if study.direction.name.lower() != cfg.direction:
        raise ValueError(
            f"Study {cfg.study_name!r} in {cfg.storage_url} maximizes/minimizes differently "
            f"({study.direction.name.lower()}) from metric {cfg.metric}: use another study name."
        )
    mine, stored = cfg.record(), study.user_attrs.get(STUDY_ATTR)
    if stored is None:
        study.set_user_attr(STUDY_ATTR, mine)
    elif stored != mine:
        diff = sorted(k for k in set(mine) | set(stored) if mine.get(k) != stored.get(k))
        raise ValueError(
            f"Study {cfg.study_name!r} in {cfg.storage_url} was made for another sweep "
            f"(differs in {', '.join(diff)}): resume it with the same grid and metric, or pass "
            "another study name / storage."
        )
    if cfg.retry_failed:
        last = len(study.get_trials(deepcopy=False))
        sampler.retry_errors_before = last if retry_errors_before is None else retry_errors_before
    return study, sampler


# ---------------------------------------------------------------------------------------------
# One trial
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialSpec:
    """One cell of the grid as a training run: what `train_fn` receives."""

    number: int
    lr_a: float
    ratio: float
    seed: int
    output_dir: Path
    config: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def lr_b(self) -> float:
        """lr_B = ratio * lr_A."""
        return self.ratio * self.lr_a

    def train_config(self) -> TrainConfig:
        """The TrainConfig of this cell: file, then sweep defaults and overrides, then the cell."""
        from loraplus.train import make_config

        values = {**TRIAL_DEFAULTS, **dict(self.overrides)}
        values.update(
            lr=self.lr_a, ratio=self.ratio, seed=self.seed, output_dir=str(self.output_dir)
        )
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

    def report(self, value: float, step: int) -> bool:
        """Record one evaluation of the metric at `step`; True when training should stop."""
        value, step = float(value), int(step)
        if not math.isfinite(value):
            self.diverged = True
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
class _Outcome:
    value: float | None
    best_step: int | None
    final_value: float | None
    diverged: bool


def _outcome(result: ResultLike, reporter: Reporter, metric: str, direction: str) -> _Outcome:
    """Best / final metric of a run and whether it diverged."""
    rows = [r for r in result.history if r.get(metric) is not None]
    points = [(int(r.get("step", 0)), float(r[metric])) for r in rows]
    if not points:
        points = list(reporter.curve)
    if not points and result.final.get(metric) is not None:
        points = [(int(result.final.get("steps", 0)), float(result.final[metric]))]
    if not points:
        if result.diverged or reporter.diverged:
            return _Outcome(None, None, None, True)
        keys = sorted({k for r in result.history for k in r} | set(result.final))
        raise ValueError(
            f"The run reported no {metric} (it has: {', '.join(keys) or 'nothing'}); use "
            "metric eval_loss for causal-lm, and evaluate at least once (eval_steps)."
        )
    trained = [p for p in points if p[0] > 0] or points
    finite = [p for p in trained if math.isfinite(p[1])]
    diverged = bool(result.diverged or reporter.diverged or len(finite) < len(trained))
    if not finite:
        return _Outcome(None, None, None, True)
    sign = 1.0 if direction == "maximize" else -1.0
    best_step, best = max(finite, key=lambda p: (sign * p[1], -p[0]))
    final = trained[-1][1]
    return _Outcome(best, best_step, final if math.isfinite(final) else None, diverged)


def _objective(
    cfg: SweepConfig, sampler: CellGridSampler, train_fn: TrainFn, ran: list[int]
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: one training run of the cell the sampler claimed."""
    out = Path(cfg.out_dir).expanduser()

    def objective(trial: optuna.Trial) -> float:
        if trial.number in sampler.idle:
            trial.set_user_attr("status", "idle")
            trial.study.stop()
            return float("nan")  # stored as FAIL; ignored by summarize
        lr_a = trial.suggest_float("lr_a", min(cfg.lr_a), max(cfg.lr_a), log=True)
        y = cfg.y
        second = trial.suggest_float(cfg.axis, min(y), max(y), log=True)
        seed = trial.suggest_int("seed", min(cfg.seeds), max(cfg.seeds))
        ratio = second / lr_a if cfg.axis == "lr_b" else second
        spec = TrialSpec(
            number=trial.number,
            lr_a=lr_a,
            ratio=ratio,
            seed=seed,
            output_dir=out / "trials" / f"trial_{trial.number:04d}",
            config=cfg.config,
            overrides=dict(cfg.overrides),
        )
        reporter = Reporter(trial, cfg.metric)
        ran.append(trial.number)
        start = time.perf_counter()
        try:
            result = train_fn(spec, reporter)
            outcome = _outcome(result, reporter, cfg.metric, cfg.direction)
        except KeyboardInterrupt:
            trial.set_user_attr("status", "interrupted")
            raise
        except Exception as err:
            trial.set_user_attr("status", "error")
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            raise
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        trial.set_user_attr("best_step", outcome.best_step)
        trial.set_user_attr("final_value", outcome.final_value)
        trial.set_user_attr("value", outcome.value)
        if outcome.diverged or outcome.value is None:
            trial.set_user_attr("status", "diverged")
            log.warning("Trial %d diverged (lr_A %g, ratio %g).", trial.number, lr_a, ratio)
            return float("nan")  # Optuna stores NaN as FAIL
        if reporter.pruned:
            trial.set_user_attr("status", "pruned")
            raise optuna.TrialPruned(f"{cfg.metric} {outcome.value:.4g} below the median")
        trial.set_user_attr("status", "complete")
        return outcome.value

    return objective


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def run_worker(
    cfg: SweepConfig, n_trials: int | None = None, *, train_fn: TrainFn | None = None
) -> int:
    """Run cells of the sweep's study in this process until none is left to start (or
    `n_trials` were started); return how many this worker trained. Start it on several
    processes or machines with the same storage URL to share the grid."""
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"n_trials must be >= 1 or None, got {n_trials}.")
    return _work(cfg, *open_study(cfg), n_trials, train_fn)


def _work(
    cfg: SweepConfig,
    study: optuna.Study,
    sampler: CellGridSampler,
    n_trials: int | None,
    train_fn: TrainFn | None,
) -> int:
    """The worker loop of `run_worker` on an opened study."""
    if not sampler.pending(study):
        return 0
    ran: list[int] = []
    objective = _objective(cfg, sampler, train_fn or train_trial, ran)
    study.optimize(
        objective, n_trials=n_trials, catch=(Exception,), gc_after_trial=train_fn is None
    )
    return len(ran)


def _worker_main(cfg: SweepConfig, n_trials: int | None, train_fn: TrainFn | None) -> None:
    """Entry point of a spawned worker process."""
    logging.basicConfig(level=logging.INFO, format="%(processName)s %(levelname)s %(message)s")
    run_worker(cfg, n_trials, train_fn=train_fn)


def _check_task(cfg: SweepConfig) -> None:
    """Fail before the first run when the metric cannot come from the task."""
    spec = TrialSpec(0, cfg.lr_a[0], 1.0, cfg.seeds[0], Path(cfg.out_dir), cfg.config)
    train_cfg = spec.train_config()
    if train_cfg.task != "classification" and cfg.metric == "eval_accuracy":
        raise ValueError(f"metric eval_accuracy needs task classification (got {train_cfg.task}).")


def run_sweep(
    cfg: SweepConfig,
    n_trials: int | None = None,
    *,
    workers: int | None = None,
    train_fn: TrainFn | None = None,
    write: bool = True,
) -> SweepSummary:
    """Run the sweep until every cell is done (with `workers` spawned processes; default
    cfg.workers), then summarize it and (with `write`) write sweep.json and the heatmap into
    cfg.out_dir. `n_trials` caps the trials each worker starts. Resuming = calling it again."""
    workers = cfg.workers if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    if train_fn is None:
        _check_task(cfg)
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"n_trials must be >= 1 or None, got {n_trials}.")
    study, sampler = open_study(cfg)  # creates tables and the study once, before workers race
    failed: list[str] = []
    if workers == 1:
        _work(cfg, study, sampler, n_trials, train_fn)
    else:
        context = multiprocessing.get_context("spawn")
        procs = [
            context.Process(
                target=_worker_main,
                args=(cfg, n_trials, train_fn),
                name=f"sweep-worker-{k}",
            )
            for k in range(workers)
        ]
        for proc in procs:
            proc.start()
        try:
            for proc in procs:
                proc.join()
        except KeyboardInterrupt:
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.terminate()
            raise
        failed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode != 0]
    summary = summarize(study)
    if write:
        write_outputs(summary, cfg.out_dir)
    if failed:
        raise RuntimeError(f"Sweep worker(s) failed: {', '.join(failed)}; see their log.")
    counts = summary.counts
    if not counts.get("complete") and counts.get("error"):
        first = next(t for t in summary.trials if t["status"] == "error")
        raise RuntimeError(f"Every trial of the sweep failed; first error: {first.get('error')}")
    return summary


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """The sweep's results: every trial, one row per cell (seed mean/std), the best cells, gain.

    Cells: lr_a, ratio, lr_b, mean, std (over seeds with a value), n, values/states per seed,
    state (complete | pruned | diverged | error | running | pending), trials. `best` is the best
    complete cell, `best_lora` the best complete cell with ratio 1 (the diagonal lr_B = lr_A on an
    lr_b grid), `gain` = best - best_lora in the metric's better direction (>= 0; None without a
    LoRA cell). `budget` (budget mode): best LoRA+ (budget_ratio) and best LoRA over lr_A, gain.
    """

    study_name: str
    metric: str
    direction: str
    axis: str
    lr_a: list[float]
    y: list[float]
    seeds: list[int]
    cells: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_lora: dict[str, Any] | None
    gain: float | None
    budget: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (SweepSummary.from_dict rebuilds it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepSummary:
        """The summary from `to_dict()` / sweep.json data."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def cell(self, lr_a: float, y: float) -> dict[str, Any]:
        """The row of one cell (y: the ratio or lr_B)."""
        for row in self.cells:
            if row["lr_a"] == lr_a and row[self.axis] == y:
                return row
        raise KeyError(f"No cell lr_a={lr_a}, {self.axis}={y} in the sweep.")

    def heatmap(self) -> dict[str, Any]:
        """Plain data for plots.plot_sweep_heatmap."""
        index = {(c["lr_a"], c[self.axis]): c for c in self.cells}
        values = [[index[(a, b)]["mean"] for b in self.y] for a in self.lr_a]
        states = [[index[(a, b)]["state"] for b in self.y] for a in self.lr_a]
        best = None
        if self.best is not None:
            best = [self.lr_a.index(self.best["lr_a"]), self.y.index(self.best[self.axis])]
        baseline_row = next((j for j, v in enumerate(self.y) if v == 1.0), None)
        title = f"{self.study_name}: {self.metric}"
        if self.gain is not None:
            points = "accuracy" in self.metric
            gain = f"{100 * self.gain:+.1f} points" if points else f"{self.gain:+.4g}"
            title += f"; best vs LoRA (ratio 1): {gain}"
        return {
            "lr_a": self.lr_a,
            "y": self.y,
            "y_label": "ratio" if self.axis == "ratio" else "lr_B",
            "values": values,
            "states": states,
            "best": best,
            "baseline": "ratio" if self.axis == "ratio" else "diagonal",
            "baseline_row": baseline_row if self.axis == "ratio" else None,
            "metric": self.metric,
            "direction": self.direction,
            "title": title,
        }


def _load(source: optuna.Study | str | os.PathLike[str], study_name: str | None) -> optuna.Study:
    """The study from a Study, a storage URL or a path to a .db file."""
    if isinstance(source, optuna.Study):
        return source
    url = _as_url(source)
    if study_name is None:
        names = optuna.get_all_study_names(storage=url)
        if len(names) != 1:
            raise ValueError(
                f"{url} holds {len(names)} studies ({', '.join(names) or 'none'}): pass study_name."
            )
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=url)


def _isclose(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def _pick(cells: Sequence[dict[str, Any]], sign: float) -> dict[str, Any] | None:
    """The best complete cell (first in grid order on ties)."""
    done = [c for c in cells if c["state"] == "complete" and c["mean"] is not None]
    if not done:
        return None
    return max(done, key=lambda c: sign * c["mean"])  # max keeps the first of equal keys


def summarize(
    study: optuna.Study | str | os.PathLike[str], study_name: str | None = None
) -> SweepSummary:
    """Summarize a sweep study (a Study, a storage URL or a sweep.db path) into a SweepSummary."""
    study = _load(study, study_name)
    record = study.user_attrs.get(STUDY_ATTR) or {}
    trials = study.get_trials(deepcopy=False)
    axis = record.get("axis") or ("lr_b" if any("lr_b" in t.params for t in trials) else "ratio")
    names = sorted(["lr_a", axis, "seed"])

    def cell_of(t: FrozenTrial) -> tuple[Any, ...] | None:
        claim = t.system_attrs.get(CLAIM)
        if isinstance(claim, Mapping) and len(claim.get("cell", ())) == 3:
            return tuple(claim["cell"])
        if all(n in t.params for n in names):
            return tuple(t.params[n] for n in names)
        return None

    seen = [c for c in map(cell_of, trials) if c is not None]
    lr_a = list(record.get("lr_a") or sorted({c[names.index("lr_a")] for c in seen}))
    ys = list(record.get("y") or sorted({c[names.index(axis)] for c in seen}))
    seeds = list(record.get("seeds") or sorted({c[names.index("seed")] for c in seen}))
    direction = record.get("direction") or study.direction.name.lower()
    metric = record.get("metric") or ("eval_accuracy" if direction == "maximize" else "eval_loss")
    sign = 1.0 if direction == "maximize" else -1.0

    rows: list[dict[str, Any]] = []
    by_cell: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for t in trials:
        cell = cell_of(t)
        status = _status(t)
        values = dict(zip(names, cell, strict=True)) if cell is not None else {}
        a, b = values.get("lr_a"), values.get(axis)
        ratio = None if a is None or b is None else (b / a if axis == "lr_b" else b)
        value = t.user_attrs.get("value")
        if value is None and t.state == TrialState.COMPLETE and t.value is not None:
            value = float(t.value)
        row = {
            "number": t.number,
            "state": t.state.name.lower(),
            "status": status,
            "lr_a": a,
            "ratio": ratio,
            "lr_b": None if a is None or ratio is None else (b if axis == "lr_b" else a * ratio),
            "seed": values.get("seed"),
            "value": value if status in ("complete", "pruned") else None,
            "best_step": t.user_attrs.get("best_step"),
            "final_value": t.user_attrs.get("final_value"),
            "seconds": t.user_attrs.get("seconds"),
            "error": t.user_attrs.get("error"),
        }
        rows.append(row)
        if cell is not None and status != "idle":
            by_cell.setdefault((a, b, values.get("seed")), []).append(row)

    order = ("diverged", "error", "pruned")
    cells: list[dict[str, Any]] = []
    for a in lr_a:
        for b in ys:
            seed_values: list[float | None] = []
            seed_states: list[str] = []
            numbers: list[int] = []
            for s in seeds:
                attempts = by_cell.get((a, b, s), [])
                numbers += [r["number"] for r in attempts]
                final = [r for r in attempts if r["status"] in HOLDING]
                if final:
                    seed_states.append(final[-1]["status"])
                    seed_values.append(final[-1]["value"])
                elif any(r["status"] == "running" for r in attempts):
                    seed_states.append("running")
                    seed_values.append(None)
                else:
                    seed_states.append("pending")
                    seed_values.append(None)
            state = next((o for o in order if o in seed_states), None)
            if state is None:
                if all(s == "complete" for s in seed_states):
                    state = "complete"
                else:
                    state = "running" if "running" in seed_states else "pending"
            got = [v for v in seed_values if v is not None]
            ratio = b / a if axis == "lr_b" else b
            cells.append(
                {
                    "lr_a": a,
                    "ratio": ratio,
                    "lr_b": b if axis == "lr_b" else a * b,
                    "mean": statistics.fmean(got) if got else None,
                    "std": statistics.stdev(got) if len(got) > 1 else (0.0 if got else None),
                    "n": len(got),
                    "values": seed_values,
                    "states": seed_states,
                    "state": state,
                    "trials": numbers,
                }
            )

    def is_lora(c: dict[str, Any]) -> bool:
        return _isclose(c["ratio"], 1.0) if axis == "ratio" else _isclose(c["lr_b"], c["lr_a"])

    best = _pick(cells, sign)
    best_lora = _pick([c for c in cells if is_lora(c)], sign)
    gain = None
    if best is not None and best_lora is not None:
        gain = sign * (best["mean"] - best_lora["mean"])
    budget = None
    if record.get("budget"):
        fixed = float(record["budget_ratio"])
        plus = _pick([c for c in cells if _isclose(c["ratio"], fixed)], sign)
        budget = {
            "ratio": fixed,
            "trials_each": len(lr_a) * len(seeds),
            "best_loraplus": plus,
            "best_lora": best_lora,
            "gain": None
            if plus is None or best_lora is None
            else sign * (plus["mean"] - best_lora["mean"]),
        }
    return SweepSummary(
        study_name=study.study_name,
        metric=metric,
        direction=direction,
        axis=axis,
        lr_a=lr_a,
        y=ys,
        seeds=seeds,
        cells=cells,
        trials=rows,
        best=best,
        best_lora=best_lora,
        gain=gain,
        budget=budget,
        counts=dict(Counter(r["status"] for r in rows)),
    )


def write_outputs(summary: SweepSummary, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write sweep.json (every trial, every cell, the best cells, the gain) and
    sweep_heatmap.png (Figure 3 style) into `out_dir`, atomically; return their paths."""
    from loraplus._io import write_json
    from loraplus.plots import plot_sweep_heatmap

    out = Path(out_dir).expanduser()
    paths = {"json": write_json(out / "sweep.json", summary.to_dict())}
    paths["heatmap"] = plot_sweep_heatmap(out / "sweep_heatmap.png", summary.heatmap())
    return paths


def load_summary(path: str | os.PathLike[str]) -> SweepSummary:
    """A SweepSummary from a sweep.json written by `write_outputs`."""
    return SweepSummary.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
