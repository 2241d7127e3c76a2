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
from typing import Any

from loraplus.sweep.tune import mean_std

Point = tuple[float, int, float | None]  # (lr_A, seed, value: None when the run had none)
Row = dict[str, Any]  # method, line {lr: first-seed value}, lr_a, values (by seed), runs


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
    out: Path, rows: Sequence[Row], best: Row | None, metric: str, title: str
) -> dict[str, Any]:
    """results.json, results.md and methods.png into `out`; the results."""
    from loraplus._io import atomic_file, write_json
    from loraplus.plots import plot_method_values

    result = {"title": title, "metric": metric, "rows": list(rows)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    with atomic_file(out / "results.md") as handle:
        handle.write("\n".join(table(rows, best, metric, title)))
        handle.write("\n\n![methods](methods.png)\n")
    figure = {
        "rows": rows,
        "ylabel": "best " + metric.replace("_", " "),
        "title": f"{title}, each method at its tuned lr_A",
        "bounds": [0.0, 1.0] if metric == "eval_accuracy" else None,
    }
    plot_method_values(out / "methods.png", figure)
    return result
