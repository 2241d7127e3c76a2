"""Workers: processes that take queued cells from the study and train them until none is left."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from loraplus.sweep.alive import fail_dead_workers
from loraplus.sweep.config import SweepConfig
from loraplus.sweep.grid import Grid, open_study
from loraplus.sweep.summary import SUBJECT_ATTR, SweepSummary, subject, summarize, write_outputs
from loraplus.sweep.trial import TrainFn, TrialSpec, objective, train_trial

log = logging.getLogger(__name__)


def run_worker(
    cfg: SweepConfig, n_trials: int | None = None, *, train_fn: TrainFn | None = None
) -> int:
    """Run cells of the sweep's study in this process until none is left to start (or
    `n_trials` were started); return how many this worker trained. Start it on several
    processes or machines with the same storage URL to share the grid."""
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"n_trials must be >= 1 or None, got {n_trials}.")
    study, grid = open_study(cfg)
    resume(study, grid)
    return _work(cfg, study, grid, n_trials, train_fn)


def resume(study: optuna.Study, grid: Grid, retry_errors_before: int = 0) -> None:
    """Fail trials whose worker on this machine is gone or whose heartbeat went stale, then
    queue every cell of `grid` no trial holds (see Grid.requeue)."""
    fail_dead_workers(study, grid.out_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    grid.requeue(study, retry_errors_before)


def _waiting(study: optuna.Study) -> bool:
    """Whether a queued cell is left to take."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _work(
    cfg: SweepConfig,
    study: optuna.Study,
    grid: Grid,
    n_trials: int | None,
    train_fn: TrainFn | None,
) -> int:
    """The worker loop of `run_worker` on an opened study."""
    if not _waiting(study):
        return 0
    ran: list[int] = []

    def stop_when_empty(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not _waiting(study):
            study.stop()

    study.optimize(
        objective(cfg, grid, train_fn or train_trial, ran),
        n_trials=n_trials,
        catch=(Exception,),
        callbacks=[stop_when_empty],
        gc_after_trial=train_fn is None,
    )
    return len(ran)


def _worker_main(cfg: SweepConfig, n_trials: int | None, train_fn: TrainFn | None) -> None:
    """Entry point of a spawned worker process (the parent already re-queued free cells)."""
    logging.basicConfig(level=logging.INFO, format="%(processName)s %(levelname)s %(message)s")
    study, grid = open_study(dataclasses.replace(cfg, retry_failed=False))
    _work(cfg, study, grid, n_trials, train_fn)


def train_subject(cfg: SweepConfig) -> str:
    """Model, data and steps of the sweep's cells, for the heatmap's title."""
    spec = TrialSpec(0, cfg.lr_a[0], 1.0, cfg.seeds[0], Path(cfg.out_dir), cfg.config)
    return subject(dataclasses.replace(spec, overrides=cfg.overrides).train_config())


def _check_task(cfg: SweepConfig) -> None:
    """Fail before the first run when the metric cannot come from the task."""
    spec = TrialSpec(0, cfg.lr_a[0], 1.0, cfg.seeds[0], Path(cfg.out_dir), cfg.config)
    train_cfg = spec.train_config()
    from loraplus.train.checks import check_paths

    check_paths(train_cfg)  # --model / --data exist, before any trial is recorded
    if cfg.axis not in ("ratio", "lr_b", "method"):  # --axis: every value makes a valid config
        for value in cfg.y:
            setting = {cfg.axis: value}
            replace = dataclasses.replace
            replace(spec, ratio=None, overrides=cfg.overrides, setting=setting).train_config()
    if train_cfg.task != "classification" and cfg.metric == "eval_accuracy":
        raise ValueError(f"metric eval_accuracy needs task classification (got {train_cfg.task}).")


def spawn(target: Callable[..., None], args: tuple[Any, ...], workers: int) -> list[str]:
    """Run `workers` spawned processes of target(*args) (a module-level function) to the end;
    the names of those that failed. Ctrl-C waits for them (30 s), then stops them."""
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=target, args=args, name=f"sweep-worker-{k}") for k in range(workers)
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
    return [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode != 0]


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
    study, grid = open_study(cfg)  # creates tables, the study and its queue before workers race
    if train_fn is None:  # an injected train_fn (tests) takes settings no TrainConfig has
        study.set_user_attr(SUBJECT_ATTR, train_subject(cfg))  # the heatmap's title
    resume(study, grid)
    failed: list[str] = []
    if workers == 1:
        _work(cfg, study, grid, n_trials, train_fn)
    else:
        failed = spawn(_worker_main, (cfg, n_trials, train_fn), workers)
    summary = summarize(study)
    if write:
        write_outputs(summary, cfg.out_dir)
    if failed:
        raise RuntimeError(f"Sweep worker(s) failed: {', '.join(failed)}; see their log.")
    counts = summary.counts
    if not counts.get("complete") and counts.get("error"):
        trials = study.get_trials(deepcopy=False)
        errors = [t for t in trials if t.user_attrs.get("status") == "error"]
        first = errors[0].user_attrs.get("error")
        if all(t.user_attrs.get("input_error") for t in errors):
            raise ValueError(
                f"Every trial of the sweep failed on its input; the first: {first}. Fix it and "
                "run the sweep again: the cells that failed so are run again."
            )
        raise RuntimeError(f"Every trial of the sweep failed; first error: {first}")
    return summary
