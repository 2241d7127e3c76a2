"""The method-tasks studies (benchmarks/studies/method-tasks*.toml): every LoRA method at its own
tuned lr_A, beside the best fixed ratio (the 2-D grid's answer), as one table and one figure.

A method's row comes from its runs as (lr_A, seed, value) points: the first seed's line, the lr_A
best on it, the values of every seed there, and how many runs it took. `best-ratio` is the fixed
ratio best on the first seed, with its other seeds (run by a later stage where its line had none),
and pays for every fixed-ratio run it was chosen from. Seed-paired differences against it say
whether a method is ahead beyond the seed noise (a seed fixes the init and batch order for all).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplus.lr_search import mean_std

if TYPE_CHECKING:
    from loraplus.study.config import Stage, StudyConfig
    from loraplus.study.run import Done, StudyResult
    from loraplus.train.record import TrainResult

Point = tuple[float, int, float | None]  # (lr_A, seed, value: None when the run had none)
Row = dict[str, Any]  # method, line {lr: first-seed value}, lr_a, values (by seed), runs
RAN = ("complete", "pruned", "diverged")  # a run that trained (an error holds no value)


def final_ratios(record: TrainResult) -> dict[str, float]:
    """{module kind: lr_B / lr_A} where auto's controller ended a run ({} for a fixed ratio)."""
    rows = [r for r in record.history if any(k.startswith("auto_ratio/") for k in r)]
    last = rows[-1] if rows else {}
    return {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("auto_ratio/")}


def method_of(row: Mapping[str, Any]) -> str:
    """A trial row's method: its method cell, else its ratio as lora / loraplus / ratio=X."""
    if row.get("method"):
        return str(row["method"])
    ratio = float(row["ratio"])
    return {1.0: "lora", 16.0: "loraplus"}.get(ratio, f"ratio={ratio:g}")


def is_fixed(method: str) -> bool:
    """LoRA+ at one fixed ratio (LoRA is ratio 1): what best-ratio chooses among."""
    return method in ("lora", "loraplus") or method.startswith("ratio=")


def points(done: Iterable[Done]) -> dict[str, list[Point]]:
    """Per method (in order of appearance), the (lr_A, seed, value) of every run that trained."""
    found: dict[str, list[Point]] = {}
    for d in done:
        for row in d.rows:
            if row["status"] in RAN:
                value = row["value"] if row["status"] == "complete" else None
                found.setdefault(method_of(row), []).append((row["lr_a"], row["seed"], value))
    return found


def sign_of(stage: Stage) -> float:
    """+1 when the stage's metric is maximized (accuracy), -1 for eval_loss."""
    return -1.0 if stage.fields.get("metric") == "eval_loss" else 1.0


def method_row(method: str, points: Iterable[Point], sign: float) -> Row:
    """A method's row from its runs; `sign` +1 when higher is better (accuracy), -1 for loss."""
    points = sorted(points, key=lambda p: (p[1], p[0]))
    first = min((p[1] for p in points), default=0)
    line = {lr: v for lr, s, v in points if s == first}
    scored = {lr: v for lr, v in line.items() if v is not None}
    best = max(sorted(scored), key=lambda lr: sign * scored[lr]) if scored else None
    return {
        "method": method,
        "line": {f"{lr:g}": v for lr, v in sorted(line.items()) if v is not None},
        "lr_a": best,
        "values": [v for lr, _, v in points if lr == best and v is not None],
        "runs": len(points),
    }


def best_ratio(fixed: Sequence[Row], sign: float, more: Iterable[Point] = ()) -> Row | None:
    """The fixed-ratio row best on the first seed, its values extended by `more` (its other
    seeds, run at its lr_A by a later stage): it pays for every fixed ratio's first-seed line
    and for its own other seeds."""
    rows = [r for r in fixed if r["lr_a"] is not None]
    if not rows:
        return None
    chosen = max(rows, key=lambda r: sign * r["line"][f"{r['lr_a']:g}"])
    extra = [v for lr, _, v in sorted(more, key=lambda p: p[1]) if lr == chosen["lr_a"]]
    values = [*chosen["values"], *(v for v in extra if v is not None)]
    runs = sum(r["runs"] - (len(r["values"]) - 1) for r in rows) + len(values) - 1
    return {**chosen, "method": f"best-ratio ({chosen['method']})", "values": values, "runs": runs}


def best_ratio_cell(
    cfg: StudyConfig, stage: Stage, earlier: Mapping[str, Sequence[Done]]
) -> list[dict[str, Any]]:
    """A stage's `at` cells (study/run.py): best-ratio's cell, where its line has only its first
    seed (a ratio scan's); none where its seeds ran already (a tune's)."""
    found = points(d for name in stage.after for d in earlier[name])
    fixed = [method_row(m, p, sign_of(stage)) for m, p in found.items() if is_fixed(m)]
    best = best_ratio(fixed, sign_of(stage))
    if best is None or len(best["values"]) > 1:
        return []
    method = best["method"].removeprefix("best-ratio (").removesuffix(")")
    return [{"label": method, "lr_a": best["lr_a"], "method": method}]


def table_rows(
    result: StudyResult, stages: Sequence[str], best_stage: str
) -> tuple[list[Row], Row | None]:
    """The rows of the methods run by `stages` (best-ratio placed after the fixed ratios), and
    best-ratio's row (its other seeds from `best_stage`); auto's rows say where its ratios
    ended."""
    from loraplus.study.run import records

    dones = [d for name in stages for d in result.runs(name)]
    sign = sign_of(result.cfg.stage(stages[0]))
    rows = {m: method_row(m, p, sign) for m, p in points(dones).items()}
    more = [p for ps in points(result.runs(best_stage)).values() for p in ps]
    best = best_ratio([r for m, r in rows.items() if is_fixed(m)], sign, more)
    for row in rows.values():
        if row["method"] == "auto" and row["lr_a"] is not None:
            ran = [r for d in dones for r in records(d).values() if r.config["ratio"] == "auto"]
            ends = {r.config["seed"]: final_ratios(r) for r in ran if r.config["lr"] == row["lr_a"]}
            row["ratios_at_end"] = {str(s): e for s, e in sorted(ends.items()) if e}
    return ordered(rows, [m for m in rows if is_fixed(m)], best), best


def report(
    result: StudyResult,
    out: Path,
    stages: Sequence[str] = ("methods",),
    best_stage: str = "best-ratio",
    file: str = "methods",
) -> dict[str, Any]:
    """The study's report (`report = "loraplus.study.method_tasks:report"`): <file>.md,
    <file>.json and <file>.png in `out`."""
    rows, best = table_rows(result, stages, best_stage)
    metric = str(result.cfg.stage(stages[0]).fields.get("metric", "eval_accuracy"))
    return write(Path(out), rows, best, metric, result.cfg.title, file)


def paired(row: Row, best: Row | None) -> str:
    """The row's value minus best-ratio's at the same seed: mean (per seed); '' if unpaired."""
    if best is None or best["method"] in (row["method"], f"best-ratio ({row['method']})"):
        return ""
    if not 1 < len(row["values"]) == len(best["values"]):
        return ""
    diffs = [a - b for a, b in zip(row["values"], best["values"], strict=True)]
    return f"{statistics.mean(diffs):+.3f} ({', '.join(f'{d:+.3f}' for d in diffs)})"


def table(rows: Sequence[Row], best: Row | None, metric: str, title: str) -> list[str]:
    """results.md's lines: one row per method, best-ratio after the fixed ratios."""
    what = "accuracy" if metric == "eval_accuracy" else "loss"
    lines = [
        f"# LoRA methods on {title}, each with its own tuned lr",
        "",
        f"| method | lr_A | best eval {what} (mean ± std) | seeds | runs | minus best-ratio, "
        "paired by seed | lr_A line (first seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        line = ", ".join(f"{k}: {v:.3f}" for k, v in r["line"].items())
        lr = "n/a" if r["lr_a"] is None else f"{r['lr_a']:g}"
        lines.append(
            f"| {r['method']} | {lr} | {mean_std(r['values'])} | {len(r['values'])} "
            f"| {r['runs']} | {paired(r, best)} | {line} |"
        )
    for r in rows:
        ends = r.get("ratios_at_end") or {}
        if ends:
            lines += ["", f"lr_B / lr_A where {r['method']} ended (at lr_A {r['lr_a']:g}):", ""]
        for seed, kinds in ends.items():
            lines.append(f"- seed {seed}: {', '.join(f'{k} {v:.3g}' for k, v in kinds.items())}")
    return lines


def ordered(rows: Mapping[str, Row], fixed: Sequence[str], best: Row | None) -> list[Row]:
    """The rows in their given order, best-ratio right after the last fixed ratio."""
    out = list(rows.values())
    if best is not None:
        out.insert(max([i + 1 for i, r in enumerate(out) if r["method"] in fixed], default=0), best)
    return out


def write(
    out: Path, rows: Sequence[Row], best: Row | None, metric: str, title: str, file: str = "methods"
) -> dict[str, Any]:
    """<file>.json, <file>.md and <file>.png into `out`; the results."""
    from loraplus._io import atomic_file, write_json
    from loraplus.plots import plot_method_values

    result = {"title": title, "metric": metric, "rows": list(rows)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{file}.json", result)
    with atomic_file(out / f"{file}.md") as handle:
        handle.write("\n".join(table(rows, best, metric, title)))
        handle.write(f"\n\n![methods]({file}.png)\n")
    figure = {
        "rows": rows,
        "ylabel": "best " + metric.replace("_", " "),
        "title": f"{title}, each method at its tuned lr_A",
        "bounds": [0.0, 1.0] if metric == "eval_accuracy" else None,
    }
    plot_method_values(out / f"{file}.png", figure)
    return result
