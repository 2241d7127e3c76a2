"""LoRA methods on a real task, each with its own tuned lr: `loraplus sweep --method` per method.

The issue "Pick the ratio without a 2-D grid", parts 4 and 5, on the encoder task: MiniLM on
20 Newsgroups (the hard task of the paper study), 150 steps, with the classifier head at one
absolute lr shared by every method (`--lr-roles head=H`, H chosen by convergence_study.py), so
that the head does not decide the comparison. For each method: an lr_A line x4 apart around a
prior centre (seed 0), extended by one x4 step past an edge that holds the best, then seeds 1
and 2 at the chosen lr_A. `best-ratio` is the best of the fixed-ratio methods (ratio 1, 4, 16,
64) on seed 0, the 2-D grid's answer, and pays for all their runs. width-aware is not run:
every LoRA layer of MiniLM (query, value) has fan-in 384, so with the default n_ref (the median)
it is LoRA+ exactly.

Each sweep is a resumable Optuna study under --runs. Several processes may split the methods
(`--methods a b`), then one call with `--report` writes results.json, results.md and
methods.png into --out.
Usage: python benchmarks/method_tasks.py --head-lr H [--methods ...] [--report] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import convergence_study
import paper_study
from paper_study import mean_std

from loraplus._io import atomic_file, write_json
from loraplus.sweep import SweepSummary

COMMAND = "python benchmarks/method_tasks.py --head-lr {head}"
CENTRES = {  # prior lr_A centres: the paper study's cells, scaled where the method rescales
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
}
FIXED = ("lora", "ratio=4", "loraplus", "ratio=64")  # best-ratio chooses among these
# The convergence study's 150-step settings (its lines and head lrs) on 20 Newsgroups.
SETTINGS = {**convergence_study.BASE, "data": "20newsgroups", **convergence_study.SHORT}
SMOKE = {"max_train": 64, "max_eval": 32, "batch_size": 8, "max_steps": 2, "eval_steps": 1}


def sweep(
    name: str,
    method: str,
    lrs: list[float],
    seeds: list[int],
    base: dict[str, Any],
    dirs: tuple[Path, Path],
) -> SweepSummary:
    """One resumable `--method` sweep (dirs: runs, out); its sweep.json copied to out."""
    runs, out = dirs
    out.mkdir(parents=True, exist_ok=True)
    return paper_study.sweep(name, base, lrs, None, seeds, runs, out, method=[method])


def complete(summary: SweepSummary) -> dict[float, float]:
    """lr_A -> value of the complete cells."""
    return {c["lr_a"]: c["mean"] for c in summary.cells if c["state"] == "complete"}


def tune(method: str, base: dict[str, Any], dirs: tuple[Path, Path]) -> dict[str, Any]:
    """The method's line (seed 0) with one edge extension, then seeds 1, 2 at its best lr_A."""
    centre = CENTRES[method]
    line = [centre / 4, centre, centre * 4]
    key = method.replace("=", "")
    cells = complete(sweep(f"{key}-line", method, line, [0], base, dirs))
    n_runs = len(line)
    if cells:
        best = max(cells, key=lambda k: cells[k])
        if best in (min(line), max(line)):
            extra = best / 4 if best == min(line) else best * 4
            cells.update(complete(sweep(f"{key}-edge", method, [extra], [0], base, dirs)))
            n_runs += 1
    if not cells:
        return {"method": method, "line": {}, "lr_a": None, "values": [], "runs": n_runs}
    best = max(cells, key=lambda k: cells[k])
    seeds = sweep(f"{key}-seeds", method, [best], [1, 2], base, dirs)
    values = [cells[best]] + [v for v in seeds.cells[0]["values"] if v is not None]
    return {
        "method": method,
        "line": {f"{k:g}": v for k, v in sorted(cells.items())},
        "lr_a": best,
        "values": values,
        "runs": n_runs + 2,
    }


def report(found: dict[str, dict[str, Any]], head: float, out: Path) -> dict[str, Any]:
    """The table rows (best-ratio added), results.json, results.md, methods.png."""
    fixed = [found[m] for m in FIXED if m in found and found[m]["lr_a"] is not None]
    rows = [found[m] for m in CENTRES if m in found]
    if fixed:
        chosen = max(fixed, key=lambda r: r["line"][f"{r['lr_a']:g}"])
        rows.insert(
            len([m for m in FIXED if m in found]),
            {
                **chosen,
                "method": f"best-ratio ({chosen['method']})",
                "runs": sum(r["runs"] - 2 for r in fixed) + 2,
            },
        )
    result = {
        "command": COMMAND.format(head=f"{head:g}"),
        "settings": SETTINGS,
        "head_lr": head,
        "rows": rows,
    }
    write_json(out / "results.json", result)
    lines = [
        "# LoRA methods on MiniLM / 20 Newsgroups, each with its own tuned lr",
        "",
        f"Command: `{result['command']}`. Settings: {SETTINGS}; head lr {head:g} for every method.",
        "",
        "| method | lr_A | best eval accuracy (3 seeds) | runs | lr_A line (seed 0) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        line = ", ".join(f"{k}: {v:.3f}" for k, v in r["line"].items())
        lr = "n/a" if r["lr_a"] is None else f"{r['lr_a']:g}"
        lines.append(f"| {r['method']} | {lr} | {mean_std(r['values'])} | {r['runs']} | {line} |")
    with atomic_file(out / "results.md") as handle:
        handle.write("\n".join(lines) + "\n\n![methods](methods.png)\n")
    plot(rows, out / "methods.png")
    return result


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Each method's seeds (dots) and mean (bar) of the best eval accuracy."""
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
        ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.03))
    ax.set_ylabel("best eval accuracy")
    ax.set_title("MiniLM on 20 Newsgroups, 150 steps, each method at its tuned lr_A")
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head-lr", type=float, required=True, help="the head's shared lr")
    parser.add_argument("--methods", nargs="+", choices=list(CENTRES), default=list(CENTRES))
    parser.add_argument("--report", action="store_true", help="write the report (all methods)")
    parser.add_argument("--runs", default="runs/method-tasks")
    parser.add_argument("--out", default="docs/study/method-tasks")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test")
    args = parser.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    base = {**SETTINGS, **(SMOKE if args.smoke else {}), "lr_roles": [f"head={args.head_lr:g}"]}
    methods = list(CENTRES) if args.report else args.methods
    found = {m: tune(m, base, (runs, out)) for m in methods}
    if args.report:
        out.mkdir(parents=True, exist_ok=True)
        result = report(found, args.head_lr, out)
        for r in result["rows"]:
            print(
                f"{r['method']:>28}  lr_A {r['lr_a']}  {mean_std(r['values'])}  ({r['runs']} runs)"
            )

    return 0


if __name__ == "__main__":
    sys.exit(main())
