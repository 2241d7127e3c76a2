"""Find each method's learning rate: an adaptive lr_A line search, every run a cell of one study.

Per method (the names `loraplus sweep --method` takes): a line of three lr_A values `step` apart
around a centre, at the first seed; while the best sits on an edge of what was tried, one more lr_A
`step` past that edge (at most `extend` times; a line that only diverged goes down); with `refine`,
the best lr_A times and divided by sqrt(step); then the other seeds at the chosen lr_A. At most
`max_runs` runs per method: the search stops where its budget ends and keeps the best so far.

The search is a pure function of the results so far (`loraplus.lr_search.plan`), so the Optuna
study is its only state: each round queues the next cells of every method into one study (grid.py:
every cell runs exactly once, across processes and machines; crashed cells run again), runs them
with the sweep's workers, and plans again. A call that finds every planned cell done trains
nothing; a call killed at any moment resumes where it stopped. Results: TuneSummary, written as
tune.json + tune.png.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from loraplus._io import from_dict
from loraplus.groups import as_float
from loraplus.lr_search import Plan, Point, Search, mean_std, plan
from loraplus.sweep.config import METRICS, SweepConfig, _methods, _seeds, make_storage
from loraplus.sweep.grid import STUDY_ATTR, Grid, cell_of, holds, status_of
from loraplus.sweep.run import _check_task, _waiting, _work, resume, spawn
from loraplus.sweep.summary import trial_row
from loraplus.sweep.trial import TrainFn

DEFAULT_METHODS = ("lora", "loraplus")
LR_RANGE = (1e-12, 1e3)  # Optuna's range for lr_a; the queue fixes each cell's value
RECORD_VERSION = 1


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TuneConfig:
    """What to tune (methods, the search, seeds, budget), on which training config, in which study.

    The training settings are a TrainConfig file (`config`) plus `overrides`, as for a sweep;
    lr, ratio and seed are set per cell. `metric`: eval_accuracy (maximized) or eval_loss
    (minimized), a run's value being its best evaluation (see SweepConfig). `storage`,
    `study_name`, `workers`, `heartbeat_s`, `retry_failed`: as for a sweep."""

    method: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata=_help("methods to tune, as for sweep --method (e.g. lora loraplus ratio=4)"),
    )
    centre: float = field(default=2e-4, metadata=_help("lr_A in the middle of the first line"))
    centres: list[str] | None = field(
        default=None, metadata=_help("per-method centres METHOD=LR (e.g. lora=1e-3)")
    )
    step: float = field(default=4.0, metadata=_help("factor between neighbouring lr_A values"))
    extend: int = field(
        default=2, metadata=_help("at most this many lr_A values past an edge holding the best")
    )
    refine: bool = field(
        default=False, metadata=_help("then try the best lr_A times / divided by sqrt(step)")
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata=_help("the line runs the first seed, the chosen lr_A every seed"),
    )
    max_runs: int | None = field(default=None, metadata=_help("at most this many runs per method"))
    config: str | None = field(default=None, metadata=_help("YAML/TOML training settings"))
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    metric: str = field(default="eval_accuracy", metadata=_help("eval_accuracy or eval_loss"))
    storage: str | None = field(
        default=None, metadata=_help("sqlite:///... or postgresql://... (default: SQLite file)")
    )
    study_name: str = field(default="loraplus-tune", metadata=_help("study within the storage"))
    out_dir: str = field(default="runs/tune", metadata=_help("trials, tune.json and tune.png"))
    workers: int = field(default=1, metadata=_help("worker processes on this machine"))
    heartbeat_s: int | None = field(
        default=60, metadata=_help("seconds between heartbeats (stale after two)")
    )
    retry_failed: bool = field(default=False, metadata=_help("re-run cells that raised, once"))
    publish_timeout_s: float = field(
        default=60.0, metadata=_help("wait this long for another process's study")
    )

    def __post_init__(self) -> None:
        """Check every setting (the study's through its SweepConfig)."""
        self.method = _methods(self.method)
        self.centre = as_float(self.centre, "centre")
        self.step = as_float(self.step, "step")
        if not self.step > 1:
            raise ValueError(f"step must be > 1 (the factor between lr_A values), got {self.step}.")
        if int(self.extend) != self.extend or self.extend < 0:
            raise ValueError(f"extend must be an integer >= 0, got {self.extend!r}.")
        self.extend = int(self.extend)
        if self.max_runs is not None and (int(self.max_runs) != self.max_runs or self.max_runs < 1):
            raise ValueError(f"max_runs must be an integer >= 1 or None, got {self.max_runs!r}.")
        self.seeds = _seeds(self.seeds)
        self.overrides = {k.replace("-", "_"): v for k, v in dict(self.overrides).items()}
        if "lr" in self.overrides:
            raise ValueError(
                "tune sets lr per cell: drop --lr and give the line's middle as --centre "
                "(or --centres METHOD=LR)."
            )
        self._per_method = self._parse_centres()
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}.")
        self.sweep_config()  # the study's settings (storage, overrides, workers) checked once

    def _parse_centres(self) -> dict[str, float]:
        """--centres METHOD=LR as {canonical method: lr}; each method must be tuned here."""
        from loraplus.train.methods import canonical

        found: dict[str, float] = {}
        for item in (p for text in self.centres or [] for p in str(text).split()):
            name, sep, value = item.rpartition("=")  # ratio=4=1e-3: method ratio=4
            if not sep or not name:
                raise ValueError(f"centres takes METHOD=LR pairs (e.g. lora=1e-3), got {item!r}.")
            method = canonical(name)
            if method not in self.method:
                raise ValueError(
                    f"centres names {method}, which is not tuned here: add it to --method "
                    f"({' '.join(self.method)}) or drop it."
                )
            found[method] = as_float(value, f"centres[{method}]")
        return found

    def centre_of(self, method: str) -> float:
        """The middle of a method's first line."""
        return self._per_method.get(method, self.centre)

    @property
    def direction(self) -> str:
        """'maximize' for eval_accuracy, 'minimize' for eval_loss."""
        return METRICS[self.metric]

    def search(self, method: str) -> Search:
        """The search settings of one method."""
        sign = 1.0 if self.direction == "maximize" else -1.0
        return Search(
            self.centre_of(method),
            self.step,
            self.extend,
            self.refine,
            tuple(self.seeds),
            self.max_runs,
            sign,
        )

    def sweep_config(self) -> SweepConfig:
        """The method-axis SweepConfig every cell trains with (the queue fixes lr_a and seed)."""
        return SweepConfig(
            lr_a=list(LR_RANGE),
            method=list(self.method),
            seeds=list(self.seeds),
            config=self.config,
            overrides=dict(self.overrides),
            metric=self.metric,
            storage=self.storage,
            study_name=self.study_name,
            out_dir=self.out_dir,
            workers=self.workers,
            heartbeat_s=self.heartbeat_s,
            retry_failed=self.retry_failed,
            publish_timeout_s=self.publish_timeout_s,
        )

    def record(self) -> dict[str, Any]:
        """What the study remembers (checked when it is opened again). The search settings are
        not in it: a later call with another budget or extension goes on from the same runs."""
        return {
            "version": RECORD_VERSION,
            "kind": "tune",
            "method": list(self.method),
            "metric": self.metric,
            "direction": self.direction,
        }


# --- the study -----------------------------------------------------------------------------------


def _requeue_cell(out_dir: Path, study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat-stale-trial callback: the stale trial's cell is queued again."""
    cell = cell_of(trial.user_attrs)
    if cell is not None:
        Grid("method", (cell,), out_dir).requeue(study)


def _load(cfg: SweepConfig) -> tuple[optuna.Study, Grid]:
    """The tune study as a worker sees it (created and checked by `open_tune`)."""
    out_dir = Path(cfg.out_dir).expanduser()
    storage = make_storage(
        cfg.storage_url,
        heartbeat_s=cfg.heartbeat_s,
        stale_trial_callback=partial(_requeue_cell, out_dir),
    )
    study = optuna.load_study(
        study_name=cfg.study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(seed=0),  # every param is fixed by the queue
        pruner=optuna.pruners.NopPruner(),
    )
    return study, Grid("method", (), out_dir)


def open_tune(cfg: TuneConfig) -> tuple[optuna.Study, Grid]:
    """Create the tune's study, or load it (made for the same methods and metric, or
    ValueError); the Grid gives trial folders (its cells are queued round by round)."""
    sweep_cfg = cfg.sweep_config()
    direction = StudyDirection.MAXIMIZE if cfg.direction == "maximize" else StudyDirection.MINIMIZE
    storage = make_storage(sweep_cfg.storage_url)
    try:
        study = optuna.create_study(storage=storage, study_name=cfg.study_name, direction=direction)
        study.set_user_attr(STUDY_ATTR, cfg.record())
    except optuna.exceptions.DuplicatedStudyError:
        _check(cfg, optuna.load_study(study_name=cfg.study_name, storage=storage))
    return _load(sweep_cfg)


def _check(cfg: TuneConfig, study: optuna.Study) -> None:
    """ValueError unless `study` was made by a tune of the same methods and metric (waiting for
    the record of a study another process is creating)."""
    where = f"Study {cfg.study_name!r} in {cfg.sweep_config().storage_url}"
    deadline = time.monotonic() + cfg.publish_timeout_s
    while (stored := study.user_attrs.get(STUDY_ATTR)) is None:
        if time.monotonic() > deadline:
            raise ValueError(f"{where} is not a loraplus tune: pass another --study-name.")
        time.sleep(0.05)
    mine = cfg.record()
    if stored != mine:
        diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        kind = "tune" if stored.get("kind") == "tune" else "sweep"
        raise ValueError(
            f"{where} was made for another {kind} (differs in {', '.join(diff)}): repeat its "
            "--method and --metric, or pass another --study-name / --out-dir."
        )


def _results(
    trials: Sequence[FrozenTrial], retry_errors_before: int
) -> dict[str, dict[Point, float | None]]:
    """method -> {(lr_a, seed): value} of every cell with a held, finished trial (None: it ran
    and has no value: diverged, pruned or errored)."""
    found: dict[str, dict[Point, float | None]] = {}
    for t in trials:
        cell = cell_of(t.user_attrs)
        if cell is None or not t.state.is_finished() or not holds(t, retry_errors_before):
            continue
        value = t.user_attrs.get("value") if status_of(t) == "complete" else None
        found.setdefault(str(cell[1]), {})[(cell[0], cell[2])] = value
    return found


def _plans(cfg: TuneConfig, study: optuna.Study, retry_errors_before: int) -> dict[str, Plan]:
    """Every method's plan from the study's trials."""
    results = _results(study.get_trials(deepcopy=False), retry_errors_before)
    return {m: plan(cfg.search(m), results.get(m, {})) for m in cfg.method}


def _search(
    cfg: TuneConfig,
    study: optuna.Study,
    grid: Grid,
    train_fn: TrainFn | None,
    retry_errors_before: int,
    poll_s: float,
) -> dict[str, Plan]:
    """Plan, queue the cells no trial holds, run queued cells (or wait for those another
    process runs), until every method's search is done; the final plans. Any number of
    processes and machines may run this loop on one study at once."""
    sweep_cfg = cfg.sweep_config()
    while True:
        plans = _plans(cfg, study, retry_errors_before)
        todo = tuple((lr, m, seed) for m, p in plans.items() for lr, seed in p.todo)
        if not todo:
            return plans
        resume(study, Grid("method", todo, grid.out_dir), retry_errors_before)
        if _waiting(study):
            _work(sweep_cfg, study, grid, None, train_fn)
            _stop_if_all_failed(study)
        else:  # every cell left is running in another process
            time.sleep(poll_s)


def _tune_worker(
    cfg: TuneConfig, train_fn: TrainFn | None, retry_errors_before: int, poll_s: float
) -> None:
    """Entry point of a spawned worker process: the search loop on the parent's study."""
    logging.basicConfig(level=logging.INFO, format="%(processName)s %(levelname)s %(message)s")
    study, grid = _load(cfg.sweep_config())
    _search(cfg, study, grid, train_fn, retry_errors_before, poll_s)


def tune(
    cfg: TuneConfig,
    *,
    train_fn: TrainFn | None = None,
    write: bool = True,
    poll_s: float = 5.0,
) -> TuneSummary:
    """Run every method's search to its end, in this process or in cfg.workers spawned ones
    (cells another process is running are waited for, polling every `poll_s` seconds), then
    summarize it and (with `write`) write tune.json and tune.png into cfg.out_dir. Resuming =
    calling it again; a finished tune trains nothing."""
    if train_fn is None:
        _check_task(cfg.sweep_config())
    study, grid = open_tune(cfg)
    retry_before = len(study.get_trials(deepcopy=False)) if cfg.retry_failed else 0
    if cfg.workers == 1:
        plans = _search(cfg, study, grid, train_fn, retry_before, poll_s)
    else:
        failed = spawn(_tune_worker, (cfg, train_fn, retry_before, poll_s), cfg.workers)
        if failed:
            raise RuntimeError(f"Tune worker(s) failed: {', '.join(failed)}; see their log.")
        plans = _plans(cfg, study, retry_before)
    summary = summarize_tune(cfg, study, plans, grid)
    if write:
        write_tune(summary, cfg.out_dir)
    return summary


def _stop_if_all_failed(study: optuna.Study) -> None:
    """RuntimeError when no run so far finished and some raised (a broken set-up, not an lr)."""
    statuses = [(status_of(t), t) for t in study.get_trials(deepcopy=False)]
    errors = [t for s, t in statuses if s == "error"]
    if errors and not any(s in ("complete", "diverged", "pruned") for s, _ in statuses):
        raise RuntimeError(
            f"Every run of the tune failed; first error: {errors[0].user_attrs.get('error')}"
        )


# --- results -------------------------------------------------------------------------------------


@dataclass
class TuneSummary:
    """A tune's results: per method the chosen lr_A, its metric over seeds (mean, std, n,
    values), the first seed's line (lr_A -> value), the runs it used, whether the budget ended
    it, and every run (trial row plus the run's record, metrics.json, when it wrote one)."""

    study_name: str
    metric: str
    direction: str
    search: dict[str, Any]
    methods: list[dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (TuneSummary.from_dict rebuilds it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TuneSummary:
        """The summary from `to_dict()` / tune.json data."""
        return from_dict(cls, data)

    def method(self, name: str) -> dict[str, Any]:
        """The row of one method."""
        for row in self.methods:
            if row["method"] == name:
                return row
        raise KeyError(
            f"{name} was not tuned here ({', '.join(r['method'] for r in self.methods)})."
        )

    def table(self) -> str:
        """The printed table: method, chosen lr_A, metric mean ± std over seeds, runs."""
        head = ("method", "lr_A", f"{self.metric} (mean ± std)", "seeds", "runs")
        lines = [head]
        for row in self.methods:
            lr = "-" if row["lr_a"] is None else f"{row['lr_a']:.3g}"
            value = mean_std(row["values"], 4)
            runs = f"{row['runs']}{' (budget)' if row['budget_reached'] else ''}"
            lines.append((row["method"], lr, value, str(row["n"]), runs))
        widths = [max(len(line[k]) for line in lines) for k in range(len(head))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        )

    def figure(self) -> dict[str, Any]:
        """Plain data for plots.draw_tune."""
        return {
            "metric": self.metric,
            "direction": self.direction,
            "title": f"{self.study_name}: {self.metric} against lr_A",
            "methods": [
                {
                    "method": row["method"],
                    "line": [[p["lr_a"], p["value"]] for p in row["line"]],
                    "points": [
                        [r["lr_a"], r["value"]] for r in row["trials"] if r["value"] is not None
                    ],
                    "chosen": None if row["lr_a"] is None else [row["lr_a"], row["mean"]],
                }
                for row in self.methods
            ],
        }


def _method_row(
    method: str, plan_: Plan, held: Mapping[tuple[float, str, int], FrozenTrial], grid: Grid
) -> dict[str, Any]:
    """One method's row of tune.json."""
    from loraplus.train.methods import method_settings
    from loraplus.train.record import RECORD_FILE, read_record

    trials = []
    for lr, seed in plan_.runs:
        t = held.get((lr, method, seed))
        if t is None:
            continue
        row = trial_row(t, "method")
        folder = grid.trial_dir(t.number)
        row["dir"] = str(folder)
        found = (folder / RECORD_FILE).is_file()
        row["record"] = read_record(folder).to_dict() if found else None
        trials.append(row)
    seed0 = plan_.runs[0][1] if plan_.runs else None
    line = [
        {"lr_a": r["lr_a"], "value": r["value"], "status": r["status"]}
        for r in sorted(trials, key=lambda r: r["lr_a"])
        if r["seed"] == seed0
    ]
    values = [r["value"] for r in trials if r["lr_a"] == plan_.chosen]
    got = [v for v in values if v is not None]
    ratio = method_settings(method)["ratio"]
    chosen = plan_.chosen
    return {
        "method": method,
        "lr_a": chosen,
        "ratio": ratio,
        "lr_b": chosen * ratio if chosen is not None and isinstance(ratio, float) else None,
        "mean": statistics.fmean(got) if got else None,
        "std": statistics.stdev(got) if len(got) > 1 else (0.0 if got else None),
        "n": len(got),
        "values": values,
        "line": line,
        "runs": len(plan_.runs),
        "done": not plan_.todo,
        "budget_reached": plan_.budget_reached,
        "trials": trials,
    }


def summarize_tune(
    cfg: TuneConfig, study: optuna.Study, plans: Mapping[str, Plan], grid: Grid
) -> TuneSummary:
    """The TuneSummary of the study's runs that the plans used."""
    held: dict[tuple[float, str, int], FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        cell = cell_of(t.user_attrs)
        if cell is not None and t.state.is_finished() and holds(t):
            held[(cell[0], str(cell[1]), cell[2])] = t
    search = {
        "centre": {m: cfg.centre_of(m) for m in cfg.method},
        "step": cfg.step,
        "extend": cfg.extend,
        "refine": cfg.refine,
        "seeds": list(cfg.seeds),
        "max_runs": cfg.max_runs,
    }
    rows = [_method_row(m, plans[m], held, grid) for m in cfg.method]
    counts = Counter(status_of(t) for t in study.get_trials(deepcopy=False))
    return TuneSummary(study.study_name, cfg.metric, cfg.direction, search, rows, dict(counts))


def write_tune(summary: TuneSummary, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write tune.json and tune.png (metric against lr_A per method) into `out_dir`, atomically."""
    from loraplus._io import write_json
    from loraplus.plots import plot_tune

    out = Path(out_dir).expanduser()
    paths = {"json": write_json(out / "tune.json", summary.to_dict())}
    paths["figure"] = plot_tune(out / "tune.png", summary.figure())
    return paths


def load_tune(path: str | os.PathLike[str]) -> TuneSummary:
    """A TuneSummary from a tune.json written by `write_tune`."""
    return TuneSummary.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
