"""The method study's report: its table, the seed-paired comparison with best-ratio, results.md
and the figure's data (drawn by plots.draw_methods). Plain functions of the study's rows."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loraplus._io import atomic_file
from loraplus.lr_search import mean_std

Row = dict[str, Any]
T_CRIT = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78}  # two-sided 95% Student t, by degrees of freedom
VERDICTS = ("auto", "loraplus", "width-aware")  # the methods the comparison spells out


# the methods the study compares, in the order its tables and figure show them
METHODS = (
    "lora",
    "loraplus",
    "best-ratio",
    "auto",
    "width-aware",
    "lorafa",
    "riemannian",
    "rslora",
    "pissa",
    "loraplus+rslora",
)


def fmt(row: Row) -> str:
    """A row's mean ± std over seeds, or 'diverged' if a seed did."""
    return "diverged" if row["mean"] is None else mean_std(row["finals"], 4)


def _methods(rows: Sequence[Row], widths: Sequence[int]) -> list[str]:
    """The methods with a row at some width, in METHODS order."""
    return [m for m in METHODS if any(r["method"] == m and r["n"] in widths for r in rows)]


def table(rows: Sequence[Row], widths: Sequence[int]) -> str:
    """mean ± std over the seeds at each width (bold: the lowest), the lr picked, runs needed."""
    by = {(r["method"], r["n"]): r for r in rows}
    head = (
        "| method | "
        + " | ".join(f"n = {n}: loss (lr)" for n in widths)
        + f" | runs (n = {'/'.join(map(str, widths))}) |"
    )
    lines = [head, "|---" * (len(widths) + 2) + "|"]
    best = {
        n: min(r["mean"] for r in rows if r["n"] == n and r["mean"] is not None) for n in widths
    }
    for method in _methods(rows, widths):
        cells = []
        for n in widths:
            r = by[(method, n)]
            cell = fmt(r)
            if r["mean"] is not None and r["mean"] == best[n]:
                cell = f"**{cell}**"
            extra = f"{r['lr']:.2g}"
            if r["ratio"] is not None:
                extra += f", ratio {r['ratio']:g}"
            if "auto_ratio" in r:
                extra += f", settles at {r['auto_ratio']:.1f}"
            cells.append(f"{cell} ({extra})")
        runs = "/".join(str(by[(method, n)]["runs"]) for n in widths)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {runs} |")
    return "\n".join(lines)


def paired(rows: Sequence[Row], widths: Sequence[int]) -> tuple[str, list[str]]:
    """Each method's loss over best-ratio's on the same seed (same model, teacher and data).

    The seeds change the task's difficulty more than the methods do, so the comparison is per
    seed: the geometric mean of loss / best-ratio's loss with its range, and a paired t-test on
    the log ratios (95%, seeds - 1 degrees of freedom). Returns the table and, for VERDICTS,
    one line per width saying whether the test tells the method from best-ratio.
    """
    by = {(r["method"], r["n"]): r for r in rows}
    lines = [
        "| method | " + " | ".join(f"n = {n}" for n in widths) + " |",
        "|---" * (len(widths) + 1) + "|",
    ]
    verdicts = []
    for method in (m for m in _methods(rows, widths) if m != "best-ratio"):
        cells = []
        for n in widths:
            a, b = by.get((method, n)), by.get(("best-ratio", n))
            if a is None or b is None or None in a["finals"] + b["finals"]:
                cells.append("-")
                continue
            logs = [math.log(x / y) for x, y in zip(a["finals"], b["finals"], strict=True)]
            if len(logs) < 2:
                cells.append(f"×{math.exp(logs[0]):.2f}")
                continue
            mean = statistics.mean(logs)
            half = T_CRIT.get(len(logs) - 1, 2.0) * statistics.stdev(logs) / math.sqrt(len(logs))
            same = abs(mean) <= half
            cells.append(
                f"×{math.exp(mean):.2f} [{math.exp(min(logs)):.2f}, {math.exp(max(logs)):.2f}]"
                + ("" if same else " *")
            )
            if method in VERDICTS:
                verdict = "worse, beyond the noise" if mean > 0 else "better, beyond the noise"
                verdicts.append(
                    f"- n = {n}: {method} / best-ratio = ×{math.exp(mean):.2f} (95% CI "
                    f"×{math.exp(mean - half):.2f} to ×{math.exp(mean + half):.2f}): "
                    + (f"not told from ×1 at {len(logs)} seeds" if same else verdict)
                )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines), verdicts


def figure_data(rows: Sequence[Row], widths: Sequence[int]) -> dict[str, Any]:
    """Plain data for plots.draw_methods: per width, each method's first-seed lr line (the
    recipe it picked) and, at the lr picked, the seeds' mean and range."""
    panels = []
    for n in widths:
        title, lines = f"width n = {n}", []
        for i, method in enumerate(METHODS):
            row = next((r for r in rows if r["method"] == method and r["n"] == n), None)
            if row is None:
                continue
            if row["ratio"] is not None:
                title += f" (best-ratio: ratio {row['ratio']:g})"
            sweep = next(s for s in row["sweep"] if s["recipe"] == row["recipe"])
            pairs = zip(sweep["lrs"], sweep["losses"], strict=True)
            pts = [[lr, v] for lr, v in pairs if v is not None]
            chosen = None
            if row["mean"] is not None:
                chosen = [row["lr"], row["mean"], min(row["finals"]), max(row["finals"])]
            style = "--" if i >= 8 else ("-." if method == "best-ratio" else "-")
            lines.append({"method": method, "colour": i, "style": style, "line": pts})
            lines[-1]["chosen"] = chosen
        panels.append({"title": title, "methods": lines})
    return {
        "panels": panels,
        "xlabel": "lr (lr_A; LoRA-FA: lr_B)",
        "ylabel": "held-out MSE after training, seed 0",
        "title": "Each method's lr sweep (seed 0); dot: mean of 3 seeds at the lr picked, bar: "
        "range",
    }


def markdown(summary: dict[str, Any], text: str) -> str:
    """results.md's body (before any '## Reading'): how the study was run, its two tables."""
    grid = ", ".join(f"{lr:.2g}" for lr in summary["grid"])
    refined = ", then the two lrs half a step either side of the best" * summary["refine"]
    seeds, k = summary["seeds"], len(summary["seeds"]) - 1  # k: the seeds after the first
    return f"""# LoRA methods on the width-n teacher-student, each with its own tuned lr

`{summary["command"]}`
(torch {summary["torch"]}, peft {summary["peft"]}, one CPU thread;
{len(summary["rows"])} method × width cells, {summary["run_seconds_total"]:.0f} s of training runs)

The LoRA MLP of `loraplus.experiments.lora_mlp` (PEFT LoRA r = 4, α = 4 on two n × n layers,
teacher = base + rank-2 shift per layer), {summary["steps"]} steps of batch 64 on fresh inputs.
Loss: MSE against the teacher on 1024 held-out inputs after the last step, mean ± std over
seeds {", ".join(map(str, seeds))} (model, teacher, data and eval set all change with
the seed).

Each method picked its lr on seed {seeds[0]} from the grid {grid}
(extended by the same factor past an edge that held the best, at most {summary["extend"]} times a
side{refined}); `best-ratio` picked (lr, ratio) from the same lrs ×
ratio ∈ {{{", ".join(f"{q:g}" for q in summary["ratios"])}}}. "runs": training runs the method
needed on its own (lr search + {k} more seeds; best-ratio pays for its whole 2-D grid). Bold: the
lowest mean at that width. lr is lr_A for the LoRA+ family (auto: at its start, ratio 16), the
one lr of LoRA-FA (it trains B only) and of the Riemannian AdamW. width-aware uses
n_ref = {summary["n_ref"]}: lr_A = lr · {summary["n_ref"]}/n, lr_B = 16 · lr, an effective
ratio 16 · n/{summary["n_ref"]}; with its default n_ref (the model's median fan-in: both layers
have fan-in n) it would be loraplus exactly.

{text}

The seeds change the task (teacher, init, data) and move every method's loss together, so the
std above is mostly the task's spread. Paired by seed, each method's loss over best-ratio's on the
same seed: geometric mean [lowest, highest of the {len(seeds)} seeds]; * where a paired
t-test on the log ratios (95%, {k} degrees of freedom) tells it from ×1:

{summary["paired"]}

{chr(10).join(summary["comparisons"])}

![held-out loss against lr per method and width](methods.png)
"""


def write_report(folder: Path, summary: dict[str, Any]) -> None:
    """results.md (a '## Reading' section already there is kept) and methods.png in `folder`."""
    from loraplus.plots import plot_methods

    path = folder / "results.md"
    kept = ""
    if path.exists():
        old = path.read_text(encoding="utf-8")
        if "\n## Reading" in old:
            kept = old[old.index("\n## Reading") :]
    body = markdown(summary, table(summary["rows"], summary["widths"]))
    with atomic_file(path) as handle:
        handle.write(body + kept)
    plot_methods(folder / "methods.png", figure_data(summary["rows"], summary["widths"]))
