"""Run a study: its stages in order, each as `loraplus.sweep` sweeps or tunes, planned from the
results of the stages before it.

    StudyConfig --plan_runs(stage, earlier)--> the stage's runs (SweepConfig / TuneConfig each)
        --run_study--> run_sweep / tune (resumable Optuna studies under cfg.runs) --> StudyResult
        --> outputs copied to cfg.out, results.json + results.md, the study's own report

Planning is pure (`plan_runs`, `stage_cells`): given the trial rows of earlier runs (sweep.json /
tune.json "trials"), it says which cells a stage trains, so a test can check a config against
committed results without training anything.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplus.lr_search import Point
from loraplus.study.config import Stage, StudyConfig, _label, _ref, function, is_function
from loraplus.sweep import (
    SweepConfig,
    SweepSummary,
    TrialSpec,
    TuneConfig,
    TuneSummary,
    load_summary,
    load_tune,
    plan,
    run_sweep,
    tune,
)
from loraplus.sweep.grid import HOLDING
from loraplus.train import TrainConfig, TrainResult

log = logging.getLogger(__name__)
Rows = list[dict[str, Any]]


@dataclass
class Run:
    """One study of a stage: its name (the Optuna study and folder), its sweep or tune config,
    the stage-level `each` value it runs (None without one) and its label ("" or an `at` cell)."""

    name: str
    stage: str
    kind: str
    config: SweepConfig | TuneConfig
    each: Any = None
    label: str = ""


@dataclass
class Done:
    """A run and its results: trial rows (sweep.json / tune.json "trials") and, when it ran or
    was read back, its summary."""

    run: Run
    rows: Rows
    summary: SweepSummary | TuneSummary | None = None


@dataclass(frozen=True)
class Cell:
    """One training run a stage plans: its study, lr_A, the second axis and value, seed, and the
    training overrides; `train_config()` is the TrainConfig it trains with."""

    run: str
    lr_a: float
    axis: str
    value: Any
    seed: int
    overrides: tuple[tuple[str, Any], ...] = ()

    def train_config(self, output_dir: str = "out") -> TrainConfig:
        """The cell's TrainConfig, built as the sweep's trial builds it."""
        method = self.value if self.axis == "method" else None
        ratio = self.value if self.axis == "ratio" else None
        setting = {} if self.axis in ("ratio", "method") else {self.axis: self.value}
        if method is not None:
            from loraplus.train.methods import method_settings

            ratio = method_settings(method)["ratio"]
        spec = TrialSpec(
            0,
            self.lr_a,
            ratio,
            self.seed,
            Path(output_dir),
            None,
            dict(self.overrides),
            method=method,
            setting=setting,
        )
        return spec.train_config()


@dataclass
class StudyResult:
    """What a study produced: per stage the runs done (in order), and its config."""

    cfg: StudyConfig
    stages: dict[str, list[Done]] = field(default_factory=dict)

    def runs(self, stage: str, group: str = "") -> list[Done]:
        """The runs of a stage: by its full name, or by its name in the file and the top-level
        `each` value (group) it ran for."""
        name = f"{group}-{stage}" if group else stage
        return self.stages.get(name, [])

    def groups(self) -> list[str]:
        """The top-level `each` values, in order ([""] without one)."""
        return list(dict.fromkeys(s.group for s in self.cfg.stages if s.group)) or [""]


# --- planning (pure) -----------------------------------------------------------------------------


def _sign(metric: str) -> float:
    return -1.0 if metric == "eval_loss" else 1.0


def cell_means(rows: Rows, axis: str) -> dict[tuple[float, Any], float]:
    """(lr_a, axis value) -> mean value over seeds, for cells whose every held run completed
    (an attempt that crashed and ran again does not count)."""
    groups: dict[tuple[float, Any], list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] in HOLDING:
            groups.setdefault((row["lr_a"], row.get(axis)), []).append(row)
    return {
        key: statistics.fmean(r["value"] for r in got)
        for key, got in sorted(groups.items(), key=lambda kv: kv[0][0])
        if all(r["status"] == "complete" and r["value"] is not None for r in got)
    }


def best_per_value(rows: Rows, axis: str, metric: str) -> dict[Any, tuple[float, float]]:
    """Per value of the second axis: (lr_a, mean) of its best complete cell (first on ties)."""
    sign = _sign(metric)
    found: dict[Any, tuple[float, float]] = {}
    for (lr, value), mean in cell_means(rows, axis).items():
        if value not in found or sign * mean > sign * found[value][1]:
            found[value] = (lr, mean)
    return found


def tune_results(rows: Rows, method: str) -> dict[Point, float | None]:
    """A method's (lr_a, seed) -> value (None: diverged or errored) from tune rows."""
    return {
        (r["lr_a"], r["seed"]): (r["value"] if r["status"] == "complete" else None)
        for r in rows
        if r.get("method") == method and r["status"] in HOLDING
    }


def chosen(done: Done) -> list[dict[str, Any]]:
    """A tune run's chosen cell per method: method, lr_a, mean over seeds, the first seed's line
    (lr_a -> value)."""
    cfg = done.run.config
    assert isinstance(cfg, TuneConfig)
    found = []
    for method in cfg.method:
        results = tune_results(done.rows, method)
        picked = plan(cfg.search(method), results).chosen
        values = [v for (lr, _), v in results.items() if lr == picked and v is not None]
        line = {lr: v for (lr, seed), v in results.items() if seed == cfg.seeds[0]}
        mean = statistics.fmean(values) if values else None
        found.append(
            {
                "method": method,
                "lr_a": picked,
                "mean": mean,
                "values": values,
                "line": dict(sorted(line.items())),
            }
        )
    return found


def run_best(done: Done) -> float | None:
    """The best value of a run: a sweep's best complete cell, a tune's best chosen cell."""
    sign = _sign(done.run.config.metric)
    if done.run.kind == "tune":
        means = [c["mean"] for c in chosen(done) if c["mean"] is not None]
    else:
        means = list(cell_means(done.rows, done.run.config.axis).values())  # type: ignore[union-attr]
    return max(means, key=lambda m: sign * m) if means else None


def best_each(stage: Stage, done: Sequence[Done]) -> Any:
    """The value of the stage's `each` field whose runs scored best (mean over its runs of each
    run's best; the first value on ties); ValueError when no run has a value."""
    assert stage.each is not None
    scores = {}
    for k, value in enumerate(stage.each[1]):
        bests = [run_best(d) for d in done if d.run.each == value]
        if bests and all(b is not None for b in bests):
            scores[k] = statistics.fmean(b for b in bests if b is not None)
    if not scores:
        raise ValueError(f"stage {stage.name!r} has no complete run to choose its best from.")
    sign = _sign(done[0].run.config.metric)
    return stage.each[1][max(scores, key=lambda k: sign * scores[k])]


def _at_cells(
    cfg: StudyConfig, stage: Stage, earlier: Mapping[str, Sequence[Done]]
) -> list[dict[str, Any]]:
    """The cells an `at` stage runs at: {label, lr_a, and method | ratio | axis setting}."""
    if is_function(stage.at):
        return list(function(str(stage.at), "at", cfg.path)(cfg, stage, earlier))
    if isinstance(stage.at, list):
        return [{"label": _label(c.get("method") or f"ratio{c['ratio']:g}"), **c} for c in stage.at]
    assert stage.at is not None
    source = cfg.stage(stage.at)
    cells = []
    for done in earlier[stage.at]:
        if source.kind == "tune":
            for row in chosen(done):
                if row["lr_a"] is None:
                    continue
                cells.append({"label": row["method"], "lr_a": row["lr_a"], "method": row["method"]})
                if stage.near is not None and row["mean"] is not None:
                    sign = _sign(done.run.config.metric)
                    best = row["line"].get(row["lr_a"])
                    for lr, value in row["line"].items():
                        if (
                            lr != row["lr_a"]
                            and value is not None
                            and best is not None
                            and sign * (best - value) <= stage.near
                        ):
                            label = f"{row['method']}-lr{lr:g}"
                            cells.append({"label": label, "lr_a": lr, "method": row["method"]})
        else:
            axis = done.run.config.axis  # type: ignore[union-attr]
            for value, (lr, _) in best_per_value(done.rows, axis, done.run.config.metric).items():
                key = {"ratio": "ratio", "method": "method"}.get(axis, "axis")
                setting = value if key != "axis" else f"{axis}={value}"
                label = value if axis == "method" else f"{axis}{_label(value)}"
                cells.append({"label": str(label), "lr_a": lr, key: setting})
    return cells


def plan_runs(cfg: StudyConfig, stage: Stage, earlier: Mapping[str, Sequence[Done]]) -> list[Run]:
    """The runs of `stage`, given the runs of the stages before it (`earlier`, by stage name).
    KeyError names the first earlier stage whose results are missing."""
    for ref in stage.references():
        if ref not in earlier:
            raise KeyError(ref)
    train = dict(stage.train)
    for key, value in stage.train.items():
        if (match := _ref(value)) is not None:
            train[key] = best_each(cfg.stage(match.group(1)), earlier[match.group(1)])
    values: list[Any] = [None] if stage.each is None else list(stage.each[1])
    cells: list[Any] = [None] if stage.at is None else _at_cells(cfg, stage, earlier)
    runs = []
    for value, cell in itertools.product(values, cells):
        name = stage.name + ("" if value is None else f"-{_label(value)}")
        overrides = dict(train)
        if value is not None:
            overrides[stage.each[0]] = value  # type: ignore[index]
        fields = dict(stage.fields)
        label = ""
        if cell is not None:
            label = cell["label"]
            name += f"-{label}"
            fields["lr_a"] = [cell["lr_a"]]
            if "method" in cell:
                fields["method"] = [cell["method"]]
            elif "ratio" in cell:
                fields["ratios"] = [cell["ratio"]]
            else:
                fields["field_axis"] = cell["axis"]
        out_dir = str(cfg.runs / name)
        config = (SweepConfig if stage.kind == "sweep" else TuneConfig)(
            **fields, overrides=overrides, study_name=name, out_dir=out_dir
        )
        runs.append(Run(name, stage.name, stage.kind, config, value, label))
    return runs


def run_cells(run: Run, rows: Rows | None = None) -> list[Cell]:
    """The cells a run trains: a sweep's grid; a tune's search so far given its own `rows`
    (without rows: its first line)."""
    cfg = run.config
    overrides = tuple(sorted(cfg.overrides.items(), key=lambda kv: kv[0]))
    overrides = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides)
    if isinstance(cfg, SweepConfig):
        return [
            Cell(run.name, lr, cfg.axis, y, seed, overrides)
            for lr, y, seed in itertools.product(cfg.lr_a, cfg.y, cfg.seeds)
        ]
    cells = []
    for method in cfg.method:
        for lr, seed in plan(cfg.search(method), tune_results(rows or [], method)).runs:
            cells.append(Cell(run.name, lr, "method", method, seed, overrides))
    return cells


def stage_cells(
    cfg: StudyConfig, stage: Stage, earlier: Mapping[str, Sequence[Done]]
) -> list[Cell]:
    """Every cell `stage` trains given `earlier` (a tune's own rows may be in earlier[stage])."""
    own = {d.run.name: d.rows for d in earlier.get(stage.name, [])}
    return [c for r in plan_runs(cfg, stage, earlier) for c in run_cells(r, own.get(r.name))]


# --- running -------------------------------------------------------------------------------------


def rows_of(summary: SweepSummary | TuneSummary) -> Rows:
    """The trial rows of a summary (a tune's, every method's)."""
    if isinstance(summary, TuneSummary):
        return [t for m in summary.methods for t in m["trials"]]
    return [t for t in summary.trials if t["status"] in HOLDING]


def _outputs(run: Run) -> dict[str, str]:
    """The files a run's study writes -> the names they get in the study's out folder."""
    if run.kind == "tune":
        return {"tune.json": f"{run.name}_tune.json", "tune.png": f"{run.name}_tune.png"}
    return {
        "sweep.json": f"{run.name}_sweep.json",
        "sweep_heatmap.png": f"{run.name}_sweep_heatmap.png",
    }


def read_done(cfg: StudyConfig, run: Run) -> Done | None:
    """A run's results read back from the out folder (None when it has not written them)."""
    name = _outputs(run)["tune.json" if run.kind == "tune" else "sweep.json"]
    path = cfg.out / name
    if not path.is_file():
        return None
    summary = load_tune(path) if run.kind == "tune" else load_summary(path)
    return Done(run, rows_of(summary), summary)


def _configure(run: Run, storage: str | None, workers: int | None) -> Run:
    """The run with the CLI's storage / workers."""
    import dataclasses

    changes: dict[str, Any] = {}
    if storage:
        changes["storage"] = storage
    if workers:
        changes["workers"] = workers
    return (
        dataclasses.replace(run, config=dataclasses.replace(run.config, **changes))
        if changes
        else run
    )


def execute(cfg: StudyConfig, run: Run) -> Done:
    """Train (or resume) one run; copy its outputs into cfg.out."""
    if isinstance(run.config, TuneConfig):
        summary: SweepSummary | TuneSummary = tune(run.config)
    else:
        summary = run_sweep(run.config)
    cfg.out.mkdir(parents=True, exist_ok=True)
    for source, target in _outputs(run).items():
        path = Path(run.config.out_dir) / source
        if path.is_file():
            tmp = cfg.out / f".{target}.tmp"
            shutil.copyfile(path, tmp)
            tmp.replace(cfg.out / target)
    return Done(run, rows_of(summary), summary)


def prepared(cfg: StudyConfig, write: bool) -> StudyConfig:
    """The study with its `prepare` function's overrides in every stage's training settings
    (`write`: let it write what it prepares; False for a dry run)."""
    import dataclasses

    if cfg.prepare is None:
        return cfg
    extra = function(cfg.prepare, "prepare", cfg.path)(cfg, write)
    stages = [dataclasses.replace(s, train={**s.train, **extra}) for s in cfg.stages]
    return dataclasses.replace(cfg, stages=stages)


def run_study(
    cfg: StudyConfig,
    stages: Sequence[str] | None = None,
    *,
    storage: str | None = None,
    workers: int | None = None,
) -> StudyResult:
    """Run the selected stages (default all) in order; a stage not selected is read back from
    cfg.out when a later one needs it (report.write_report writes what the result shows).
    ValueError when a selected stage needs results not there."""
    selected = set(cfg.select(stages))
    cfg = prepared(cfg, write=True)
    result = StudyResult(cfg)
    for stage in cfg.stages:
        try:
            runs = plan_runs(cfg, stage, result.stages)
        except KeyError as missing:
            if stage.name in selected:
                raise ValueError(
                    f"stage {stage.name!r} needs the results of stage {missing.args[0]!r}, which "
                    f"are not in {cfg.out}: run that stage first (--stage {missing.args[0]})."
                ) from None
            continue
        done: list[Done] = []
        for run in runs:
            if stage.name in selected:
                log.info("study %s: run %s", cfg.title, run.name)
                done.append(execute(cfg, _configure(run, storage, workers)))
            elif (found := read_done(cfg, run)) is not None:
                done.append(found)
        if stage.name in selected or len(done) == len(runs):
            result.stages[stage.name] = done
    return result


def records(done: Done) -> dict[tuple[float, Any, int], TrainResult]:
    """(lr_a, second-axis value, seed) -> the run's record (metrics.json), for every run of
    `done` that wrote one (a tune row names its folder; a sweep's is its grid's trial folder)."""
    from loraplus.sweep import Grid
    from loraplus.train.record import RECORD_FILE, read_record

    axis = "method" if done.run.kind == "tune" else done.run.config.axis  # type: ignore[union-attr]
    found = {}
    for row in done.rows:
        folder = Path(row["dir"]) if row.get("dir") else None
        if folder is None and isinstance(done.run.config, SweepConfig):
            folder = Grid.of(done.run.config).trial_dir(row["number"])
        if folder is not None and (folder / RECORD_FILE).is_file():
            found[(row["lr_a"], row.get(axis), row["seed"])] = read_record(folder)
    return found


def planned(cfg: StudyConfig, stages: Sequence[str] | None = None) -> dict[str, list[Cell] | None]:
    """--dry-run: per selected stage the cells it would train now (None: an earlier stage's
    results are not in cfg.out yet). Reads results, trains nothing."""
    selected = set(cfg.select(stages))
    cfg = prepared(cfg, write=False)
    earlier: dict[str, list[Done]] = {}
    found: dict[str, list[Cell] | None] = {}
    for stage in cfg.stages:
        try:
            runs = plan_runs(cfg, stage, earlier)
        except KeyError:
            if stage.name in selected:
                found[stage.name] = None
            continue
        done = [d for r in runs if (d := read_done(cfg, r)) is not None]
        if len(done) == len(runs):
            earlier[stage.name] = done
        if stage.name in selected:
            rows = {d.run.name: d.rows for d in done}
            found[stage.name] = [c for r in runs for c in run_cells(r, rows.get(r.name))]
    return found
