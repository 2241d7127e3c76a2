"""The results of a sweep study: SweepSummary (every trial, one row per cell, the best cells and
the gain over standard LoRA), written as sweep.json + sweep_heatmap.png and read back."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from loraplus._io import from_dict
from loraplus.sweep.config import as_url, make_storage
from loraplus.sweep.grid import HOLDING, SKIPPED, STUDY_ATTR, cell_of, status_of

SUBJECT_ATTR = "loraplus_subject"  # study user attr: what the cells train (model, data, steps)


@dataclass
class SweepSummary:
    """The sweep's results: every trial, one row per cell (seed mean/std), the best cells, gain.

    Cells: lr_a, ratio, lr_b, mean, std (over seeds with a value), n, values/states per seed, state
    (complete | pruned | diverged | error | running | pending), trials, and on a method grid the
    method. `best` is the best complete cell, `best_lora` the best complete cell with ratio 1 (the
    diagonal lr_B = lr_A on an lr_b grid; method lora on a method grid), `gain` = best - best_lora
    in the metric's better direction (>= 0; None without a LoRA cell). `budget` (budget mode): best
    LoRA+ (budget_ratio) and best LoRA over lr_A, gain."""

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
    subject: str = ""  # what was swept, for the heatmap's title: "minilm on rotten-tomatoes, ..."

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (SweepSummary.from_dict rebuilds it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepSummary:
        """The summary from `to_dict()` / sweep.json data."""
        return from_dict(cls, data)

    def cell(self, lr_a: float, y: float | str) -> dict[str, Any]:
        """The row of one cell (y: the ratio, lr_B or method)."""
        for row in self.cells:
            if row["lr_a"] == lr_a and row[self.axis] == y:
                return row
        raise KeyError(f"No cell lr_a={lr_a}, {self.axis}={y} in the sweep.")

    def methods(self) -> list[dict[str, Any]]:
        """A method grid's table: per method its best complete cell over lr_a (None if none) and
        the runs it took (lr_a values x seeds)."""
        if self.axis != "method":
            return []
        sign = 1.0 if self.direction == "maximize" else -1.0
        return [
            {
                "method": name,
                "best": _pick([c for c in self.cells if c["method"] == name], sign),
                "runs": len(self.lr_a) * len(self.seeds),
            }
            for name in self.y
        ]

    def heatmap(self) -> dict[str, Any]:
        """Plain data for plots.plot_sweep_heatmap."""
        index = {(c["lr_a"], c[self.axis]): c for c in self.cells}
        values = [[index[(a, b)]["mean"] for b in self.y] for a in self.lr_a]
        states = [[index[(a, b)]["state"] for b in self.y] for a in self.lr_a]
        best = None
        if self.best is not None:
            best = [self.lr_a.index(self.best["lr_a"]), self.y.index(self.best[self.axis])]
        lora = ("lora", "ratio=1") if self.axis == "method" else (1.0,)
        field = self.axis not in ("ratio", "lr_b", "method")  # --axis FIELD=...: no LoRA row
        baseline_row = None if field else next((j for j, v in enumerate(self.y) if v in lora), None)
        title = (
            f"{self.subject}\n{self.metric}"
            if self.subject
            else f"{self.study_name}: {self.metric}"
        )
        if self.gain is not None:
            points = "accuracy" in self.metric
            gain = f"{100 * self.gain:+.1f} points" if points else f"{self.gain:+.4g}"
            title += f"; best vs LoRA{'' if self.axis == 'method' else ' (ratio 1)'}: {gain}"
        return {
            "lr_a": self.lr_a,
            "y": self.y,
            "y_label": {"ratio": "ratio", "lr_b": "lr_B"}.get(self.axis, self.axis),
            "categorical": self.axis not in ("ratio", "lr_b"),  # one row per value
            "values": values,
            "states": states,
            "best": best,
            "baseline": "diagonal" if self.axis == "lr_b" else "ratio",
            "baseline_row": baseline_row if self.axis != "lr_b" else None,
            "metric": self.metric,
            "direction": self.direction,
            "title": title,
        }


def _load(source: optuna.Study | str | os.PathLike[str], study_name: str | None) -> optuna.Study:
    """The study from a Study, a storage URL or a path to a .db file."""
    if isinstance(source, optuna.Study):
        return source
    url = as_url(source)
    database = url.split(":///", 1)[-1] if url.startswith("sqlite") else None
    if database and database != ":memory:" and not Path(database).is_file():
        raise ValueError(f"No sweep at {database} (no such file): run the sweep first.")
    storage = make_storage(url)  # a storage that cannot be opened is one line (storage_error)
    names = optuna.get_all_study_names(storage=storage)
    if study_name is None:
        if len(names) != 1:
            raise ValueError(
                f"{url} holds {len(names)} studies ({', '.join(names) or 'none'}): pass study_name."
            )
        study_name = names[0]
    if study_name not in names:
        raise ValueError(
            f"{url} holds no study {study_name!r} (it holds: {', '.join(names) or 'none'}): pass "
            "the --study-name the sweep ran with."
        )
    return optuna.load_study(study_name=study_name, storage=storage)


def _isclose(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def best_cell(
    cells: Sequence[dict[str, Any]], direction: str = "maximize"
) -> dict[str, Any] | None:
    """The best complete cell of `cells` (sweep.json cell rows; the first on ties), None if
    none is complete."""
    sign = 1.0 if direction == "maximize" else -1.0
    done = [c for c in cells if c["state"] == "complete" and c["mean"] is not None]
    if not done:
        return None
    return max(done, key=lambda c: sign * c["mean"])  # max keeps the first of equal keys


def _pick(cells: Sequence[dict[str, Any]], sign: float) -> dict[str, Any] | None:
    """best_cell with the direction as a sign (+1 maximize)."""
    return best_cell(cells, "maximize" if sign > 0 else "minimize")


def _cell(t: FrozenTrial, axis: str) -> tuple[Any, ...] | None:
    """(lr_a, ratio|lr_b, seed) of a trial: its queued cell, else its params."""
    cell = cell_of(t.user_attrs)
    if cell is not None:
        return cell
    if all(n in t.params for n in ("lr_a", axis, "seed")):
        return (t.params["lr_a"], t.params[axis], t.params["seed"])
    return None


def _rates(a: float, b: Any, axis: str) -> dict[str, Any]:
    """The ratio and lr_B of a cell (lr_a, b); a method cell also names its method (the ratio is
    "auto" for auto, and lr_B None); an --axis cell names its field's value (ratio, lr_B: None,
    the training config's)."""
    if axis == "lr_b":
        return {"ratio": b / a, "lr_b": b}
    if axis == "ratio":
        return {"ratio": b, "lr_b": a * b}
    if axis != "method":
        return {axis: b, "ratio": None, "lr_b": None}
    from loraplus.train.methods import method_settings

    ratio = method_settings(b)["ratio"]
    lr_b = a * ratio if isinstance(ratio, float) else None
    return {"method": b, "ratio": ratio, "lr_b": lr_b}


def trial_row(t: FrozenTrial, axis: str) -> dict[str, Any]:
    """One trial as a row of sweep.json."""
    cell, status = _cell(t, axis), status_of(t)
    a, b, seed = cell if cell is not None else (None, None, None)
    rates = _rates(a, b, axis) if a is not None and b is not None else {"ratio": None, "lr_b": None}
    value = t.user_attrs.get("value")
    if value is None and t.state == TrialState.COMPLETE and t.value is not None:
        value = float(t.value)
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "status": status,
        "lr_a": a,
        **rates,
        "seed": seed,
        "value": value if status in ("complete", "pruned") else None,
        "best_step": t.user_attrs.get("best_step"),
        "final_value": t.user_attrs.get("final_value"),
        "seconds": t.user_attrs.get("seconds"),
        "error": t.user_attrs.get("error"),
        "cause": t.user_attrs.get("cause"),
    }


def _seed_result(attempts: Sequence[dict[str, Any]]) -> tuple[str, float | None]:
    """The state and value of one (cell, seed): its held result, else running or pending."""
    final = [r for r in attempts if r["status"] in HOLDING]
    if final:
        return final[-1]["status"], final[-1]["value"]
    return ("running" if any(r["status"] == "running" for r in attempts) else "pending"), None


def _cell_row(
    a: float, b: float | str, axis: str, attempts: list[list[dict[str, Any]]]
) -> dict[str, Any]:
    """One cell over its seeds (`attempts`: the rows of each seed's trials)."""
    results = [_seed_result(rows) for rows in attempts]
    states = [s for s, _ in results]
    state: str | None = next((o for o in ("diverged", "error", "pruned") if o in states), None)
    if state is None:
        if all(s == "complete" for s in states):
            state = "complete"
        else:
            state = "running" if "running" in states else "pending"
    got = [v for _, v in results if v is not None]
    return {
        "lr_a": a,
        **_rates(a, b, axis),
        "mean": statistics.fmean(got) if got else None,
        "std": statistics.stdev(got) if len(got) > 1 else (0.0 if got else None),
        "n": len(got),
        "values": [v for _, v in results],
        "states": states,
        "state": state,
        "trials": [r["number"] for rows in attempts for r in rows],
    }


def _budget(
    record: Mapping[str, Any], cells: list[dict[str, Any]], lora: dict[str, Any] | None, sign: float
) -> dict[str, Any] | None:
    """Budget mode: the best LoRA+ cell (budget_ratio) against the best LoRA cell."""
    if not record.get("budget"):
        return None
    fixed = float(record["budget_ratio"])
    plus = _pick([c for c in cells if _isclose(c["ratio"], fixed)], sign)
    gain = None if plus is None or lora is None else sign * (plus["mean"] - lora["mean"])
    trials_each = len(record["lr_a"]) * len(record["seeds"])
    return {
        "ratio": fixed,
        "trials_each": trials_each,
        "best_loraplus": plus,
        "best_lora": lora,
        "gain": gain,
    }


def summarize(
    study: optuna.Study | str | os.PathLike[str], study_name: str | None = None
) -> SweepSummary:
    """Summarize a sweep study (a Study, a storage URL or a sweep.db path) into a SweepSummary."""
    study = _load(study, study_name)
    record = study.user_attrs.get(STUDY_ATTR) or {}
    trials = study.get_trials(deepcopy=False)
    axis = record.get("axis") or ("lr_b" if any("lr_b" in t.params for t in trials) else "ratio")
    seen = [c for c in (_cell(t, axis) for t in trials) if c is not None]
    lr_a = list(record.get("lr_a") or sorted({c[0] for c in seen}))
    ys = list(record.get("y") or sorted({c[1] for c in seen}))
    seeds = list(record.get("seeds") or sorted({c[2] for c in seen}))
    direction = record.get("direction") or study.direction.name.lower()
    metric = record.get("metric") or ("eval_accuracy" if direction == "maximize" else "eval_loss")
    sign = 1.0 if direction == "maximize" else -1.0

    rows = [trial_row(t, axis) for t in trials]
    by_cell: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for t, row in zip(trials, rows, strict=True):
        cell = _cell(t, axis)
        if cell is not None and row["status"] not in SKIPPED and row["status"] != "waiting":
            by_cell.setdefault(cell, []).append(row)
    cells = [
        _cell_row(a, b, axis, [by_cell.get((a, b, s), []) for s in seeds]) for a in lr_a for b in ys
    ]

    def is_lora(c: dict[str, Any]) -> bool:
        if axis not in ("method", "ratio", "lr_b"):
            return False  # an --axis grid: every cell has the config's ratio
        if axis == "method":
            return bool(c["method"] in ("lora", "ratio=1"))
        return _isclose(c["ratio"], 1.0) if axis == "ratio" else _isclose(c["lr_b"], c["lr_a"])

    best = _pick(cells, sign)
    best_lora = _pick([c for c in cells if is_lora(c)], sign)
    gain = None if best is None or best_lora is None else sign * (best["mean"] - best_lora["mean"])
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
        budget=_budget({**record, "lr_a": lr_a, "seeds": seeds}, cells, best_lora, sign),
        counts=dict(Counter(r["status"] for r in rows)),
        subject=str(study.user_attrs.get(SUBJECT_ATTR, "")),
    )


def subject(train: Any) -> str:
    """What a sweep trains, for its heatmap's title: model, data and steps of a TrainConfig."""
    steps = f"{train.max_steps} steps" if train.max_steps > 0 else f"{train.epochs:g} epochs"
    return f"{train.model} on {train.data}, {steps}"


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
