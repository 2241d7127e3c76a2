"""LoRA optimizers and inits compared on the width-n teacher-student, each with its own tuned lr.

The toy part of the issue "Pick the ratio without a 2-D grid" (parts 4 and 5). On the LoRA MLP of
loraplus.experiments.lora_mlp (PEFT LoRA r = 4 on two n×n layers) at each width n, every method
gets the same 1-D lr grid (extended past an edge while the best lr sits on it), picks its lr on
seed 0, then runs seeds 0, 1, 2 at that lr. `best-ratio` searches the 2-D grid lr × ratio
∈ {1, 4, 16, 64, 256} instead. Metric: the MSE against the teacher on 1024 held-out inputs after
the last step (the data are fresh every step, so there is no overfitting and train = eval).

Methods (lr is lr_A where the method has a ratio; AdamW without weight decay unless it brings its
own optimizer):
  lora             ratio 1                     loraplus         ratio 16
  best-ratio       the best (lr, ratio) of the 2-D grid
  auto             ratio="auto" (loraplus.autoratio)
  width-aware      ratio 16, width_aware=True, n_ref = --n-ref (default: the smallest width):
                   lr_A = lr·n_ref/n, lr_B = 16·lr, i.e. an effective ratio 16·n/n_ref. Both
                   layers have fan-in n, so with the default n_ref (the model's median fan-in)
                   it would be loraplus exactly; at n = n_ref it is.
  lorafa           peft.optimizers.create_lorafa_optimizer (A frozen, B's gradient projected)
  riemannian       peft.optimizers.create_riemannian_optimizer(AdamW, reg=1e-2)
  rslora           ratio 1, LoraConfig(use_rslora=True) (here scaling α/√r = 2 instead of α/r = 1)
  pissa            ratio 1, LoraConfig(init_lora_weights="pissa"); the teacher is built from the
                   original base weights, so the task is unchanged
  loraplus+rslora  ratio 16 with use_rslora=True

Every finished run is kept in --out/results.json and skipped on a restart (the key holds the
width, the recipe, lr, seed and steps). Prints the table; writes results.md and methods.png.
Usage: python benchmarks/method_study.py [--widths 64,256,1024] [--steps 300] [--smoke]
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft.optimizers import create_lorafa_optimizer, create_riemannian_optimizer

import loraplus
from loraplus._io import write_json
from loraplus.experiments.lora_mlp import batches, lora_config, mse, teacher_student

RATIOS = (1.0, 4.0, 16.0, 64.0, 256.0)
GRID = tuple(1e-4 * 10 ** (k / 2) for k in range(6))  # 1e-4 ... 3.2e-2, half a decade apart
SMOKE_GRID: tuple[float, ...] = (1e-3, 1e-2)
SEEDS = (0, 1, 2)
MAX_EXTEND = 3  # lrs added past either edge at most
EVAL_SIZE = 1024
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
OUT = Path(__file__).parents[1] / "docs/study/methods"


@dataclass(frozen=True)
class Recipe:
    """How one run builds its adapter and optimizer; `key` names it in the results file."""

    optimizer: str = "loraplus"  # loraplus | auto | lorafa | riemannian
    ratio: float = 1.0
    rslora: bool = False
    pissa: bool = False
    n_ref: int | None = None  # width_aware=True with this n_ref

    @property
    def key(self) -> str:
        parts = [self.optimizer if self.optimizer != "loraplus" else f"ratio={self.ratio:g}"]
        parts += ["rslora"] * self.rslora + ["pissa"] * self.pissa
        parts += [f"width-aware,n_ref={self.n_ref}"] if self.n_ref is not None else []
        return ",".join(parts)


def recipes(n_ref: int) -> dict[str, list[Recipe]]:
    """Each method's recipes: one, or best-ratio's column per ratio."""
    return {
        "lora": [Recipe(ratio=1.0)],
        "loraplus": [Recipe(ratio=16.0)],
        "best-ratio": [Recipe(ratio=q) for q in RATIOS],
        "auto": [Recipe(optimizer="auto")],
        "width-aware": [Recipe(ratio=16.0, n_ref=n_ref)],
        "lorafa": [Recipe(optimizer="lorafa")],
        "riemannian": [Recipe(optimizer="riemannian")],
        "rslora": [Recipe(ratio=1.0, rslora=True)],
        "pissa": [Recipe(ratio=1.0, pissa=True)],
        "loraplus+rslora": [Recipe(ratio=16.0, rslora=True)],
    }


def build(recipe: Recipe, n: int, seed: int, lr: float) -> tuple[Any, Callable[..., Any], Any]:
    """The student, its teacher and the optimizer of one run."""
    changes: dict[str, Any] = {"use_rslora": recipe.rslora}
    if recipe.pissa:
        changes["init_lora_weights"] = "pissa"
    config = lora_config(**changes)
    model, teacher = teacher_student(n, seed, config)
    opt: Any
    if recipe.optimizer == "lorafa":
        opt = create_lorafa_optimizer(model, r=config.r, lora_alpha=config.lora_alpha, lr=lr)
    elif recipe.optimizer == "riemannian":
        opt = create_riemannian_optimizer(model, torch.optim.AdamW, lr=lr, weight_decay=0.0)
    elif recipe.optimizer == "auto":
        opt = loraplus.create_optimizer(model, "adamw", lr=lr, ratio="auto")
    else:
        aware: dict[str, Any] = (
            {"width_aware": True, "n_ref": recipe.n_ref} if recipe.n_ref is not None else {}
        )
        opt = loraplus.create_optimizer(model, "adamw", lr=lr, ratio=recipe.ratio, **aware)
    return model, teacher, opt


def run(recipe: Recipe, n: int, seed: int, lr: float, steps: int) -> dict[str, Any]:
    """One training run: held-out MSE every steps/6 steps and at the end; None once diverged."""
    start = time.perf_counter()
    model, teacher, opt = build(recipe, n, seed, lr)
    data = batches(n, seed=7 + seed)
    x_eval = torch.randn(EVAL_SIZE, n, generator=torch.Generator().manual_seed(10_000 + seed))
    every = max(1, steps // 6)
    curve: list[tuple[int, float | None]] = [(0, mse(model, teacher, x_eval))]
    for t in range(1, steps + 1):
        x = next(data)
        loss = (model(x) - teacher(x)).pow(2).mean()
        if not math.isfinite(float(loss.detach())):
            curve.append((t, None))
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
        if t % every == 0 or t == steps:
            value = mse(model, teacher, x_eval)
            curve.append((t, value if math.isfinite(value) else None))
    out: dict[str, Any] = {"final": curve[-1][1] if curve[-1][0] == steps else None}
    out["curve"] = curve
    if recipe.optimizer == "auto":
        ratios = opt.ratios().values()
        out["ratio"] = 2 ** statistics.mean(math.log2(v) for v in ratios)
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


def score(result: dict[str, Any]) -> float:
    """The loss a run is ranked by; a diverged run ranks last."""
    final = result["final"]
    return math.inf if final is None else float(final)


@dataclass
class Study:
    """Runs done and to do, kept in `path` after each one."""

    path: Path
    steps: int
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    done_now: int = 0

    def load(self) -> None:
        if self.path.exists():
            import json

            self.runs = json.loads(self.path.read_text()).get("runs", {})

    def get(self, recipe: Recipe, n: int, lr: float, seed: int) -> dict[str, Any]:
        key = f"n={n}|{recipe.key}|lr={lr:.4g}|seed={seed}|steps={self.steps}"
        if key not in self.runs:
            result = run(recipe, n, seed, lr, self.steps)
            self.runs[key] = {"n": n, "recipe": recipe.key, "lr": lr, "seed": seed, **result}
            self.done_now += 1
            self.save({})
            final = result["final"]
            shown = "diverged" if final is None else f"{final:.4f}"
            print(f"  {key}: {shown} ({result['seconds']:.1f} s)", flush=True)
        return self.runs[key]

    def save(self, extra: dict[str, Any]) -> None:
        write_json(self.path, {**extra, "runs": self.runs})


def tune_lr(
    study: Study, recipe: Recipe, n: int, grid: Sequence[float], refine: bool = True
) -> tuple[list[float], list[float]]:
    """Seed 0 at every lr of the grid, extended past an edge that holds the best, then (refine)
    at the two lrs half a grid step either side of the best: (lrs, losses), lrs ascending."""
    lrs = sorted(grid)
    step = lrs[1] / lrs[0] if len(lrs) > 1 else math.sqrt(10)
    added = {"low": 0, "high": 0}
    while True:
        losses = [score(study.get(recipe, n, lr, 0)) for lr in lrs]
        best = min(range(len(lrs)), key=losses.__getitem__)
        if not math.isfinite(losses[best]):
            return lrs, losses
        if best == 0 and added["low"] < MAX_EXTEND:
            lrs.insert(0, lrs[0] / step)
            added["low"] += 1
        elif best == len(lrs) - 1 and added["high"] < MAX_EXTEND:
            lrs.append(lrs[-1] * step)
            added["high"] += 1
        else:
            break
    if refine:
        lrs = sorted([*lrs, lrs[best] / math.sqrt(step), lrs[best] * math.sqrt(step)])
        losses = [score(study.get(recipe, n, lr, 0)) for lr in lrs]
    return lrs, losses


def evaluate(
    study: Study,
    method: str,
    options: list[Recipe],
    n: int,
    grid: Sequence[float],
    refine: bool = True,
) -> dict[str, Any]:
    """One method at width n: its lr (and ratio) on seed 0, then every seed there."""
    columns: list[dict[str, Any]] = []
    for recipe in options:
        lrs, losses = tune_lr(study, recipe, n, grid, refine)
        columns.append({"recipe": recipe, "lrs": lrs, "losses": losses})
    picks = [
        (loss, i, lr)
        for i, c in enumerate(columns)
        for lr, loss in zip(c["lrs"], c["losses"], strict=True)
    ]
    _, col, lr = min(picks, key=lambda p: p[0])
    recipe = columns[col]["recipe"]
    seeds = [study.get(recipe, n, lr, seed) for seed in SEEDS]
    finals = [score(r) for r in seeds]
    finite = [v for v in finals if math.isfinite(v)]
    row: dict[str, Any] = {
        "method": method,
        "n": n,
        "recipe": recipe.key,
        "lr": lr,
        "ratio": recipe.ratio if method == "best-ratio" else None,
        "finals": [None if not math.isfinite(v) else v for v in finals],
        "mean": statistics.mean(finals) if len(finite) == len(finals) else None,
        "std": statistics.stdev(finals) if len(finite) == len(finals) > 1 else None,
        "runs": sum(len(c["lrs"]) for c in columns) + len(SEEDS) - 1,
        "sweep": [
            {
                "recipe": c["recipe"].key,
                "lrs": c["lrs"],
                "losses": [_finite(v) for v in c["losses"]],
            }
            for c in columns
        ],
    }
    if recipe.optimizer == "auto":
        row["auto_ratio"] = statistics.mean(r["ratio"] for r in seeds)
    return row


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def fmt(row: dict[str, Any]) -> str:
    if row["mean"] is None:
        return "diverged"
    return f"{row['mean']:.4f} ± {row['std']:.4f}"


def table(rows: list[dict[str, Any]], widths: list[int]) -> str:
    """The README table: mean ± std over the seeds at each width, the lr picked, runs needed."""
    by = {(r["method"], r["n"]): r for r in rows}
    head = (
        "| method | "
        + " | ".join(f"n = {n}: loss (lr)" for n in widths)
        + f" | runs (n = {'/'.join(map(str, widths))}) |"
    )
    lines = [head, "|---" * (len(widths) + 2) + "|"]
    for method in METHODS:
        if not any((method, n) in by for n in widths):
            continue
        cells = []
        best = {
            n: min(r["mean"] for r in rows if r["n"] == n and r["mean"] is not None) for n in widths
        }
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


T_CRIT = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78}  # two-sided 95% Student t, by degrees of freedom


def paired(rows: list[dict[str, Any]], widths: list[int]) -> tuple[str, list[str]]:
    """Each method's loss over best-ratio's on the same seed (same model, teacher and data).

    The seeds change the task's difficulty more than the methods do, so the comparison is per
    seed: the geometric mean of loss / best-ratio's loss with its range, and a paired t-test on
    the log ratios (95%, len(SEEDS) - 1 degrees of freedom).
    """
    by = {(r["method"], r["n"]): r for r in rows}
    lines = [
        "| method | " + " | ".join(f"n = {n}" for n in widths) + " |",
        "|---" * (len(widths) + 1) + "|",
    ]
    verdicts = []
    for method in METHODS:
        if method == "best-ratio" or not any((method, n) in by for n in widths):
            continue
        cells = []
        for n in widths:
            a, b = by.get((method, n)), by.get(("best-ratio", n))
            if a is None or b is None or None in a["finals"] + b["finals"]:
                cells.append("-")
                continue
            logs = [math.log(x / y) for x, y in zip(a["finals"], b["finals"], strict=True)]
            mean = statistics.mean(logs)
            half = T_CRIT.get(len(logs) - 1, 2.0) * statistics.stdev(logs) / math.sqrt(len(logs))
            same = abs(mean) <= half
            cells.append(
                f"×{math.exp(mean):.2f} [{math.exp(min(logs)):.2f}, {math.exp(max(logs)):.2f}]"
                + ("" if same else " *")
            )
            if method in ("auto", "loraplus", "width-aware"):
                verdicts.append(
                    f"- n = {n}: {method} / best-ratio = ×{math.exp(mean):.2f} (95% CI "
                    f"×{math.exp(mean - half):.2f} to ×{math.exp(mean + half):.2f}): "
                    + (
                        "not told from ×1 at 3 seeds"
                        if same
                        else "worse, beyond the noise"
                        if mean > 0
                        else "better, beyond the noise"
                    )
                )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines), verdicts


def figure(path: Path, rows: list[dict[str, Any]], widths: list[int]) -> None:
    """Held-out loss (seed 0) against lr, one panel per width, one line per method; at the lr
    picked, the mean and the range of the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loraplus.plots import save_png

    fig, axes = plt.subplots(1, len(widths), figsize=(5.2 * len(widths), 5.0), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, n in zip(axes[0], widths, strict=True):
        title = f"width n = {n}"
        for i, method in enumerate(METHODS):
            row = next((r for r in rows if r["method"] == method and r["n"] == n), None)
            if row is None:
                continue
            if row["ratio"] is not None:
                title += f" (best-ratio: ratio {row['ratio']:g})"
            sweep = next(s for s in row["sweep"] if s["recipe"] == row["recipe"])
            pts = [
                (lr, v)
                for lr, v in zip(sweep["lrs"], sweep["losses"], strict=True)
                if v is not None
            ]
            style = "--" if i >= 8 else ("-." if method == "best-ratio" else "-")
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, color=colours(i), marker=".", label=method, lw=1.2)
            if row["mean"] is not None:
                low, high = min(row["finals"]), max(row["finals"])
                ax.errorbar(
                    [row["lr"]],
                    [row["mean"]],
                    yerr=[[row["mean"] - low], [high - row["mean"]]],
                    color=colours(i),
                    marker="o",
                    ms=6,
                    capsize=3,
                )
        ax.set(xscale="log", yscale="log", title=title, xlabel="lr (lr_A; LoRA-FA: lr_B)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("held-out MSE after training, seed 0")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(
        "Each method's lr sweep (seed 0); dot: mean of 3 seeds at the lr picked, bar: range"
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_png(fig, path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,256,1024")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--n-ref", type=int, default=None, help="width-aware's n_ref (smallest n)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--no-refine", action="store_true", help="skip the two lrs half a step around the best"
    )
    parser.add_argument("--smoke", action="store_true", help="n = 16, 2 lrs, 20 steps (a test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.smoke:
        widths, steps, grid = [16], 20, SMOKE_GRID
    else:
        widths, steps, grid = [int(w) for w in args.widths.split(",")], args.steps, GRID
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    n_ref = args.n_ref or min(widths)
    options = recipes(n_ref)
    args.out.mkdir(parents=True, exist_ok=True)
    study = Study(args.out / "results.json", steps)
    study.load()
    start = time.perf_counter()
    rows = []
    for n in widths:
        for method in methods:
            rows.append(evaluate(study, method, options[method], n, grid, not args.no_refine))
            print(f"n={n} {method}: {fmt(rows[-1])} at lr {rows[-1]['lr']:.3g}", flush=True)
    seconds = time.perf_counter() - start
    command = "python benchmarks/method_study.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    text = table(rows, widths)
    ratios, notes = paired(rows, widths)
    print(text)
    print(ratios)
    print("\n".join(notes))
    print(f"({study.done_now} runs in {seconds:.0f} s; {len(study.runs)} in the file)")
    summary = {
        "command": command.strip(),
        "widths": widths,
        "steps": steps,
        "grid": list(grid),
        "ratios": list(RATIOS),
        "seeds": list(SEEDS),
        "refine": not args.no_refine,
        "n_ref": n_ref,
        "peft": __import__("peft").__version__,
        "torch": torch.__version__,
        "rows": rows,
        "paired": ratios,
        "comparisons": notes,
        "seconds_this_call": round(seconds, 1),
        "run_seconds_total": round(sum(r["seconds"] for r in study.runs.values()), 1),
    }
    study.save(summary)
    figure(args.out / "methods.png", rows, widths)
    write_markdown(args.out / "results.md", summary, text, ratios, notes)
    return 0


def write_markdown(
    path: Path, summary: dict[str, Any], text: str, ratios: str, notes: list[str]
) -> None:
    """results.md: the table, how it was made; a '## Reading' section already there is kept."""
    kept = ""
    if path.exists():
        old = path.read_text()
        if "\n## Reading" in old:
            kept = old[old.index("\n## Reading") :]
    grid = ", ".join(f"{lr:.2g}" for lr in summary["grid"])
    refined = ", then the two lrs half a step either side of the best" * summary["refine"]
    body = f"""# LoRA methods on the width-n teacher-student, each with its own tuned lr

`{summary["command"]}` (torch {summary["torch"]}, peft {summary["peft"]}, one CPU thread;
{len(summary["rows"])} method × width cells, {summary["run_seconds_total"]:.0f} s of training runs)

The LoRA MLP of `loraplus.experiments.lora_mlp` (PEFT LoRA r = 4, α = 4 on two n × n layers,
teacher = base + rank-2 shift per layer), {summary["steps"]} steps of batch 64 on fresh inputs.
Loss: MSE against the teacher on 1024 held-out inputs after the last step, mean ± std over
seeds {", ".join(map(str, summary["seeds"]))} (model, teacher, data and eval set all change with
the seed).

Each method picked its lr on seed 0 from the grid {grid}
(extended by the same factor past an edge that held the best, at most {MAX_EXTEND} times a
side{refined}); `best-ratio` picked (lr, ratio) from the same lrs ×
ratio ∈ {{{", ".join(f"{q:g}" for q in summary["ratios"])}}}. "runs": training runs the method
needed on its own (lr search + 2 more seeds; best-ratio pays for its whole 2-D grid). Bold: the
lowest mean at that width. lr is lr_A for the LoRA+ family (auto: at its start, ratio 16), the
one lr of LoRA-FA (it trains B only) and of the Riemannian AdamW. width-aware uses
n_ref = {summary["n_ref"]}: lr_A = lr · {summary["n_ref"]}/n, lr_B = 16 · lr, an effective
ratio 16 · n/{summary["n_ref"]}; with its default n_ref (the model's median fan-in: both layers
have fan-in n) it would be loraplus exactly.

{text}

The seeds change the task (teacher, init, data) and move every method's loss together, so the
std above is mostly the task's spread. Paired by seed, each method's loss over best-ratio's on the
same seed: geometric mean [lowest, highest of the {len(summary["seeds"])} seeds]; * where a paired
t-test on the log ratios (95%, {len(summary["seeds"]) - 1} degrees of freedom) tells it from ×1:

{ratios}

{chr(10).join(notes)}

![held-out loss against lr per method and width](methods.png)
"""
    path.write_text(body + kept)


if __name__ == "__main__":
    sys.exit(main())
