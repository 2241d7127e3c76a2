"""How cells are handed out exactly once, on Optuna's public API only.

The process that creates the study (creation is atomic: everyone else gets DuplicatedStudyError)
enqueues every cell once as a WAITING trial (`study.enqueue_trial`, the cell in user attr "cell")
and then publishes the grid (study user attr `STUDY_ATTR`); the others wait for it. Workers take
cells with `study.ask()`, which moves one WAITING trial to RUNNING atomically (a row lock on
PostgreSQL/MySQL, BEGIN IMMEDIATE on SQLite, see `make_storage`).

A cell is *held* by a trial that is WAITING or RUNNING, or finished COMPLETE, PRUNED, diverged or
errored (an error is released when a later start retries errors; an error on the run's
input, such as a bad --data file, is released at once, so the next start runs the cell again).
Interrupted (Ctrl-C) and crashed trials (their worker gone: at once on this machine, see
alive.py; after 2 heartbeats on another) hold nothing: `requeue` enqueues their cells again, when
a worker starts and when Optuna fails a stale trial. Two processes may requeue the same cell at
once; `claim` resolves that when a worker takes a trial: it runs the cell only if
no other trial holds it finished and no lower-numbered trial of the cell is WAITING or RUNNING,
else records the trial as "duplicate". So at most one attempt per cell runs to a held result.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from loraplus.sweep.config import SweepConfig, make_storage, storage_error

log = logging.getLogger(__name__)

STUDY_ATTR = "loraplus_sweep"  # study user attr: the grid, metric and mode of the sweep
HOLDING = ("complete", "pruned", "diverged", "error")  # finished statuses that keep a cell taken
SKIPPED = ("idle", "duplicate")  # trials that ran no cell
Cell = tuple[float, Any, int]  # (lr_a, ratio | lr_b | method | a field's value, seed)


def status_of(trial: FrozenTrial) -> str:
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


def cell_of(attrs: Mapping[str, Any]) -> Cell | None:
    """The cell in a trial's user attrs, None if it has none (an idle trial)."""
    cell = attrs.get("cell")
    if isinstance(cell, (list, tuple)) and len(cell) == 3:
        second = cell[
            1
        ]  # a ratio / lr_B (float), method name, or --axis value: JSON keeps its type
        return (float(cell[0]), second, int(cell[2]))
    return None


def holds(trial: FrozenTrial, retry_errors_before: int = 0) -> bool:
    """Whether `trial` keeps its cell from being handed out again."""
    if trial.state in (TrialState.WAITING, TrialState.RUNNING):
        return True
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    status = status_of(trial)
    if status == "error":
        if trial.user_attrs.get("input_error"):
            return False  # refused input (bad --data, ...): retried once the input is fixed
        return trial.number >= retry_errors_before
    return status in HOLDING


@dataclass(frozen=True)
class Grid:
    """The cells of a sweep in run order (lr_a, then the second axis, then seed)."""

    axis: str
    cells: tuple[Cell, ...]
    out_dir: Path

    @classmethod
    def of(cls, cfg: SweepConfig) -> Grid:
        """The grid of a SweepConfig."""
        cells = itertools.product(cfg.lr_a, cfg.y, cfg.seeds)
        return cls(cfg.axis, tuple(cells), Path(cfg.out_dir).expanduser())

    def params(self, cell: Cell) -> dict[str, Any]:
        """The Optuna params of a cell."""
        return {"lr_a": cell[0], self.axis: cell[1], "seed": cell[2]}

    def trial_dir(self, number: int) -> Path:
        """The output folder of trial `number`."""
        return self.out_dir / "trials" / f"trial_{number:04d}"

    def enqueue(self, study: optuna.Study, cell: Cell, retry_errors_before: int = 0) -> None:
        """Queue one attempt at `cell`."""
        attrs = {"cell": list(cell), "retry_errors_before": retry_errors_before}
        study.enqueue_trial(self.params(cell), user_attrs=attrs)

    def requeue(self, study: optuna.Study, retry_errors_before: int = 0) -> list[Cell]:
        """Enqueue every cell no trial holds (errors below `retry_errors_before` do not hold);
        remove the folders of interrupted and crashed trials. Return the cells queued."""
        trials = study.get_trials(deepcopy=False)
        held = {cell_of(t.user_attrs) for t in trials if holds(t, retry_errors_before)}
        for t in trials:
            if t.state == TrialState.FAIL and status_of(t) in ("interrupted", "crashed"):
                shutil.rmtree(self.trial_dir(t.number), ignore_errors=True)
        free = [c for c in self.cells if c not in held]
        for cell in free:
            self.enqueue(study, cell, retry_errors_before)
        if free:
            log.info("Queued %d cell(s) again: %s", len(free), free)
        return free

    def claim(self, study: optuna.Study, number: int, attrs: Mapping[str, Any]) -> int | None:
        """None when trial `number` (just taken, user attrs `attrs`) may run its cell, else the
        number of the trial that has it (this one is a duplicate)."""
        cell = cell_of(attrs)
        before = int(attrs.get("retry_errors_before", 0))
        for t in study.get_trials(deepcopy=False):
            if t.number == number or cell_of(t.user_attrs) != cell:
                continue
            if t.state.is_finished() and holds(t, before):
                return t.number
            if t.number < number and t.state in (TrialState.WAITING, TrialState.RUNNING):
                return t.number
        return None

    def cell_of(self, trial: FrozenTrial) -> Cell | None:
        """The cell of a trial of this grid."""
        return cell_of(trial.user_attrs)


def _requeue_stale(grid: Grid, study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat-stale-trial callback: the stale trial's cell is queued again."""
    log.warning("Trial %d stopped beating (process or machine gone): re-queued.", trial.number)
    grid.requeue(study)


def _pruner(cfg: SweepConfig) -> optuna.pruners.BasePruner:
    """MedianPruner (after 5 finished trials) or none."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def open_study(
    cfg: SweepConfig, *, retry_errors_before: int | None = None
) -> tuple[optuna.Study, Grid]:
    """Create the sweep's study and queue its grid, or load it (made for the same grid, or
    ValueError). With `cfg.retry_failed`, errored cells of trials numbered below
    `retry_errors_before` (default: every trial so far) are queued again."""
    grid = Grid.of(cfg)
    storage = make_storage(
        cfg.storage_url,
        heartbeat_s=cfg.heartbeat_s,
        stale_trial_callback=partial(_requeue_stale, grid),
    )
    settings: dict[str, Any] = {
        "storage": storage,
        "sampler": optuna.samplers.RandomSampler(seed=0),  # every param is fixed by the queue
        "pruner": _pruner(cfg),
        "study_name": cfg.study_name,
    }
    try:
        return _create_or_load(cfg, grid, settings, retry_errors_before)
    except SQLAlchemyError as err:  # opened, but the database refuses the study's tables or rows
        raise storage_error(cfg.storage_url, err) from None


def _create_or_load(
    cfg: SweepConfig, grid: Grid, settings: dict[str, Any], retry_errors_before: int | None
) -> tuple[optuna.Study, Grid]:
    """open_study's work once the storage is open."""
    try:
        direction = (
            StudyDirection.MAXIMIZE if cfg.direction == "maximize" else StudyDirection.MINIMIZE
        )
        study = optuna.create_study(direction=direction, load_if_exists=False, **settings)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**settings)
        _check(cfg, study, _published(cfg, study))
        if cfg.retry_failed:
            last = len(study.get_trials(deepcopy=False))
            grid.requeue(study, last if retry_errors_before is None else retry_errors_before)
        return study, grid
    for cell in grid.cells:
        grid.enqueue(study, cell)
    study.set_user_attr(STUDY_ATTR, cfg.record())
    return study, grid


def _published(cfg: SweepConfig, study: optuna.Study) -> dict[str, Any]:
    """The grid record of a study another process created (waiting for it to be published)."""
    deadline = time.monotonic() + cfg.publish_timeout_s
    while (record := study.user_attrs.get(STUDY_ATTR)) is None:
        if time.monotonic() > deadline:
            raise ValueError(
                f"Study {cfg.study_name!r} in {cfg.storage_url} has no published grid after "
                f"{cfg.publish_timeout_s:g} s (its creator stopped while queueing it, or it is "
                "not a loraplus sweep): delete it (optuna delete-study) or pass another study name."
            )
        time.sleep(0.05)
    return dict(record)


def _check(cfg: SweepConfig, study: optuna.Study, stored: dict[str, Any]) -> None:
    """ValueError when the stored study was made for another sweep."""
    if study.direction.name.lower() != cfg.direction:
        raise ValueError(
            f"Study {cfg.study_name!r} in {cfg.storage_url} maximizes/minimizes differently "
            f"({study.direction.name.lower()}) from metric {cfg.metric}: use another study name."
        )
    mine = cfg.record()
    if stored.get("version") != mine["version"]:
        raise ValueError(
            f"Study {cfg.study_name!r} in {cfg.storage_url} was made by another loraplus version "
            f"(sweep record {stored.get('version')}, this one writes {mine['version']}): finish it "
            "with that version, or pass another study name / storage."
        )
    if stored != mine:
        diff = sorted(k for k in set(mine) | set(stored) if mine.get(k) != stored.get(k))
        raise ValueError(
            f"Study {cfg.study_name!r} in {cfg.storage_url} was made for another sweep "
            f"(differs in {', '.join(diff)}): resume it with the same grid and metric, or pass "
            "another study name / storage."
        )
