"""LoRA methods on real tasks, each with its own tuned lr: `loraplus sweep --method` per method.

The issue "Pick the ratio without a 2-D grid", parts 4 and 5, on two tasks:
- `--task encoder`: MiniLM on 20 Newsgroups (the hard task of the paper study), 150 steps, the
  classifier head at one absolute lr shared by every method (`--head-lr H`, H chosen by
  convergence_study.py), so that the head does not decide the comparison; best eval accuracy.
  width-aware is not run: every LoRA layer of MiniLM (query, value) has fan-in 384, so with the
  default n_ref (the median) it is LoRA+ exactly.
- `--task decoder`: SmolLM2-135M, 20 Newsgroups as post -> topic name, the settings of
  decoder_study.py (30 steps, no new head); best eval loss. LoRA, LoRA+ and the fixed ratios 2, 4,
  8, 32 are read from that study's sweeps (`--prior`, same settings, data and seeds), not re-run.
  width-aware differs from LoRA+ here: down_proj has fan-in 1536, every other target 576.

For each method, `loraplus.sweep.tune`: an lr_A line x4 apart around a prior centre (seed 0),
extended by one x4 step past an edge that holds the best, then seeds 1 and 2 at the chosen lr_A.
`best-ratio` is the best fixed-ratio method on seed 0 (the 2-D grid's answer; its seeds 1 and 2 are
run if missing) and pays for all their runs. Each tune and sweep is a resumable Optuna study under
--runs. Several processes may split the methods (`--methods a b`), then one call with `--report`
(over the methods given, default all) writes results.json, results.md and methods.png into --out.
Usage: python benchmarks/method_tasks.py [--task encoder --head-lr H | --task decoder]
       [--methods ...] [--report] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import convergence_study
import decoder_study
import paper_study

from loraplus._io import atomic_file, write_json
from loraplus.sweep import TuneConfig
from loraplus.sweep import tune as run_tune
from loraplus.sweep.tune import mean_std
from loraplus.train.record import read_record

Row = dict[str, Any]  # method, line {lr: seed-0 value}, lr_a, values (seeds 0, 1, 2), runs


@dataclass(frozen=True)
class Task:
    """One task of the study: its run settings, metric, and each method's prior lr_A centre."""

    title: str
    settings: dict[str, Any]
    metric: str  # eval_accuracy (higher is better) or eval_loss (lower is better)
    centres: dict[str, float]
    fixed: tuple[str, ...]  # best-ratio chooses among these
    smoke: dict[str, Any]

    def best(self, values: dict[float, float]) -> float:
        """The key with the best value."""
        pick = min if self.metric == "eval_loss" else max
        return pick(values, key=lambda k: values[k])


ENCODER = Task(
    title="MiniLM on 20 Newsgroups, 150 steps",
    # the convergence study's 150-step settings (its lines and head lrs)
    settings={**convergence_study.BASE, "data": "20newsgroups", **convergence_study.SHORT},
    metric="eval_accuracy",
    centres={  # the paper study's cells, scaled where the method rescales
        "lora": 6.4e-3,
        "ratio=4": 1.6e-3,
        "loraplus": 4e-4,
        "ratio=64": 1e-4,
        "auto": 4e-4,
        "lorafa": 6.4e-3,
        "riemannian": 6.4e-3,
        "rslora": 1.6e-3,  # alpha / sqrt(r) is 2.8x alpha / r at r = 8
        "pissa": 1.6e-3,
        "loraplus+rslora": 1e-4,
    },
    fixed=("lora", "ratio=4", "loraplus", "ratio=64"),
    smoke={"max_train": 64, "max_eval": 32, "batch_size": 8, "max_steps": 2, "eval_steps": 1},
)
SCAN = (2.0, 4.0, 8.0, 32.0)  # decoder_study's ratio scan
DECODER = Task(
    title="SmolLM2-135M on 20 Newsgroups (post -> topic), 30 steps",
    settings={**decoder_study.SETTINGS, "max_steps": 30},
    metric="eval_loss",
    centres={  # decoder_study's chosen cells (LoRA 4e-3, LoRA+ 2.5e-4), on its x4 ladder
        "lora": 4e-3,
        "loraplus": 2.5e-4,
        **{f"ratio={r:g}": 0.0 for r in SCAN},  # read from the prior study only
        "auto": 2.5e-4,
        "width-aware": 2.5e-4,
        "lorafa": 4e-3,
        "riemannian": 4e-3,
        "rslora": 1e-3,
        "pissa": 1e-3,
        "loraplus+rslora": 6.25e-5,
    },
    fixed=("lora", "loraplus", *(f"ratio={r:g}" for r in SCAN)),
    smoke={**decoder_study.SMOKE, "max_steps": 2, "eval_steps": 1},
)
TASKS = {"encoder": ENCODER, "decoder": DECODER}


def sweep(name: str, method: str, lrs: list[float], seeds: list[int], job: dict[str, Any]) -> Any:
    """One resumable `--method` sweep; its sweep.json copied to out."""
    job["out"].mkdir(parents=True, exist_ok=True)
    return paper_study.sweep(
        name,
        job["base"],
        lrs,
        None,
        seeds,
        job["runs"],
        job["out"],
        method=[method],
        metric=job["task"].metric,
    )


def key(method: str) -> str:
    """A method's name in study names (no '=')."""
    return method.replace("=", "")


def seeds_at(method: str, lr: float, job: dict[str, Any]) -> list[float]:
    """Seeds 1 and 2 of a method at lr_A (their values, complete runs only)."""
    summary = sweep(f"{key(method)}-seeds", method, [lr], [1, 2], job)
    return [v for v in summary.cells[0]["values"] if v is not None]


def tune(method: str, job: dict[str, Any]) -> Row:
    """The method's lr_A line x4 around its prior centre (seed 0) with one edge extension, then
    seeds 1, 2 at its best: `loraplus.sweep.tune`, one resumable study per method."""
    task: Task = job["task"]
    name = f"{key(method)}-tune"
    cfg = TuneConfig(
        method=[method],
        centre=task.centres[method],
        step=4.0,
        extend=1,
        seeds=[0, 1, 2],
        overrides=job["base"],
        metric=task.metric,
        study_name=name,
        out_dir=str(job["runs"] / name),
    )
    found = run_tune(cfg).methods[0]
    job["out"].mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job["runs"] / name / "tune.json", job["out"] / f"{name}.json")
    row = {
        "method": method,
        "line": {f"{p['lr_a']:g}": p["value"] for p in found["line"] if p["status"] == "complete"},
        "lr_a": found["lr_a"],
        "values": [v for v in found["values"] if v is not None],
        "runs": found["runs"],
    }
    if method == "auto" and found["lr_a"] is not None:
        row["ratios_at_end"] = ratios_at_end(job["runs"], method, found["lr_a"])
    return row


def ratios_at_end(runs: Path, method: str, lr: float) -> dict[str, dict[str, float]]:
    """seed -> {module kind: lr_B / lr_A} that auto's controller ended at, in each run of the
    method at lr_A (read from the runs' metrics.json)."""
    found = {}
    for path in sorted(runs.glob(f"{key(method)}-*/trials/*/metrics.json")):
        metrics = read_record(path).to_dict()
        if metrics["config"]["lr"] != lr:
            continue
        ends = decoder_study.final_ratios(metrics)
        if ends:
            found[str(metrics["config"]["seed"])] = ends
    return dict(sorted(found.items()))


def decoder_prior(folder: Path) -> dict[str, Row]:
    """LoRA, LoRA+ and the ratio scan from decoder_study's sweeps in `folder`: each ratio's lr_A
    line (seed 0) and, where that study ran them, seeds 1 and 2 at its chosen lr_A."""
    lines: dict[float, dict[float, float]] = {}
    seeds: dict[tuple[float, float], list[float]] = {}  # (ratio, lr_A) -> seeds 1, 2
    for path in sorted(folder.glob("*_sweep.json")):
        if path.name.startswith("init2"):
            continue  # Init[2] is another method
        data = json.loads(path.read_text())
        for cell in data["cells"]:
            if cell["state"] != "complete":
                continue
            ratio = float(cell["ratio"])
            if data["seeds"] == [0]:
                lines.setdefault(ratio, {})[cell["lr_a"]] = cell["mean"]
            else:
                seeds[ratio, cell["lr_a"]] = [v for v in cell["values"] if v is not None]
    found: dict[str, Row] = {}
    for ratio, line in sorted(lines.items()):
        method = {1.0: "lora", 16.0: "loraplus"}.get(ratio, f"ratio={ratio:g}")
        best = min(line, key=lambda k: line[k])
        values = [line[best], *seeds.get((ratio, best), [])]  # seeds at the chosen lr only
        found[method] = {
            "method": method,
            "line": {f"{k:g}": v for k, v in sorted(line.items())},
            "lr_a": best,
            "values": values,
            "runs": len(line) + len(values) - 1,
            "source": str(folder),
        }
    return found


def best_ratio(found: dict[str, Row], task: Task, job: dict[str, Any] | None) -> Row | None:
    """The fixed-ratio method best on seed 0, with its seeds (run through `job` if missing), and
    the runs of every fixed-ratio line it was chosen from."""
    fixed = [found[m] for m in task.fixed if m in found and found[m]["lr_a"] is not None]
    if not fixed:
        return None
    at_best = {i: r["line"][f"{r['lr_a']:g}"] for i, r in enumerate(fixed)}
    chosen = fixed[task.best(at_best)]
    values = list(chosen["values"])
    if len(values) == 1 and job is not None:
        values += seeds_at(chosen["method"], chosen["lr_a"], job)
    line_runs = sum(r["runs"] - (len(r["values"]) - 1) for r in fixed)
    return {
        **chosen,
        "method": f"best-ratio ({chosen['method']})",
        "values": values,
        "runs": line_runs + len(values) - 1,
    }


def report(found: dict[str, Row], task: Task, out: Path, command: str, best: Row | None) -> Any:
    """The table rows (best-ratio after the fixed ratios), results.json, results.md, methods.png."""
    rows = [found[m] for m in task.centres if m in found]
    if best is not None:
        rows.insert(len([m for m in task.fixed if m in found]), best)
    result = {"command": command, "task": task.title, "settings": task.settings, "rows": rows}
    if "lr_roles" in task.settings:
        result["head_lr"] = float(task.settings["lr_roles"][0].partition("=")[2])
    write_json(out / "results.json", result)
    what = "accuracy" if task.metric == "eval_accuracy" else "loss"
    lines = [
        f"# LoRA methods on {task.title}, each with its own tuned lr",
        "",
        f"Command: `{command}`. Settings: {task.settings}.",
        "",
        f"| method | lr_A | best eval {what} (mean ± std) | seeds | runs | minus best-ratio, "
        "paired by seed | lr_A line (seed 0) |",
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
        if r.get("ratios_at_end"):
            lines += ["", f"lr_B / lr_A where {r['method']} ended (at lr_A {r['lr_a']:g}):", ""]
        for seed, ends in r.get("ratios_at_end", {}).items():
            kinds = ", ".join(f"{k} {v:.3g}" for k, v in ends.items())
            lines.append(f"- seed {seed}: {kinds}")
    with atomic_file(out / "results.md") as handle:
        handle.write("\n".join(lines) + "\n\n![methods](methods.png)\n")
    plot(rows, task, out / "methods.png")
    return result


def paired(row: Row, best: Row | None) -> str:
    """The row's value minus best-ratio's at the same seed: mean (per seed), '' if unpaired.
    Seed-paired, because a seed fixes the init and the batch order for every method."""
    if best is None or best["method"] in (row["method"], f"best-ratio ({row['method']})"):
        return ""
    if not 1 < len(row["values"]) == len(best["values"]):
        return ""
    diffs = [a - b for a, b in zip(row["values"], best["values"], strict=True)]
    return f"{statistics.mean(diffs):+.3f} ({', '.join(f'{d:+.3f}' for d in diffs)})"


def plot(rows: list[Row], task: Task, path: Path) -> None:
    """Each method's seeds (dots) and mean (bar) of the best eval metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for i, r in enumerate(rows):
        if r["values"]:
            ax.bar(i, statistics.mean(r["values"]), color="tab:blue", alpha=0.4)
            ax.plot([i] * len(r["values"]), r["values"], "k.", markersize=6)
    ax.set_xticks(
        range(len(rows)), [r["method"] for r in rows], rotation=35, ha="right", fontsize=8
    )
    values = [v for r in rows for v in r["values"]]
    if values:
        low, high = min(values) - 0.05, max(values) + 0.03
        if task.metric == "eval_accuracy":
            low, high = max(0.0, low), min(1.0, high)
        ax.set_ylim(low, high)
    ax.set_ylabel("best " + task.metric.replace("_", " "))
    ax.set_title(f"{task.title}, each method at its tuned lr_A", fontsize=10)
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=list(TASKS), default="encoder")
    parser.add_argument("--head-lr", type=float, help="the head's shared lr (encoder task)")
    parser.add_argument("--methods", nargs="+", help="methods to run (default: every new one)")
    parser.add_argument("--report", action="store_true", help="write the report (all methods)")
    parser.add_argument("--runs", type=Path, help="default runs/method-tasks[-decoder]")
    parser.add_argument("--out", type=Path, help="default docs/study/method-tasks[-decoder]")
    parser.add_argument("--prior", type=Path, default=Path("docs/study/decoder"))
    parser.add_argument("--model", help="decoder task: a saved model folder instead of smollm2")
    parser.add_argument("--data", type=Path, help="decoder task: a folder with train/test JSONL")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test")
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    suffix = "" if args.task == "encoder" else "-decoder"
    runs = args.runs or Path(f"runs/method-tasks{suffix}")
    out = args.out or Path(f"docs/study/method-tasks{suffix}")
    base = {**task.settings, **(task.smoke if args.smoke else {})}
    command = f"python benchmarks/method_tasks.py --task {args.task}"
    prior: dict[str, Row] = {}
    if args.task == "encoder":
        if args.head_lr is None:
            parser.error("--task encoder needs --head-lr H (the head lr shared by every method)")
        base["lr_roles"] = [f"head={args.head_lr:g}"]
        command += f" --head-lr {args.head_lr:g}"
    else:
        if args.model:
            base["model"] = args.model
        base["data"] = str((args.data or decoder_study_data(runs, decoder_study.DATA)).resolve())
        prior = decoder_prior(args.prior) if args.prior.is_dir() else {}
    shown = dict(base)  # what the report says: no machine's absolute path
    if args.task == "decoder":
        data = decoder_study.DATA
        shown["data"] = (
            str(args.data)
            if args.data
            else (
                f"{data['name']} as decoder_study.py prepares it ({data['max_train']} train, "
                f"{data['max_eval']} eval rows)"
            )
        )
    task = replace(task, settings=shown)
    new = [m for m in task.centres if m not in prior and task.centres[m] > 0]
    methods = args.methods or new
    unknown = sorted(set(methods) - set(new))
    if unknown:
        parser.error(f"unknown or prior-only methods {unknown}: choose from {new}")
    job = {"task": task, "base": base, "runs": runs, "out": out}
    found = dict(prior)
    best = None
    if args.report and prior:
        best = best_ratio(found, task, job)  # the 2-D grid's answer first: it needs 2 runs
    found.update({m: tune(m, job) for m in methods})
    if args.report:
        out.mkdir(parents=True, exist_ok=True)
        best = best or best_ratio(found, task, job)
        result = report(found, task, out, command, best)
        for r in result["rows"]:
            print(
                f"{r['method']:>28}  lr_A {r['lr_a']}  {mean_std(r['values'])}  ({r['runs']} runs)"
            )
    return 0


def decoder_study_data(runs: Path, spec: dict[str, Any]) -> Path:
    """decoder_study's data (the same rows: a seed-0 hash of the text), prepared under runs/."""
    folder = runs / "data"
    folder.mkdir(parents=True, exist_ok=True)
    decoder_study.prepare_data(folder, spec["max_train"], spec["max_eval"])
    return folder


if __name__ == "__main__":
    sys.exit(main())
