"""The convergence study's report (benchmarks/studies/convergence.toml): per task the chosen head
lr, each method's lr_A line, and the runs to convergence (best / final accuracy, steps, the steps
LoRA+ needs to reach LoRA's final accuracy), as report.md, report.json and curves-<task>.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraplus._io import atomic_file, write_json
from loraplus.lr_search import mean_std
from loraplus.plots import plot_seed_curves
from loraplus.study.run import Done, StudyResult, best_each, chosen, records, run_best
from loraplus.train.history import steps_to_reach

METRIC = "eval_accuracy"


def best_acc(rows: list[dict[str, Any]]) -> float:
    """The best evaluation after step 0 (the sweep's value of a run)."""
    return float(max(r[METRIC] for r in rows if r["step"] > 0 and r.get(METRIC) is not None))


def final_acc(rows: list[dict[str, Any]]) -> float:
    """The last evaluation."""
    return float([r[METRIC] for r in rows if r.get(METRIC) is not None][-1])


def label(key: str) -> str:
    """LoRA / LoRA+ and, for a runner-up cell ("lora-lr0.0016"), its lr."""
    method, _, lr = key.partition("-lr")
    name = "LoRA" if method == "lora" else "LoRA+"
    return f"{name} (runner-up lr_A {lr})" if lr else name


def converged(runs: list[Done]) -> dict[str, Any]:
    """Per converge run (by its `at` label): lr_a, ratio, each seed's eval history."""
    found = {}
    for done in runs:
        cfg = done.run.config
        found[done.run.label] = {
            "lr_a": cfg.lr_a[0],  # type: ignore[union-attr]
            "ratio": next(r["ratio"] for r in done.rows) if done.rows else None,
            "runs": {str(k[2]): rec.history for k, rec in sorted(records(done).items())},
        }
    return found


def compare(converge: dict[str, Any]) -> dict[str, Any]:
    """Best/final accuracy per method; steps LoRA+ needs to reach LoRA's final accuracy."""
    summary: dict[str, Any] = {}
    for key, data in converge.items():
        runs = data["runs"].values()
        summary[key] = {
            "best": [best_acc(r) for r in runs],
            "final": [final_acc(r) for r in runs],
            "steps": [r[-1]["step"] for r in runs],
            "best_step": [
                max((x for x in r if x["step"] > 0), key=lambda x: x[METRIC])["step"] for r in runs
            ],
        }
    reach = {}
    for seed, lora_rows in converge.get("lora", {}).get("runs", {}).items():
        plus_rows = converge.get("loraplus", {}).get("runs", {}).get(seed)
        if plus_rows is not None:
            target = final_acc(lora_rows)
            reach[seed] = {
                "lora_final": target,
                "lora_steps": steps_to_reach(lora_rows, METRIC, target),
                "loraplus_steps": steps_to_reach(plus_rows, METRIC, target),
            }
    summary["reach"] = reach
    return summary


def task_report(result: StudyResult, task: str) -> dict[str, Any]:
    """One task: the head table and its choice, the lines, the runs to convergence."""
    head_stage = result.cfg.stage(f"{task}-head")
    heads = result.runs("head", task)
    table: dict[str, dict[str, float | None]] = {}
    for done in heads:
        value = ",".join(done.run.each)
        table.setdefault(value, {})[done.run.label] = run_best(done)
    lines = {
        row["method"]: {
            "lr_a": row["lr_a"],
            "line": {f"{lr:g}": v for lr, v in row["line"].items()},
        }
        for done in result.runs("line", task)
        for row in chosen(done)
    }
    converge = converged(result.runs("converge", task))
    best = best_each(head_stage, heads) if heads else None
    return {
        "head": {"table": table, "chosen": ",".join(best) if best else None},
        "lines": lines,
        "converge": converge,
        "compare": compare(converge) if converge else {},
    }


def markdown(report: dict[str, Any]) -> str:
    """The README's table and the stages behind it."""
    lines = [
        f"# {report['title']}",
        "",
        f"Command: `loraplus study {report['study']}`.",
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
            for v in comp.get("reach", {}).values()
        )
        for key, c in res["converge"].items():
            m, head = comp[key], res["head"]["chosen"]
            lines.append(
                f"| {task} | {head} | {label(key)} | {c['lr_a']:g} ({c['ratio']:g})"
                f" | {mean_std(m['best'])} | {mean_std(m['final'])} | "
                f"{', '.join(map(str, m['steps']))} | {', '.join(map(str, m['best_step']))} "
                f"| {reach if key == 'loraplus' else ''} |"
            )
    lines += ["", "## Stage 1: head lr (seed 0, best eval accuracy)", ""]
    lines += ["| task | head lr | LoRA | LoRA+ |", "|---|---|---|---|"]
    for task, res in report["tasks"].items():
        for head, row in res["head"]["table"].items():
            mark = " **chosen**" if head == res["head"]["chosen"] else ""
            lora, plus = row.get("lora"), row.get("loraplus")
            lines.append(f"| {task} | {head}{mark} | {_num(lora)} | {_num(plus)} |")
    lines += ["", "## Stage 2: lr_A lines at the chosen head lr (seed 0)", ""]
    lines += ["| task | method | lr_A: best eval accuracy | chosen |", "|---|---|---|---|"]
    for task, res in report["tasks"].items():
        for method, line in res["lines"].items():
            cells = ", ".join(f"{k}: {_num(v)}" for k, v in line["line"].items())
            lines.append(f"| {task} | {method} | {cells} | {line['lr_a']:g} |")
    for task in report["tasks"]:
        lines += ["", f"![{task}](curves-{task}.png)"]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report(result: StudyResult, out: Path) -> None:
    """report.json, report.md and each task's curves-<task>.png in `out`."""
    data: dict[str, Any] = {
        "title": result.cfg.title,
        "study": str(result.cfg.path),
        "tasks": {t: task_report(result, t) for t in result.groups()},
    }
    for task, res in data["tasks"].items():
        if not res["converge"]:
            continue
        series = [
            {
                "label": f"{label(key)}: lr_A {c['lr_a']:g}, ratio {c['ratio']:g}",
                "curves": [
                    [(r["step"], r[METRIC]) for r in rows if r.get(METRIC) is not None]
                    for rows in c["runs"].values()
                ],
            }
            for key, c in res["converge"].items()
        ]
        title = f"{task}: to convergence, head lr {res['head']['chosen']} shared"
        figure = {"title": title, "ylabel": "eval accuracy", "series": series}
        plot_seed_curves(out / f"curves-{task}.png", figure)
    write_json(out / "report.json", data)
    with atomic_file(out / "report.md") as handle:
        handle.write(markdown(data))
