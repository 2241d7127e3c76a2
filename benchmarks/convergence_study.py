"""The paper's speed claim where it can show: LoRA vs LoRA+ on MiniLM trained to convergence, with
the classifier head at one absolute learning rate shared by both methods.

The issue "Evidence that holds", part 3. The head (role "head"; "other" when these runs started)
trained at lr_A, which is ~16x smaller under LoRA+ than under LoRA, so the head's lr decided
earlier A/B comparisons (docs/study/head). Here it gets its own lr (`--lr-roles head=X`), tuned
once per task and shared.

Stages per task (each a resumable Optuna study under --runs; rerun the command to continue):
  1. head   150 steps, seed 0: LoRA (ratio 1, lr 6.4e-3) and LoRA+ (ratio 16, lr_A 4e-4), the
            paper study's chosen cells, each with the head at every lr of HEAD_LRS (and one x4
            step past an edge that holds the best); the head lr with the best mean of the two
            best accuracies is chosen.
  2. lines  150 steps, seed 0, chosen head lr: each method's lr_A on a x4 line around its cell
            (extended by one x4 step past an edge that holds the best): `loraplus.sweep.tune`.
  3. runs   the chosen cells, seeds 0, 1, 2, 3 epochs (750 steps) with eval every 25 steps and
            early stopping after 4 evaluations without a better accuracy; also, as a control,
            any line cell within NEAR (1 point) of its method's chosen cell.
Writes into --out: results.json, results.md and curves-<task>.png.
Usage: python benchmarks/convergence_study.py [--task rotten-tomatoes|20newsgroups] [--smoke]
(one process per task runs both tasks at once on 2 cores; then run it once more with no --task
to write the report).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from paper_study import best_acc, final_acc, histories, sweep

from loraplus._io import atomic_file, write_json
from loraplus.sweep import SweepSummary, TuneConfig, best_cell, tune
from loraplus.sweep.tune import mean_std
from loraplus.train.history import steps_to_reach

COMMAND = "python benchmarks/convergence_study.py"
TASKS = ("rotten-tomatoes", "20newsgroups")
HEAD_LRS = (1e-3, 4e-3, 1.6e-2)
START = {"lora": (6.4e-3, 1.0), "loraplus": (4e-4, 16.0)}  # the paper study's chosen cells
SEEDS = [0, 1, 2]
NEAR = 0.01  # a line cell this close to the chosen one also runs to convergence (a control)
BASE = {
    "model": "minilm",
    "max_train": 4000,
    "max_eval": 400,
    "batch_size": 16,
    "max_length": 64,
    "rank": 8,
    "alpha": 16,
}
SHORT = {"max_steps": 150, "eval_steps": 25}
LONG = {"max_steps": -1, "epochs": 3, "eval_steps": 25, "early_stopping_patience": 4}
SMOKE = {"max_train": 64, "max_eval": 32, "batch_size": 8}
SMOKE_SHORT = {"max_steps": 2, "eval_steps": 1}
SMOKE_LONG = {"max_steps": -1, "epochs": 1, "eval_steps": 4, "early_stopping_patience": 1}


def best_value(summary: SweepSummary) -> float:
    """The best complete cell's mean of a one-cell (or one-line) sweep."""
    best = best_cell(summary.cells)
    if best is None:
        raise RuntimeError(f"{summary.study_name}: no complete cell")
    return float(best["mean"])


def head_stage(task: str, base: dict[str, Any], runs: Path, out: Path) -> dict[str, Any]:
    """Each method at its start cell with the head at each HEAD_LRS value; the best head lr."""
    table: dict[str, dict[str, float]] = {}

    def run(heads: list[float]) -> str:
        for head in heads:
            for method, (lr, ratio) in START.items():
                overrides = {**base, "data": task, "lr_roles": [f"head={head:g}"]}
                name = f"{task}-head{head:g}-{method}"
                summary = sweep(name, overrides, [lr], [ratio], [0], runs, out)
                table.setdefault(f"{head:g}", {})[method] = best_value(summary)
        return max(table, key=lambda h: statistics.mean(table[h].values()))

    chosen = run(list(HEAD_LRS))
    if float(chosen) in (min(HEAD_LRS), max(HEAD_LRS)):  # one x4 step past the edge
        chosen = run([float(chosen) * (4 if float(chosen) == max(HEAD_LRS) else 0.25)])
    return {"table": table, "chosen": float(chosen)}


def line_stage(
    task: str, base: dict[str, Any], head: float, runs: Path, out: Path
) -> dict[str, Any]:
    """Each method's lr_A on a x4 line around its start cell (seed 0), one x4 step past a best
    edge: loraplus.sweep.tune, one study for both methods; its tune.json copied to out."""
    overrides = {**base, "data": task, "lr_roles": [f"head={head:g}"]}
    name = f"{task}-line-head{head:g}"
    cfg = TuneConfig(
        method=list(START),
        centres=[f"{method}={lr:g}" for method, (lr, _) in START.items()],
        step=4.0,
        extend=1,
        seeds=[0],
        overrides=overrides,
        study_name=name,
        out_dir=str(runs / name),
    )
    summary = tune(cfg)
    shutil.copyfile(runs / name / "tune.json", out / f"{name}_tune.json")
    found: dict[str, Any] = {}
    for row in summary.methods:
        line = {p["lr_a"]: p["value"] for p in row["line"] if p["status"] == "complete"}
        found[row["method"]] = {"ratio": row["ratio"], "line": line, "lr_a": row["lr_a"]}
    return found


def run_stage(
    task: str,
    base: dict[str, Any],
    head: float,
    chosen: dict[str, Any],
    runs: Path,
    out: Path,
    seeds: list[int] = SEEDS,
) -> dict[str, Any]:
    """The chosen cells to convergence, 3 seeds (--smoke: 1); each run's eval history."""
    result: dict[str, Any] = {}
    for method, cell in chosen.items():
        overrides = {**base, "data": task, "lr_roles": [f"head={head:g}"]}
        name = f"{task}-converge-{method}-head{head:g}"
        summary = sweep(name, overrides, [cell["lr_a"]], [cell["ratio"]], seeds, runs, out)
        rows = histories(summary, runs, name)
        result[method] = {
            "lr_a": cell["lr_a"],
            "ratio": cell["ratio"],
            "runs": {str(seed): rows[key] for key in sorted(rows) for seed in [key[2]]},
        }
    return result


def runners_up(lines: dict[str, Any], near: float = NEAR) -> dict[str, Any]:
    """Line cells within `near` of their method's chosen cell at 150 steps: the lr choice there
    was close, so they run to convergence too (keys like "lora-lr0.0016")."""
    extra = {}
    for method, line in lines.items():
        best = line["line"][line["lr_a"]]
        for lr, value in line["line"].items():
            if lr != line["lr_a"] and value >= best - near:
                extra[f"{method}-lr{lr:g}"] = {"lr_a": lr, "ratio": line["ratio"]}
    return extra


def label(key: str) -> str:
    """LoRA / LoRA+ and, for a runner-up cell, its lr."""
    method, _, lr = key.partition("-lr")
    name = "LoRA" if method == "lora" else "LoRA+"
    return f"{name} (runner-up lr_A {lr})" if lr else name


def compare(converge: dict[str, Any]) -> dict[str, Any]:
    """Best/final accuracy per method; steps LoRA+ needs to reach LoRA's final accuracy."""
    summary: dict[str, Any] = {}
    for method, data in converge.items():
        runs = data["runs"].values()
        summary[method] = {
            "best": [best_acc(r) for r in runs],
            "final": [final_acc(r) for r in runs],
            "steps": [r[-1]["step"] for r in runs],
            "best_step": [
                max((x for x in r if x["step"] > 0), key=lambda x: x["eval_accuracy"])["step"]
                for r in runs
            ],
        }
    reach = {}
    for seed, lora_rows in converge["lora"]["runs"].items():
        plus_rows = converge["loraplus"]["runs"].get(seed)
        if plus_rows is not None:
            lora_at = steps_to_reach(lora_rows, "eval_accuracy", final_acc(lora_rows))
            reach[seed] = {
                "lora_final": final_acc(lora_rows),
                "lora_steps": lora_at,
                "loraplus_steps": steps_to_reach(plus_rows, "eval_accuracy", final_acc(lora_rows)),
            }
    summary["reach"] = reach
    return summary


def plot(task: str, converge: dict[str, Any], path: Path) -> None:
    """Eval accuracy over steps: each seed's curve per method."""
    from loraplus._extras import require

    require("plots", "the convergence study's curves")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = ["tab:blue", "tab:red", "tab:cyan", "tab:orange", "tab:green"]
    for k, (method, data) in enumerate(converge.items()):
        text = f"{label(method)}: lr_A {data['lr_a']:g}, ratio {data['ratio']:g}"
        for i, rows in enumerate(data["runs"].values()):
            points = [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
            ax.plot(
                *zip(*points, strict=True),
                color=colors[k % len(colors)],
                alpha=0.8,
                label=text if i == 0 else None,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("eval accuracy")
    ax.set_title(f"MiniLM on {task}: to convergence, head lr shared")
    ax.legend()
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    """The README's table and the stages behind it."""
    lines = [
        "# LoRA vs LoRA+ to convergence, head lr shared (MiniLM)",
        "",
        f"Command: `{report['command']}` (see the module docstring). Settings: {json.dumps(BASE)}; "
        f"stage 3: {json.dumps(LONG)}.",
        "",
        "| task | head lr | method | lr_A (ratio) | best acc | final acc | steps run "
        "| step of best | LoRA+ steps to LoRA's final acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, res in report["tasks"].items():
        comp = res["compare"]
        reach = ", ".join(
            f"{v['loraplus_steps'] if v['loraplus_steps'] is not None else 'never'}"
            f" (LoRA {v['lora_steps']})"
            for v in comp["reach"].values()
        )
        for method in res["converge"]:
            c = res["converge"][method]
            m = comp[method]
            lines.append(
                f"| {task} | {res['head']['chosen']:g} | {label(method)}"
                f" | {c['lr_a']:g} ({c['ratio']:g}) | {mean_std(m['best'])} "
                f"| {mean_std(m['final'])} | {', '.join(map(str, m['steps']))} "
                f"| {', '.join(map(str, m['best_step']))} "
                f"| {reach if method == 'loraplus' else ''} |"
            )
    lines += ["", "## Stage 1: head lr (150 steps, seed 0, best eval accuracy)", ""]
    lines += ["| task | head lr | LoRA (6.4e-3) | LoRA+ (4e-4, ratio 16) |", "|---|---|---|---|"]
    for task, res in report["tasks"].items():
        for head, row in res["head"]["table"].items():
            mark = " **chosen**" if float(head) == res["head"]["chosen"] else ""
            lines.append(f"| {task} | {head}{mark} | {row['lora']:.3f} | {row['loraplus']:.3f} |")
    lines += ["", "## Stage 2: lr_A lines at the chosen head lr (150 steps, seed 0)", ""]
    lines += ["| task | method | lr_A: best eval accuracy | chosen |", "|---|---|---|---|"]
    for task, res in report["tasks"].items():
        for method, line in res["lines"].items():
            ordered = sorted(line["line"].items(), key=lambda kv: float(kv[0]))
            cells = ", ".join(f"{float(k):g}: {v:.3f}" for k, v in ordered)
            lines.append(f"| {task} | {method} | {cells} | {line['lr_a']:g} |")
    for task in report["tasks"]:
        lines += ["", f"![{task}](curves-{task}.png)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=TASKS, action="append", help="default: both")
    parser.add_argument(
        "--controls", nargs="*", choices=TASKS, help="tasks that run the NEAR controls (all)"
    )
    parser.add_argument(
        "--near", type=float, default=NEAR, help="control: line cells this close to the best"
    )
    parser.add_argument("--runs", default="runs/convergence")
    parser.add_argument("--out", default="docs/study/convergence")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test")
    args = parser.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    short = {**BASE, **SHORT, **(SMOKE | SMOKE_SHORT if args.smoke else {})}
    long = {**BASE, **LONG, **(SMOKE | SMOKE_LONG if args.smoke else {})}
    start = time.perf_counter()
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    report: dict[str, Any] = {"command": command, "base": BASE, "long": LONG, "tasks": {}}
    for task in args.task or TASKS:
        head = head_stage(task, short, runs, out)
        lines = line_stage(task, short, head["chosen"], runs, out)
        seeds = SEEDS[:1] if args.smoke else SEEDS
        converge = run_stage(task, long, head["chosen"], lines, runs, out, seeds)
        if task in (args.controls if args.controls is not None else TASKS):
            near = runners_up(lines, args.near)
            extra = run_stage(task, long, head["chosen"], near, runs, out, seeds)
            converge.update(extra)
        report["tasks"][task] = {
            "head": head,
            "lines": {
                m: {**v, "line": {f"{k:g}": x for k, x in v["line"].items()}}
                for m, v in lines.items()
            },
            "converge": converge,
            "compare": compare(converge),
        }
        plot(task, converge, out / f"curves-{task}.png")
    if args.task:  # one task of a parallel pair: the report waits for a run with no --task
        print(f"{', '.join(args.task)} done in {time.perf_counter() - start:.0f} s")
        return 0
    report["seconds_this_call"] = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", report)
    with atomic_file(out / "results.md") as handle:
        handle.write(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
