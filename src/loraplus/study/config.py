"""A study as data: a TOML file of stages over `loraplus.sweep` sweeps and tunes.

    title = "Init[1] against Init[2]"          # the report's heading
    runs = "runs/init"                          # studies and trial folders (SQLite per run)
    out = "docs/study/init"                     # copies of sweep.json / tune.json / figures,
                                                #   results.json and results.md
    report = "loraplus.study.paper:report"      # optional: an extra report, fn(result, out, **opts)
    report_options = { demo_lrs = "..." }       # optional: its keyword arguments
    prepare = "loraplus.study.decoder:prepare_data"  # optional: fn(cfg, write) -> TrainConfig
                                                #   overrides for every stage (e.g. a data folder
                                                #   it writes under runs), called before planning
    each = { data = ["rotten-tomatoes", "20newsgroups"] }  # optional: every stage once per value
                                                #   (named "<value>-<stage>"; references stay
                                                #   within the same value)

    [train]            # TrainConfig overrides shared by every stage (lr, ratio, seed: per cell)
    [smoke]            # TrainConfig overrides merged over [train] under --smoke

    [[stage]]
    name = "line"                 # unique; letters, digits, "-", "_"
    kind = "tune"                 # "sweep" (a grid) or "tune" (per method an lr_A line search)
    once = false                  # true: not repeated per value of the top-level `each`
    # the SweepConfig / TuneConfig fields, as in Python: lr_a, ratios, lr_b, method, axis
    # ("FIELD=V1,V2", SweepConfig.field_axis), seeds, budget, pruner, metric (sweep); method,
    # centre, centres, step, extend, refine, seeds, max_runs, metric (tune); ...
    each = { lr_roles = [["head=0.001"], ["head=0.004"]] }  # optional: one run per value of
                                  #   one TrainConfig field (named "<stage>-<value>")
    at = "line"                   # sweeps only: one run per chosen cell of an earlier stage:
                                  #   a tune's chosen lr_A per method, or a sweep's best lr_A
                                  #   per value of its second axis; or a list of cells
                                  #   [{ method = "lora", lr_a = 6.4e-3 },
                                  #    { ratio = 16, lr_a = 4e-4 }]
    at = "loraplus.study.decoder:ratio_scan"  # or a planning function (same prefix as report):
    after = ["grid"]              #   fn(cfg, stage, earlier) -> the `at` cells ({label, lr_a,
                                  #   method | ratio}; [] = no runs), reading the `after` stages
    near = 0.025                  # with `at` a tune: also its line cells within `near` of the
                                  #   method's chosen value (controls)
    [stage.train]                 # this stage's TrainConfig overrides; a value "{X.best}" is the
                                  #   value of stage X's `each` field whose runs scored best
                                  #   (mean over its runs of each run's best cell)
    [stage.smoke]                 # this stage's keys (fields, each, at, train, ...) under --smoke

Every stage runs as one or more `loraplus.sweep` studies (each value x each `at` cell), so every
run is an Optuna cell: a study resumes where it stopped and a finished one trains nothing.
`--set FIELD=VALUE` (a TOML value) overrides a training setting of every stage, over the file's.
Paths (runs, out, a data file) are relative to the working directory: run benchmarks/studies/*
from the repository root.
Unknown keys, bad values and references to unknown or later stages are ValueError naming the key
and the file (the CLI's one-line exit 2) before anything trains.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplus.sweep import SweepConfig, TuneConfig

KINDS = {"sweep": SweepConfig, "tune": TuneConfig}
TOP_KEYS = (
    "title", "runs", "out", "report", "report_options", "prepare", "each", "train", "smoke", "stage"
)  # fmt: skip
STAGE_KEYS = ("name", "kind", "once", "each", "at", "after", "near", "train", "smoke")
RUNNER_FIELDS = ("config", "overrides", "study_name", "out_dir", "storage", "workers")
REPORT_PREFIX = "loraplus.study."
REFERENCE = re.compile(r"^\{([A-Za-z0-9_.-]+)\.best\}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=,-]*$")


@dataclass
class Stage:
    """One stage: a sweep or tune (its config fields), its training overrides, its inputs."""

    name: str
    kind: str
    fields: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    each: tuple[str, list[Any]] | None = None
    at: str | list[dict[str, Any]] | None = None
    near: float | None = None
    after: list[str] = field(default_factory=list)  # the stages a planning-function `at` reads
    group: str = ""  # the top-level `each` value this copy runs ("" without one)
    base: str = ""  # the name in the file (before the top-level `each` prefix)

    def references(self) -> list[str]:
        """The earlier stages this one reads: `at` (or `after`) and every "{X.best}"."""
        found = [self.at] if isinstance(self.at, str) and not is_function(self.at) else []
        found += self.after
        return found + [m.group(1) for v in self.train.values() if (m := _ref(v))]


@dataclass
class StudyConfig:
    """A study file read: its stages in order, where runs and outputs go, its report."""

    path: Path
    title: str
    runs: Path
    out: Path
    stages: list[Stage]
    report: str | None = None
    report_options: dict[str, Any] = field(default_factory=dict)
    prepare: str | None = None
    smoke: bool = False

    def stage(self, name: str) -> Stage:
        """The stage called `name`."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path}: no stage {name!r}.")

    def select(self, names: Sequence[str] | None) -> list[str]:
        """The stage names `names` picks: a full name, or a name in the file (every copy of it
        per top-level `each` value); all stages for None. ValueError for an unknown name."""
        if not names:
            return [s.name for s in self.stages]
        picked = []
        for name in names:
            hits = [s.name for s in self.stages if name in (s.name, s.base)]
            if not hits:
                known = ", ".join(dict.fromkeys(s.base for s in self.stages))
                raise ValueError(f"{self.path} has no stage {name!r} (it has: {known}).")
            picked += hits
        return [s.name for s in self.stages if s.name in picked]


def is_function(at: Any) -> bool:
    """True when `at` names a planning function (loraplus.study.<module>:<function>)."""
    return isinstance(at, str) and at.startswith(REPORT_PREFIX) and ":" in at


def function(name: str, key: str, where: Path) -> Any:
    """The function `name` ("loraplus.study.<module>:<function>") names; ValueError if none."""
    import importlib

    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise ValueError(f"{where}: {key} {name!r} does not exist.") from None


def _ref(value: Any) -> re.Match[str] | None:
    return REFERENCE.match(value) if isinstance(value, str) else None


def _label(value: Any) -> str:
    """A value as a name part: lists joined by ",", floats as %g."""
    if isinstance(value, (list, tuple)):
        return ",".join(_label(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _table(value: Any, key: str, where: Path) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {key} must be a table, got {value!r}.")
    return dict(value)


def _unknown(keys: Any, allowed: Sequence[str], what: str, where: Path) -> None:
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise ValueError(
            f"{where}: unknown key {extra[0]!r} in {what} (allowed: {', '.join(allowed)})."
        )


def _train_keys(train: Mapping[str, Any], what: str, where: Path) -> dict[str, Any]:
    """TrainConfig overrides with `-` spelled `_`; unknown fields are a ValueError."""
    from loraplus.train import TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    train = {k.replace("-", "_"): v for k, v in train.items()}
    _unknown(train, names, what, where)
    return train


def _each(value: Any, what: str, where: Path) -> tuple[str, list[Any]] | None:
    """`each = { FIELD = [values] }` as (field, values)."""
    if value is None:
        return None
    table = _table(value, what, where)
    if len(table) != 1:
        raise ValueError(f"{where}: {what} names one field, got {sorted(table) or 'none'}.")
    ((name, values),) = table.items()
    _train_keys({name: None}, what, where)
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: {what}.{name} must be a non-empty list, got {values!r}.")
    return name.replace("-", "_"), values


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """--set FIELD=VALUE items as TrainConfig overrides; VALUE in TOML syntax (a bare word is a
    string)."""
    found: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set takes FIELD=VALUE (e.g. max_steps=20), got {item!r}.")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        found[name.strip().replace("-", "_")] = value
    return found


def load_study(
    path: str | Path,
    smoke: bool = False,
    sets: Sequence[str] = (),
    runs: Any = None,
    out: Any = None,
) -> StudyConfig:
    """Read and check a study file; `smoke` merges its smoke tables, `sets` (FIELD=VALUE) override
    every stage's training settings (the file's, `each` values included); `runs` / `out` replace
    the file's folders."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"No study file {path}: pass a path such as benchmarks/studies/init.toml."
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}.") from None
    _unknown(data, TOP_KEYS, "the study", path)
    for key in ("title", "runs", "out"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"{path}: {key} must be a non-empty string.")
    report = data.get("report")
    if report is not None:
        if not is_function(report):
            raise ValueError(
                f"{path}: report must name a function as '{REPORT_PREFIX}<module>:<function>', "
                f"got {report!r}."
            )
        function(report, "report", path)
    train = _train_keys(_table(data.get("train", {}), "[train]", path), "[train]", path)
    if smoke:
        train.update(_train_keys(_table(data.get("smoke", {}), "[smoke]", path), "[smoke]", path))
    forced = _train_keys(parse_set(sets), "--set", path)
    top_each = _each(data.get("each"), "each", path)
    raw_stages = data.get("stage")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise ValueError(f"{path}: no [[stage]]: a study needs at least one.")
    stages: list[Stage] = []
    for raw in raw_stages:
        stages += _stages(_table(raw, "[[stage]]", path), train, forced, top_each, smoke, path)
    seen: list[str] = []
    for stage in stages:
        if stage.name in seen:
            raise ValueError(f"{path}: two stages are named {stage.name!r}.")
        for ref in stage.references():
            if ref not in seen:
                raise ValueError(
                    f"{path}: stage {stage.name!r} reads stage {ref!r}, which is not an earlier "
                    "stage: name an earlier stage."
                )
            if isinstance(stage.at, str) and ref == stage.at and ref in seen:
                _check_at(stage, stages[seen.index(ref)], path)
        seen.append(stage.name)
    return StudyConfig(
        path=path,
        title=data["title"],
        runs=Path(runs if runs is not None else data["runs"]),
        out=Path(out if out is not None else data["out"]),
        stages=stages,
        report=report,
        report_options=_table(data.get("report_options", {}), "report_options", path),
        prepare=_prepare(data.get("prepare"), path),
        smoke=smoke,
    )


def _prepare(name: Any, path: Path) -> str | None:
    """The `prepare` function's name, checked to exist."""
    if name is not None and not is_function(name):
        raise ValueError(
            f"{path}: prepare must name a function as '{REPORT_PREFIX}<module>:<function>', "
            f"got {name!r}."
        )
    if name is not None:
        function(name, "prepare", path)
    return None if name is None else str(name)


def _check_at(stage: Stage, source: Stage, path: Path) -> None:
    """`near` needs a tune to read from."""
    if stage.near is not None and source.kind != "tune":
        raise ValueError(f"{path}: stage {stage.name!r}: near needs `at` to name a tune stage.")


def _stages(
    raw: dict[str, Any],
    train: dict[str, Any],
    forced: dict[str, Any],
    top_each: tuple[str, list[Any]] | None,
    smoke: bool,
    path: Path,
) -> list[Stage]:
    """One [[stage]] table as its stages (one per top-level `each` value unless `once`); `forced`
    (--set) overrides every training setting."""
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(
            f"{path}: every stage needs a name of letters, digits, - and _, got {name!r}."
        )
    where = f"stage {name!r}"
    if smoke and "smoke" in raw:
        extra = _table(raw["smoke"], f"[stage.smoke] of {where}", path)
        merged_train = {**raw.get("train", {}), **extra.pop("train", {})}
        raw = {**raw, **extra, "train": merged_train}
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{path}: {where}: kind must be 'sweep' or 'tune', got {kind!r}.")
    fields = {k: v for k, v in raw.items() if k not in STAGE_KEYS}
    if "axis" in fields:
        fields["field_axis"] = fields.pop("axis")
    allowed = [f.name for f in dataclasses.fields(KINDS[kind]) if f.name not in RUNNER_FIELDS]
    _unknown({k if k != "field_axis" else "axis" for k in fields}, [*allowed, "axis"], where, path)
    at = raw.get("at")
    if at is not None and kind != "sweep":
        raise ValueError(f"{path}: {where}: `at` is for sweep stages (a tune finds its own lr).")
    if at is not None:
        given = sorted(set(fields) & {"lr_a", "ratios", "lr_b", "method", "field_axis", "budget"})
        if given:
            raise ValueError(
                f"{path}: {where}: `at` sets lr_a and the second axis per run: drop {given[0]}."
            )
        if isinstance(at, list):
            at = [_at_cell(c, where, path) for c in at]
        elif not isinstance(at, str):
            raise ValueError(f"{path}: {where}: `at` names a stage or lists cells, got {at!r}.")
        elif is_function(at):
            function(at, f"`at` of {where}", path)
    after = raw.get("after", [])
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise ValueError(f"{path}: {where}: after lists stage names, got {after!r}.")
    if after and not is_function(at):
        raise ValueError(f"{path}: {where}: after is for an `at` planning function: drop it.")
    near = raw.get("near")
    if near is not None and (at is None or not isinstance(near, (int, float)) or near < 0):
        raise ValueError(f"{path}: {where}: near is a number >= 0 and needs `at`, got {near!r}.")
    stage_train = _train_keys(
        _table(raw.get("train", {}), f"[stage.train] of {where}", path), where, path
    )
    each = _each(raw.get("each"), f"each of {where}", path)
    groups: list[Any] = [None] if top_each is None or raw.get("once") else top_each[1]
    out = []
    for value in groups:
        prefix = "" if value is None else f"{_label(value)}-"
        grouped = {} if value is None else {top_each[0]: value}  # type: ignore[index]
        mine = {**train, **grouped, **stage_train, **forced}
        renamed = {k: _prefixed(v, prefix, top_each is not None) for k, v in mine.items()}
        stage = Stage(
            name=prefix + name,
            kind=kind,
            fields=dict(fields),
            train=renamed,
            each=each,
            at=prefix + at if isinstance(at, str) and not is_function(at) else at,
            after=[prefix + a for a in after],
            near=None if near is None else float(near),
            group="" if value is None else _label(value),
            base=name,
        )
        _validate(stage, path)
        out.append(stage)
    return out


def _prefixed(value: Any, prefix: str, grouped: bool) -> Any:
    """A "{X.best}" reference inside a top-level `each` copy points at X of the same value."""
    match = _ref(value)
    return "{" + prefix + match.group(1) + ".best}" if match and grouped else value


def _at_cell(cell: Any, where: str, path: Path) -> dict[str, Any]:
    """One explicit `at` cell: lr_a and a method or a ratio."""
    if (
        not isinstance(cell, Mapping)
        or "lr_a" not in cell
        or len(set(cell) & {"method", "ratio"}) != 1
    ):
        raise ValueError(
            f"{path}: {where}: each `at` cell is {{ lr_a = ..., method = ... }} or "
            f"{{ lr_a = ..., ratio = ... }}, got {cell!r}."
        )
    _unknown(cell, ("lr_a", "method", "ratio"), f"an `at` cell of {where}", path)
    return dict(cell)


def _validate(stage: Stage, path: Path) -> None:
    """Build the stage's real SweepConfig / TuneConfig once, and the TrainConfig of one of its
    runs (references and `at` as stand-ins), so a bad field or value is found before anything
    trains."""
    from loraplus.sweep import TrialSpec

    train = {k: v for k, v in stage.train.items() if not _ref(v)}
    if stage.each is not None:
        train[stage.each[0]] = stage.each[1][0]
    fields = dict(stage.fields)
    if stage.at is not None:
        fields.update(lr_a=[1e-3], method=["lora"])
    try:
        KINDS[stage.kind](**fields, overrides=train, study_name=stage.name)
        TrialSpec(0, 1e-3, None, 0, path.parent, None, train).train_config()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: stage {stage.name!r}: {err}") from None
