"""What a sweep is (SweepConfig: grid, metric, study, outputs) and where its study lives (storage).

The storage is any SQLAlchemy URL Optuna accepts: PostgreSQL / MySQL for several machines, or the
default SQLite file in the output folder for processes on one machine.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from loraplus.groups import as_float

log = logging.getLogger(__name__)

METRICS = {"eval_accuracy": "maximize", "eval_loss": "minimize"}
PRUNERS = ("none", "median")
DEFAULT_LR_A = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
DEFAULT_RATIOS = (1.0, 4.0, 16.0, 64.0)
# Per-trial TrainConfig defaults a sweep needs (a config file or `overrides` may change them).
TRIAL_DEFAULTS: dict[str, Any] = {"progress": False, "save_adapter": False, "report_to": []}
_SWEPT = ("lr", "ratio", "seed", "output_dir")  # set per cell: not allowed in overrides
RECORD_VERSION = 2  # 2: cells are enqueued trials (1: claims in a custom sampler's system attrs)


def _floats(name: str, values: Sequence[Any]) -> list[float]:
    """Sorted distinct positive finite floats (strings such as "1e-4" accepted)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty list of numbers, got {values!r}.")
    return sorted({as_float(v, name) for v in values})


def _seeds(seeds: Any) -> list[int]:
    """Sorted distinct integer seeds."""
    if isinstance(seeds, (str, int)) or not seeds:
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}.")
    try:
        numbers = [float(s) for s in seeds]
    except (TypeError, ValueError):
        numbers = [math.nan]
    if not all(n.is_integer() for n in numbers):
        raise ValueError(f"seeds must be integers, got {seeds!r}.")
    return sorted({int(n) for n in numbers})


def _methods(methods: Any) -> list[str]:
    """Distinct method names, canonical, in the order given."""
    from loraplus.train.methods import canonical

    if isinstance(methods, str):
        methods = methods.replace(",", " ").split()
    if not methods:
        raise ValueError("method must name at least one method.")
    names = [canonical(str(m)) for m in methods]
    return list(dict.fromkeys(names))


def _field_axis(text: str) -> tuple[str, list[Any]]:
    """FIELD=V1,V2,... as the TrainConfig field and its distinct values, typed as its flag."""
    from loraplus import _config
    from loraplus.train import TrainConfig

    name, sep, raw = str(text).partition("=")
    name = name.strip().replace("-", "_")
    items = [v for v in raw.replace(",", " ").split() if v]
    if not sep or not name or not items:
        raise ValueError(f"axis takes FIELD=V1,V2,... (e.g. init=init1,init2), got {text!r}.")
    if name in ("lr", "seed", "output_dir"):
        raise ValueError(f"axis {name}: the sweep sets it per cell (use lr_a / seeds / out_dir).")
    if name == "ratio":
        raise ValueError("axis ratio: use ratios (the default second axis).")
    values = [_config.parse_settings(TrainConfig, {name: v}, "axis")[name] for v in items]
    if any(isinstance(v, (list, dict)) for v in values):
        raise ValueError(f"axis {name}: takes one value per cell, not a list.")
    return name, list(dict.fromkeys(values))


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class SweepConfig:
    """One learning-rate sweep: a TrainConfig (file + overrides), the grid, the study, the outputs.

    The grid is `lr_a` x `ratios` (lr_B = ratio * lr_A; default 1, 4, 16, 64, where ratio 1 is
    standard LoRA), `lr_a` x `lr_b` (paper Figure 3), or `lr_a` x `method` (loraplus.train.methods:
    LoRA, LoRA+, auto, width-aware, peft's LoRA-FA / Riemannian / rsLoRA / PiSSA, each with its lr
    tuned on the same lr_a grid), each cell trained once per seed in `seeds`. `metric` is
    "eval_accuracy" (maximized) or "eval_loss" (minimized); a trial's value is the BEST evaluation
    over its run (evaluations after step 0; the step-0 evaluation before any update counts only when
    there is no other). `budget=True` is the paper's practical recipe: the ratio is fixed to
    `budget_ratio` (16) and only lr_A is searched, against the same number of standard-LoRA trials
    (ratio 1). `pruner="median"` stops runs below the median of earlier runs at the same step
    (Optuna MedianPruner, after 5 finished trials); pruned cells are never the best. `storage` is
    any Optuna/SQLAlchemy URL (default sqlite:///<out_dir>/sweep.db); every process (`workers`) or
    machine that opens the same URL and `study_name` shares the grid. `heartbeat_s` enables Optuna's
    heartbeat: a trial whose machine died is marked failed 2 x heartbeat_s after its last beat, and
    its cell is handed out again (a dead worker process on this machine is noticed at once, by its
    lock file). `retry_failed` re-runs cells whose earlier attempt raised an error (once per start).
    `publish_timeout_s`: how long a process that did not create the study waits for its grid."""

    lr_a: list[float] = field(
        default_factory=lambda: list(DEFAULT_LR_A), metadata=_help("lr_A values of the grid")
    )
    ratios: list[float] | None = field(
        default=None, metadata=_help(f"ratios (default {' '.join(map(str, DEFAULT_RATIOS))})")
    )
    lr_b: list[float] | None = field(default=None, metadata=_help("lr_B values instead of ratios"))
    method: list[str] | None = field(
        default=None,
        metadata=_help(
            "methods instead of ratios, each at every lr_a: lora loraplus auto width-aware lorafa "
            "riemannian rslora pissa loraplus+rslora, or ratio=X"
        ),
    )
    field_axis: str | None = field(
        default=None,
        metadata={
            "help": "instead of ratios, any training setting FIELD=V1,V2,... (e.g. "
            "init=init1,init2 or rank=4,16); the ratio is --ratio's",
            "aliases": ["--axis"],
        },
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata=_help("seeds of every cell"))
    config: str | None = field(default=None, metadata=_help("YAML/TOML training settings"))
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    metric: str = field(default="eval_accuracy", metadata=_help("eval_accuracy or eval_loss"))
    storage: str | None = field(
        default=None, metadata=_help("sqlite:///... or postgresql://... (default: SQLite file)")
    )
    study_name: str = field(default="loraplus-sweep", metadata=_help("study within the storage"))
    out_dir: str = field(default="runs/sweep", metadata=_help("trials, sweep.json and heatmap"))
    pruner: str = field(default="none", metadata=_help("none or median"))
    budget: bool = field(
        default=False, metadata=_help("paper recipe: ratio fixed, 1-D lr_A search vs LoRA")
    )
    budget_ratio: float = field(default=16.0, metadata=_help("the ratio of --budget"))
    workers: int = field(default=1, metadata=_help("worker processes on this machine"))
    heartbeat_s: int | None = field(
        default=60, metadata=_help("seconds between heartbeats (stale after two)")
    )
    retry_failed: bool = field(default=False, metadata=_help("re-run cells that raised, once"))
    publish_timeout_s: float = field(
        default=60.0, metadata=_help("wait this long for another process's grid")
    )

    def __post_init__(self) -> None:
        """Normalize the grid (sorted, distinct) and check every field."""
        self.lr_a = _floats("lr_a", self.lr_a)
        if self.budget:
            if self.ratios is not None or self.lr_b is not None:
                raise ValueError(
                    "budget mode fixes the ratios to 1 and budget_ratio: drop ratios / lr_b."
                )
            self.budget_ratio = as_float(self.budget_ratio, "budget_ratio")
            if self.budget_ratio == 1:
                raise ValueError("budget_ratio must differ from 1 (ratio 1 is the LoRA baseline).")
        if self.ratios is not None and self.lr_b is not None:
            raise ValueError("Give either ratios (lr_A x ratio) or lr_b (lr_A x lr_B), not both.")
        if self.method is not None:
            self.method = _methods(self.method)
            if self.ratios is not None or self.lr_b is not None or self.budget:
                raise ValueError(
                    "method is the grid's second axis: drop ratios / lr_b / budget "
                    "(ratio=X is a method: plain LoRA+ at ratio X)."
                )
        if self.ratios is not None:
            self.ratios = _floats("ratios", self.ratios)
        if self.lr_b is not None:
            self.lr_b = _floats("lr_b", self.lr_b)
        self._field: tuple[str, list[Any]] | None = None
        if self.field_axis is not None:
            if self.method is not None or self.ratios is not None or self.lr_b is not None:
                raise ValueError("axis is the grid's second axis: drop ratios / lr_b / method.")
            if self.budget:
                raise ValueError("axis and budget both set the second axis: drop one.")
            self._field = _field_axis(self.field_axis)
        self.seeds = _seeds(self.seeds)
        self._check_settings()

    def _check_settings(self) -> None:
        """Check everything but the grid."""
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
        self.publish_timeout_s = as_float(self.publish_timeout_s, "publish_timeout_s")
        self.overrides = {k.replace("-", "_"): v for k, v in dict(self.overrides).items()}
        per_cell = set(_SWEPT) - ({"ratio"} if self._field else set())  # an axis keeps the ratio
        swept = sorted(set(self.overrides) & (per_cell | ({self.axis} if self._field else set())))
        if self.method is not None:
            from loraplus.train.methods import method_settings

            set_by = {k: m for m in self.method for k in method_settings(m)}
            clash = sorted(set(self.overrides) & set(set_by))
            if clash:
                raise ValueError(
                    f"overrides set {', '.join(clash)}, which method "
                    f"{', '.join(sorted({set_by[k] for k in clash}))} sets per cell: drop them, "
                    "or leave that method out."
                )
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
        """The grid's second axis: 'ratio', 'lr_b', 'method' or the TrainConfig field of
        `field_axis`."""
        if self._field is not None:
            return self._field[0]
        if self.method is not None:
            return "method"
        return "lr_b" if self.lr_b is not None else "ratio"

    @property
    def y(self) -> list[Any]:
        """The values of the second axis (ratios, lr_B, method names or field values)."""
        if self._field is not None:
            return list(self._field[1])
        if self.method is not None:
            return list(self.method)
        if self.budget:
            return [1.0, self.budget_ratio] if self.budget_ratio > 1 else [self.budget_ratio, 1.0]
        if self.lr_b is not None:
            return list(self.lr_b)
        return list(self.ratios if self.ratios is not None else DEFAULT_RATIOS)

    @property
    def search_space(self) -> dict[str, list[Any]]:
        """The grid's axes: lr_a, ratio|lr_b, seed."""
        return {"lr_a": list(self.lr_a), self.axis: self.y, "seed": list(self.seeds)}

    @property
    def grid_size(self) -> int:
        """Number of trials in the full grid (cells x seeds)."""
        return len(self.lr_a) * len(self.y) * len(self.seeds)

    @property
    def storage_url(self) -> str:
        """The storage URL: `storage`, or sqlite:///<out_dir>/sweep.db (absolute)."""
        if self.storage:
            return as_url(self.storage)
        return as_url(Path(self.out_dir) / "sweep.db")

    def record(self) -> dict[str, Any]:
        """What the study remembers about the sweep (checked when the study is opened again)."""
        return {
            "version": RECORD_VERSION,
            "axis": self.axis,
            "lr_a": list(self.lr_a),
            "y": self.y,
            "seeds": list(self.seeds),
            "metric": self.metric,
            "direction": self.direction,
            "budget": bool(self.budget),
            "budget_ratio": self.budget_ratio if self.budget else None,
        }


def as_url(storage: str | os.PathLike[str]) -> str:
    """A storage URL; a plain path (…/sweep.db) becomes an absolute sqlite:/// URL."""
    text = os.fspath(storage)
    if text.startswith("sqlite:///~"):  # a home-relative SQLite path, as a shell would expand it
        return f"sqlite:///{Path(text[len('sqlite:///') :]).expanduser()}"
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


def make_storage(
    url: str,
    *,
    heartbeat_s: int | None = None,
    stale_trial_callback: StaleCallback | None = None,
) -> optuna.storages.RDBStorage:
    """An Optuna RDBStorage for `url`. SQLite: its folder is created, and every transaction takes
    the write lock at BEGIN (so popping a queued trial is atomic across processes, as row locks
    make it on PostgreSQL). `heartbeat_s` enables Optuna's heartbeat (stale after 2 beats);
    `stale_trial_callback` runs in the one process that marks a stale trial failed."""
    url = as_url(url)
    # Optuna 4.9 renamed failed_trial_callback (deprecated) to heartbeat_stale_trial_callback.
    params = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = next(
        n for n in ("heartbeat_stale_trial_callback", "failed_trial_callback") if n in params
    )
    kwargs: dict[str, Any] = {callback: stale_trial_callback}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 600}}
        database = url.split(":///", 1)[-1]
        if database and database != ":memory:":
            try:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise storage_error(url, err) from None
    if heartbeat_s:
        kwargs["heartbeat_interval"] = int(heartbeat_s)
    for attempt in range(3):  # first use of a database: processes race to create its tables
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, **kwargs)
            break
        except Exception as err:
            if attempt == 2 or _permanent(err):
                raise storage_error(url, err) from None
            log.info("Opening %s failed (%s); retrying.", url, err)
            time.sleep(0.5 * (attempt + 1))
    if url.startswith("sqlite"):
        from sqlalchemy import event

        event.listen(storage.engine, "connect", _sqlite_connect)
        event.listen(storage.engine, "begin", _sqlite_begin)
        storage.engine.dispose()  # pooled connections reconnect with these settings
    return storage


def _shown(url: str) -> str:
    """The URL as it may be printed: its password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: nothing in it can be parsed as a password
        return url


def _permanent(err: BaseException) -> bool:
    """An error that retrying cannot fix: a missing driver, an unknown dialect, a bad URL."""
    from sqlalchemy import exc

    return isinstance(err, (ImportError, exc.ArgumentError, ValueError)) and not isinstance(
        err, exc.OperationalError
    )


def storage_error(url: str, err: BaseException) -> ValueError:
    """One line for a storage that cannot be opened: the URL (no password), the cause, the fix."""
    cause = " ".join(str(getattr(err, "orig", None) or err).split()) or type(err).__name__
    cause = cause.split(" (Background on this error")[0].rstrip(".")
    shown = _shown(url)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if Path(path).is_dir():
            fix = f"{path} is a folder: pass a database file path (…/sweep.db)"
        elif "not a database" in cause:
            fix = f"{path} is not a SQLite database: pass another --storage file, or move it away"
        else:
            fix = f"pass a --storage file in a folder you can write ({path})"
    elif isinstance(err, ImportError) or "Can't load plugin" in cause:
        fix = (
            "its database driver is missing or the URL's kind is unknown: use sqlite:///path, "
            "or postgresql://user:password@host:5432/db with pip install 'loraplus[postgres]'"
        )
    elif any(w in cause.lower() for w in ("refused", "connect", "timeout", "server running")):
        fix = "no database server answers there: start it, or fix the host and port in --storage"
    else:
        fix = "check the user, password, host, port and database name in --storage"
    return ValueError(f"Cannot open the sweep storage {shown}: {cause}. Fix: {fix}.")


def _sqlite_connect(connection: Any, record: Any) -> None:
    """WAL journal + synchronous=NORMAL (a commit costs ~0.1 ms, not an fsync); the driver's own
    transaction handling off, so `_sqlite_begin` decides how a transaction starts."""
    connection.isolation_level = None
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    except Exception as err:  # e.g. locked while another process switches it: keep the default
        log.debug("SQLite pragmas not applied: %s", err)
    finally:
        cursor.close()


def _sqlite_begin(connection: Any) -> None:
    """BEGIN IMMEDIATE: a read-then-write (the WAITING -> RUNNING pop) cannot interleave."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")
