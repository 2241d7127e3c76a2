"""The paper's headline on pretrained encoders: LoRA (ratio 1) vs LoRA+ (ratio 16, best ratio).

Stages (each a resumable Optuna study under --runs; rerun the script to continue after a crash):
  1. grid    MiniLM (hidden 384) on rotten-tomatoes (easy) and 20newsgroups (hard): lr_A x ratio,
             seed 0. The rotten-tomatoes grid uses the demo's exact settings and writes the demo's
             learning rates (src/loraplus/cli/demo_lrs.json) with this command as provenance.
  2. seeds   the best ratio-1 cell and the best ratio-16 cell of each task again, more seeds.
  3. mpnet   (with --mpnet) MPNet-base (hidden 768) on 20newsgroups, a smaller grid, then the
             same seeds at its best ratio-1 and ratio-16 cells.
Writes into --out: results.md (the README's table), results.json, and per sweep its heatmap PNG
and sweep.json. Usage: python benchmarks/paper_study.py [--mpnet] [--smoke]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from loraplus._io import write_json
from loraplus.cli.demo import DEMO_SETTINGS
from loraplus.sweep import SweepConfig, SweepSummary, best_cell, run_sweep
from loraplus.sweep.tune import mean_std
from loraplus.train.history import steps_to_reach
from loraplus.train.record import RECORD_FILE, read_record

COMMAND = "python benchmarks/paper_study.py --mpnet"
TASKS = ("rotten-tomatoes", "20newsgroups")
GRID = {"lr_a": [1e-4, 4e-4, 1.6e-3], "ratios": [1.0, 4.0, 16.0, 64.0]}
MPNET_GRID = {"lr_a": [2e-4, 8e-4], "ratios": [1.0, 16.0]}
SEEDS = [1, 2]
SMOKE = {"max_steps": 2, "eval_steps": 1, "max_train": 32, "max_eval": 16, "batch_size": 8}


def sweep(
    name: str,
    overrides: dict[str, Any],
    lr_a: list[float],
    ratios: list[float] | None,
    seeds: list[int],
    runs: Path,
    out: Path,
    method: list[str] | None = None,
    metric: str = "eval_accuracy",
) -> SweepSummary:
    """One resumable Optuna grid (lr_a x ratios, or lr_a x method) on `metric`; its heatmap and
    sweep.json copied to `out`."""
    cfg = SweepConfig(
        lr_a=lr_a,
        ratios=ratios,
        method=method,
        seeds=seeds,
        overrides=overrides,
        study_name=name,
        out_dir=str(runs / name),
        metric=metric,
    )
    start = time.perf_counter()
    summary = run_sweep(cfg)
    print(f"[{name}] {len(summary.trials)} trials, {time.perf_counter() - start:.0f} s", flush=True)
    files = ("sweep_heatmap.png", "sweep.json") if len(lr_a) * len(cfg.y) > 1 else ("sweep.json",)
    for file in files:
        if (runs / name / file).exists():
            shutil.copyfile(runs / name / file, out / f"{name}_{file}")
    return summary


def histories(summary: SweepSummary, runs: Path, name: str) -> dict[tuple[float, float, int], list]:
    """(lr_a, ratio, seed) -> eval history rows, read from each trial's metrics.json."""
    found = {}
    for trial in summary.trials:
        path = runs / name / "trials" / f"trial_{trial['number']:04d}"
        if trial.get("status") == "complete" and (path / RECORD_FILE).exists():
            rows = read_record(path).history
            found[(trial["lr_a"], trial["ratio"], trial["seed"])] = rows
    return found


def best_in_row(summary: SweepSummary, ratio: float) -> dict[str, Any]:
    """The best complete cell with this ratio."""
    best = best_cell([c for c in summary.cells if c["ratio"] == ratio])
    if best is None:
        raise RuntimeError(f"{summary.study_name}: no complete cell with ratio {ratio}")
    return best


def best_acc(rows: list[dict]) -> float:
    return max(
        r["eval_accuracy"] for r in rows if r["step"] > 0 and r.get("eval_accuracy") is not None
    )


def final_acc(rows: list[dict]) -> float:
    return [r["eval_accuracy"] for r in rows if r.get("eval_accuracy") is not None][-1]


def row_best(
    name: str,
    overrides: dict[str, Any],
    grid: SweepSummary,
    ratio: float,
    runs: Path,
    out: Path,
    extend: int = 2,
) -> tuple[dict[str, Any], dict, list[dict[str, Any]]]:
    """Best cell of one ratio row, eval histories, and the extension cells: if the best sits on
    the lr grid's edge, the row is extended (x4 past that edge, at most `extend` times) so neither
    method is judged at the edge of its search."""
    found = histories(grid, runs, name)
    cells = [c for c in grid.cells if c["ratio"] == ratio and c["state"] == "complete"]
    tried = sorted(c["lr_a"] for c in grid.cells if c["ratio"] == ratio)
    best = best_in_row(grid, ratio)
    extension: list[dict[str, Any]] = []
    for _ in range(extend):
        if best["lr_a"] == max(tried):
            new = max(tried) * 4
        elif best["lr_a"] == min(tried):
            new = min(tried) / 4
        else:
            break
        ext = f"{name}-ratio{ratio:g}-lr{new:.3g}"
        summary = sweep(ext, overrides, [new], [ratio], [0], runs, out)
        found.update(histories(summary, runs, ext))
        extension += summary.cells
        cells += [c for c in summary.cells if c["state"] == "complete"]
        tried.append(new)
        best = best_cell(cells) or best
    return best, found, extension


def plot_extended(
    name: str, grid: SweepSummary, extension: list[dict[str, Any]], out: Path
) -> None:
    """The grid's heatmap redrawn with its edge-extension cells (cells never run left blank)."""
    from loraplus.plots import plot_sweep_heatmap

    if not extension:
        return
    data = grid.heatmap()
    cells = {(c["lr_a"], c["ratio"]): c for c in [*grid.cells, *extension]}
    lr_a = sorted({a for a, _ in cells})
    ratios = data["y"]
    data["lr_a"] = lr_a
    data["values"] = [[cells.get((a, r), {}).get("mean") for r in ratios] for a in lr_a]
    data["states"] = [[cells.get((a, r), {}).get("state", "not run") for r in ratios] for a in lr_a]
    done = [c for c in cells.values() if c["state"] == "complete" and c["ratio"] in ratios]
    best = max(done, key=lambda c: c["mean"])
    data["best"] = [lr_a.index(best["lr_a"]), ratios.index(best["ratio"])]
    data["title"] = f"{name}: eval_accuracy (grid + edge extensions, seed 0)"
    plot_sweep_heatmap(out / f"{name}_sweep_heatmap.png", data)


def compare(
    task: str,
    model: str,
    cells: dict[str, dict[str, Any]],
    grid: SweepSummary,
    runs: dict,
    steps: int,
    extension: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """LoRA vs LoRA+ at their best lrs, over every seed run at those lrs; the best cell is taken
    over the grid and its edge extensions."""
    lora, plus = cells["lora"], cells["loraplus"]
    seeds = sorted({k[2] for k in runs})
    per_method: dict[str, dict[int, list]] = {"lora": {}, "loraplus": {}}
    for seed in seeds:
        for method, cell in (("lora", lora), ("loraplus", plus)):
            rows = runs.get((cell["lr_a"], cell["ratio"], seed))
            if rows:
                per_method[method][seed] = rows
    reach = []
    for seed, rows in per_method["loraplus"].items():
        if seed in per_method["lora"]:
            hit = steps_to_reach(rows, "eval_accuracy", final_acc(per_method["lora"][seed]))
            reach.append(hit / steps if hit is not None else math.nan)
    done = [c for c in [*grid.cells, *(extension or [])] if c["state"] == "complete"]
    best_any = max(done, key=lambda c: c["mean"]) if done else {}
    return {
        "task": task,
        "model": model,
        "lora": {
            "lr": lora["lr_a"],
            "best_acc": [best_acc(r) for r in per_method["lora"].values()],
        },
        "loraplus": {
            "lr_a": plus["lr_a"],
            "best_acc": [best_acc(r) for r in per_method["loraplus"].values()],
        },
        "best_cell": {k: best_any.get(k) for k in ("lr_a", "ratio", "mean")},
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
        reach = [x for x in r["reach_fraction"] if not math.isnan(x)]
        never = len(r["reach_fraction"]) - len(reach)
        reach_txt = f"{statistics.mean(reach):.2f} of the run" if reach else "never"
        if reach and never:
            reach_txt += f" ({never} seed(s) never)"
        best = r["best_cell"]
        lora, plus = r["lora"], r["loraplus"]
        lines.append(
            f"| {r['model']} | {r['task']} | {lora['lr']:.2g}, {mean_std(lora['best_acc'])}"
            f" | {plus['lr_a']:.2g}, {mean_std(plus['best_acc'])}"
            f" | lr_A {best['lr_a']:.2g}, ratio {best['ratio']:g}: {best['mean']:.3f}"
            f" | {reach_txt} | {len(r['seeds'])} |"
        )
    return head + "\n".join(lines) + "\n"


def write_demo_lrs(
    summary: SweepSummary,
    cells: dict[str, dict[str, Any]],
    extension: list[dict[str, Any]],
    settings: dict[str, Any],
    path: Path,
) -> None:
    """The demo's learning rates: the best ratio-1 and ratio-16 cells (grid plus edge extensions)
    under the demo's settings; written once both are known."""
    if set(cells) != {"lora", "loraplus"}:
        return
    lora, plus = cells["lora"], cells["loraplus"]
    record = {
        "lora": {"lr": lora["lr_a"], "ratio": 1.0, "sweep_accuracy": lora["mean"]},
        "loraplus": {"lr": plus["lr_a"], "ratio": 16.0, "sweep_accuracy": plus["mean"]},
        "provenance": {
            "command": COMMAND,
            "settings": settings,
            "grid": GRID,
            "edge_extension": "a row whose best lr is on the grid edge gets x4 past it, twice",
            "metric": "best eval_accuracy over the run, seed 0",
            "results": [
                {k: c[k] for k in ("lr_a", "ratio", "mean", "state")}
                for c in [*summary.cells, *extension]
            ],
        },
    }
    write_json(path, record)
    print(f"demo lrs: LoRA {lora['lr_a']:g}, LoRA+ {plus['lr_a']:g} -> {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/study"))
    parser.add_argument("--runs", type=Path, default=Path("runs/study"))
    parser.add_argument("--mpnet", action="store_true", help="also run the MPNet-base stage")
    parser.add_argument("--smoke", action="store_true", help="tiny version for CI (seconds)")
    parser.add_argument("--demo-lrs", type=Path, default=None, help="where to write demo lrs")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--steps", type=int, default=150, help="training steps per MiniLM run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    swept = ("lr", "ratio", "seed", "output_dir")  # the sweep sets these per cell
    base = {k: v for k, v in DEMO_SETTINGS.items() if k not in swept}
    base.update(save_adapter=False, progress=False, report_to=[], max_steps=args.steps)
    if args.smoke:
        base.update(SMOKE)
    grid = {"lr_a": GRID["lr_a"][1:2], "ratios": [1.0, 16.0]} if args.smoke else GRID
    seeds = SEEDS[:1] if args.smoke else SEEDS
    demo_lrs = args.demo_lrs or (
        None if args.smoke else Path(__file__).parents[1] / "src/loraplus/cli/demo_lrs.json"
    )
    rows = []
    for task in args.tasks:
        name = f"minilm-{task}"
        overrides = {**base, "data": task}
        summary = sweep(name, overrides, grid["lr_a"], grid["ratios"], [0], args.runs, args.out)
        found: dict = {}
        cells: dict[str, dict[str, Any]] = {}
        extension: list[dict[str, Any]] = []
        for method, ratio in (("lora", 1.0), ("loraplus", 16.0)):
            cells[method], hist, ext = row_best(
                name, overrides, summary, ratio, args.runs, args.out, 0 if args.smoke else 2
            )
            found.update(hist)
            extension += ext
        plot_extended(name, summary, extension, args.out)
        if task == "rotten-tomatoes" and demo_lrs is not None:
            write_demo_lrs(summary, cells, extension, base, demo_lrs)
        for method, ratio in (("lora", 1.0), ("loraplus", 16.0)):
            sname = f"{name}-seeds-{method}"
            lr_a = [cells[method]["lr_a"]]
            s = sweep(sname, overrides, lr_a, [ratio], seeds, args.runs, args.out)
            found.update(histories(s, args.runs, sname))
        steps = int(overrides["max_steps"])
        rows.append(compare(task, "MiniLM-L6 (384)", cells, summary, found, steps, extension))
        write_outputs(rows, args.out)
    if args.mpnet:
        name = "mpnet-20newsgroups"
        overrides = {**base, "model": "mpnet", "data": "20newsgroups", "max_steps": 100}
        if args.smoke:
            overrides.update(SMOKE)
        summary = sweep(
            name, overrides, MPNET_GRID["lr_a"], MPNET_GRID["ratios"], [0], args.runs, args.out
        )
        found = histories(summary, args.runs, name)
        cells = {"lora": best_in_row(summary, 1.0), "loraplus": best_in_row(summary, 16.0)}
        for method, ratio in (("lora", 1.0), ("loraplus", 16.0)):
            sname = f"{name}-seeds-{method}"
            lr_a = [cells[method]["lr_a"]]
            s = sweep(sname, overrides, lr_a, [ratio], seeds, args.runs, args.out)
            found.update(histories(s, args.runs, sname))
        steps = int(overrides["max_steps"])
        rows.append(compare("20newsgroups", "MPNet-base (768)", cells, summary, found, steps))
        write_outputs(rows, args.out)
    return 0


def write_outputs(rows: list[dict[str, Any]], out: Path) -> None:
    """results.json and results.md (the README's table), atomically."""
    write_json(out / "results.json", rows)
    text = table(rows)
    tmp = out / "results.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "results.md")
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
