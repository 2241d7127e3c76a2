"""The paper study's report (benchmarks/studies/paper.toml): per task LoRA (ratio 1) against LoRA+
(ratio 16) at their tuned lrs over seeds, the best cell of any ratio, the steps LoRA+ needs to reach
LoRA's final accuracy; report.md (README's table), report.json, heatmap-<task>.png (the grid with
the lines' cells), and the demo's learning rates."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from loraplus._io import atomic_file, write_json
from loraplus.lr_search import mean_std
from loraplus.plots import plot_sweep_heatmap
from loraplus.study.convergence import best_acc, final_acc
from loraplus.study.run import Done, StudyResult, best_per_value, cell_means, chosen, records
from loraplus.train.history import steps_to_reach

METRIC = "eval_accuracy"
MODELS = {"minilm": "MiniLM-L6 (384)", "mpnet": "MPNet-base (768)"}
Histories = dict[int, list[dict[str, Any]]]


def compare(
    task: str,
    model: str,
    lora: tuple[float, Histories],
    plus: tuple[float, Histories],
    best: dict[str, Any],
    steps: int,
) -> dict[str, Any]:
    """LoRA against LoRA+ at their lrs (lr, seed -> eval history each), over their seeds."""
    seeds = sorted(set(lora[1]) | set(plus[1]))
    reach = []
    for seed in seeds:
        if seed in lora[1] and seed in plus[1]:
            hit = steps_to_reach(plus[1][seed], METRIC, final_acc(lora[1][seed]))
            reach.append(hit / steps if hit is not None else None)
    return {
        "task": task,
        "model": model,
        "lora": {"lr": lora[0], "best_acc": [best_acc(lora[1][s]) for s in sorted(lora[1])]},
        "loraplus": {"lr_a": plus[0], "best_acc": [best_acc(plus[1][s]) for s in sorted(plus[1])]},
        "best_cell": best,
        "reach_fraction": reach,
        "seeds": seeds,
        "steps": steps,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The README's markdown table."""
    head = (
        "| model | task | LoRA (ratio 1): lr, best acc | LoRA+ (ratio 16): lr_A, best acc | "
        "best cell, any ratio (seed 0) | LoRA+ steps to LoRA's final acc | seeds |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        reach = [x for x in r["reach_fraction"] if x is not None and not math.isnan(x)]
        never = len(r["reach_fraction"]) - len(reach)
        reach_txt = f"{statistics.mean(reach):.2f} of the run" if reach else "never"
        if reach and never:
            reach_txt += f" ({never} seed(s) never)"
        best, lora, plus = r["best_cell"], r["lora"], r["loraplus"]
        lines.append(
            f"| {r['model']} | {r['task']} | {lora['lr']:.2g}, {mean_std(lora['best_acc'])}"
            f" | {plus['lr_a']:.2g}, {mean_std(plus['best_acc'])}"
            f" | lr_A {best['lr_a']:.2g}, ratio {best['ratio']:g}: {best['mean']:.3f}"
            f" | {reach_txt} | {len(r['seeds'])} |"
        )
    return head + "\n".join(lines) + "\n"


def seed0_cells(grid: list[Done], line: list[Done]) -> list[dict[str, Any]]:
    """Every (lr_a, ratio) cell at seed 0 of the grid and the lines: lr_a, ratio, mean, state."""
    rows = [r for d in [*grid, *line] for r in d.rows if r["seed"] == 0]
    done = cell_means(rows, "ratio")
    cells = {(r["lr_a"], r["ratio"]): r["status"] for r in rows}
    return [
        {"lr_a": lr, "ratio": ratio, "mean": done.get((lr, ratio)), "state": state}
        for (lr, ratio), state in sorted(cells.items())
    ]


def heatmap(task: str, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """plots.draw_sweep_heatmap data of the seed-0 cells (cells never run left blank)."""
    lr_a = sorted({c["lr_a"] for c in cells})
    ratios = sorted({c["ratio"] for c in cells})
    index = {(c["lr_a"], c["ratio"]): c for c in cells}
    done = [c for c in cells if c["mean"] is not None]
    best = max(done, key=lambda c: c["mean"]) if done else None
    return {
        "lr_a": lr_a,
        "y": ratios,
        "y_label": "ratio",
        "categorical": False,
        "values": [[index.get((a, r), {}).get("mean") for r in ratios] for a in lr_a],
        "states": [[index.get((a, r), {}).get("state", "not run") for r in ratios] for a in lr_a],
        "best": None if best is None else [lr_a.index(best["lr_a"]), ratios.index(best["ratio"])],
        "baseline": "ratio",
        "baseline_row": ratios.index(1.0) if 1.0 in ratios else None,
        "metric": METRIC,
        "direction": "maximize",
        "title": f"MiniLM on {task}: {METRIC} (grid + lines, seed 0)",
    }


def minilm_row(result: StudyResult, task: str, out: Path) -> tuple[dict[str, Any], list]:
    """One MiniLM task's table row and its seed-0 cells; its heatmap drawn."""
    grid, line = result.runs("grid", task), result.runs("line", task)
    cells = seed0_cells(grid, line)
    plot_sweep_heatmap(out / f"heatmap-{task}.png", heatmap(task, cells))
    picked = {c["method"]: c["lr_a"] for d in line for c in chosen(d)}
    found = {k: v for d in line for k, v in records(d).items()}
    hist = {
        m: {s: rec.history for (lr, mm, s), rec in found.items() if mm == m and lr == picked[m]}
        for m in ("lora", "loraplus")
    }
    done = [c for c in cells if c["mean"] is not None]
    best = max(done, key=lambda c: c["mean"])
    steps = int(line[0].run.config.overrides["max_steps"])
    row = compare(
        task,
        MODELS["minilm"],
        (picked["lora"], hist["lora"]),
        (picked["loraplus"], hist["loraplus"]),
        {k: best[k] for k in ("lr_a", "ratio", "mean")},
        steps,
    )
    return row, cells


def mpnet_row(result: StudyResult) -> dict[str, Any] | None:
    """MPNet's table row: the grid's best cell per ratio, over the seeds run there."""
    grid, seeds = result.runs("mpnet"), result.runs("mpnet-seeds")
    if not grid or not seeds:
        return None
    best = best_per_value(grid[0].rows, "ratio", METRIC)
    found = {k: v for d in [*grid, *seeds] for k, v in records(d).items()}
    hist = {
        ratio: {s: rec.history for (a, r, s), rec in found.items() if (a, r) == (lr, ratio)}
        for ratio, (lr, _) in best.items()
    }
    lr, ratio, mean = max(((v[0], k, v[1]) for k, v in best.items()), key=lambda c: c[2])
    steps = int(grid[0].run.config.overrides["max_steps"])
    data = str(grid[0].run.config.overrides.get("data", ""))
    return compare(
        data,
        MODELS["mpnet"],
        (best[1.0][0], hist[1.0]),
        (best[16.0][0], hist[16.0]),
        {"lr_a": lr, "ratio": ratio, "mean": mean},
        steps,
    )


def demo_record(result: StudyResult, task: str, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The demo's learning rates: each method's tuned lr_A on `task` (its seed-0 value), with
    the command, settings, grid and every seed-0 cell as provenance."""
    line = result.runs("line", task)
    picked = {c["method"]: c["lr_a"] for d in line for c in chosen(d)}
    value = {(c["lr_a"], c["ratio"]): c["mean"] for c in cells}
    grid = result.runs("grid", task)[0].run.config
    settings = dict(line[0].run.config.overrides)
    record: dict[str, Any] = {}
    for method, ratio in (("lora", 1.0), ("loraplus", 16.0)):
        lr = picked[method]
        record[method] = {"lr": lr, "ratio": ratio, "sweep_accuracy": value[(lr, ratio)]}
    return {
        **record,
        "provenance": {
            "command": f"loraplus study {result.cfg.path}",
            "settings": settings,
            "grid": {"lr_a": grid.lr_a, "ratios": sorted({*grid.y, 1.0, 16.0})},  # type: ignore[union-attr]
            "edge_extension": "a method whose best lr is on the line's edge gets x4 past it, twice",
            "metric": "best eval_accuracy over the run, seed 0",
            "results": cells,
        },
    }


def report(
    result: StudyResult, out: Path, demo_lrs: str | None = None, demo_task: str | None = None
) -> None:
    """report.json / report.md (README's table), heatmap-<task>.png, and (not under --smoke)
    the demo's learning rates written to `demo_lrs`."""
    rows = []
    for task in result.groups():
        if not result.runs("grid", task) or not result.runs("line", task):
            continue
        row, cells = minilm_row(result, task, out)
        rows.append(row)
        if task == demo_task and demo_lrs and not result.cfg.smoke:
            write_json(Path(demo_lrs), demo_record(result, task, cells))
    mpnet = mpnet_row(result)
    if mpnet is not None:
        rows.append(mpnet)
    write_json(out / "report.json", rows)
    with atomic_file(out / "report.md") as handle:
        handle.write(table(rows))
