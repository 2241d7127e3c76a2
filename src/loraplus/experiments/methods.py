"""LoRA methods on the width-n LoRA MLP, each with its own tuned lr (`loraplus experiment methods`).

On the teacher-student of loraplus.experiments.lora_mlp (PEFT LoRA r = 4 on two n × n layers), at
each width n every method searches its lr on the first seed with loraplus.lr_search's `plan` (a
line of `lr_points` lrs, `per_decade` to a decade; extended past an edge that holds the best, at
most `extend` times; with `refine`, the two lrs half a step either side of the best), then runs
every seed at the lr it picked. `best-ratio` searches one line per ratio in `ratios` and keeps the
best (lr, ratio). Metric: the MSE against the teacher on 1024 held-out inputs after the last step
(fresh inputs every step: no overfitting, train = eval).

Methods (lr is lr_A where the method has a ratio; AdamW without weight decay unless it brings its
own optimizer):
  lora             ratio 1                     loraplus         ratio 16
  best-ratio       the best (lr, ratio) of one lr line per ratio
  auto             ratio="auto" (loraplus.autoratio)
  width-aware      ratio 16, width_aware=True, n_ref (default: the smallest width): lr_A =
                   lr·n_ref/n, lr_B = 16·lr. Both layers have fan-in n, so with the optimizer's
                   own default n_ref (the median fan-in) it would be loraplus exactly.
  lorafa           peft.optimizers.create_lorafa_optimizer (A frozen, B's gradient projected)
  riemannian       peft.optimizers.create_riemannian_optimizer(AdamW, reg=1e-2)
  rslora           ratio 1, LoraConfig(use_rslora=True) (scaling α/√r = 2 instead of α/r = 1)
  pissa            ratio 1, LoraConfig(init_lora_weights="pissa"); the teacher is built from the
                   original base weights, so the task is unchanged
  loraplus+rslora  ratio 16 with use_rslora=True

Every finished run is kept in OUT/results.json (keyed by width, recipe, lr, seed and steps) and
never run again: a killed study resumes, a finished one trains nothing. The report (table,
seed-paired comparison, results.md, methods.png) is loraplus.experiments.methods_report.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import loraplus
from loraplus._io import write_json
from loraplus.experiments.lora_mlp import batches, lora_config, mse, teacher_student
from loraplus.experiments.methods_report import METHODS
from loraplus.lr_search import Search, plan

EVAL_SIZE = 1024


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class MethodsConfig:
    """Widths, steps, methods, seeds and the lr search; each field is one `experiment methods`
    flag and one key of its --config file."""

    widths: list[int] = field(
        default_factory=lambda: [64, 256, 1024], metadata=_help("widths n of the LoRA MLP")
    )
    steps: int = field(default=300, metadata=_help("steps of every run (batch 64, fresh inputs)"))
    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata=_help(f"from {', '.join(METHODS)}")
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata=_help("the first seed picks each method's lr; every seed runs there"),
    )
    lr_low: float = field(default=1e-4, metadata=_help("lowest lr of the first line"))
    lr_points: int = field(default=6, metadata=_help("lrs in the first line (at least 2)"))
    per_decade: float = field(
        default=2.0, metadata=_help("lrs per decade; one step is the extension factor")
    )
    extend: int = field(
        default=3, metadata=_help("at most this many lrs past an edge holding the best")
    )
    refine: bool = field(
        default=True, metadata=_help("then the lrs half a step either side of the best")
    )
    ratios: list[float] = field(
        default_factory=lambda: [1.0, 4.0, 16.0, 64.0, 256.0],
        metadata=_help("best-ratio's ratios, one lr line each"),
    )
    n_ref: int | None = field(
        default=None, metadata=_help("width-aware's n_ref (default: the smallest width)")
    )

    def __post_init__(self) -> None:
        for name in ("widths", "methods", "seeds", "ratios"):
            object.__setattr__(self, name, list(getattr(self, name)))
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"--methods {unknown or '[]'}: choose from {', '.join(METHODS)}.")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"--widths must be >= 1, got {self.widths}.")
        if self.steps < 1 or self.lr_points < 2 or self.extend < 0:
            raise ValueError("--steps and --lr-points (>= 2) must be positive, --extend >= 0.")
        if not self.seeds or not self.ratios or min(self.ratios) <= 0:
            raise ValueError("--seeds and --ratios must not be empty; ratios must be > 0.")
        if not (self.lr_low > 0 and self.per_decade > 0):
            raise ValueError("--lr-low and --per-decade must be > 0.")
        if self.n_ref is not None and self.n_ref < 1:
            raise ValueError(f"--n-ref must be >= 1, got {self.n_ref}.")

    @property
    def grid(self) -> tuple[float, ...]:
        """The first line: lr_low · 10^(k / per_decade), k = 0 .. lr_points - 1."""
        return tuple(self.lr_low * 10 ** (k / self.per_decade) for k in range(self.lr_points))

    @property
    def reference(self) -> int:
        """width-aware's n_ref."""
        return self.n_ref if self.n_ref is not None else min(self.widths)

    def search(self) -> Search:
        """One recipe's lr search at the first seed: loraplus.lr_search's, lrs as computed."""
        grid = self.grid
        return Search(
            centre=grid[len(grid) // 2],
            step=grid[1] / grid[0],
            extend=self.extend,
            refine=self.refine,
            seeds=(self.seeds[0],),
            max_runs=None,
            sign=-1.0,  # lower loss is better
            line=grid,
            digits=None,
        )


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


def recipes(cfg: MethodsConfig) -> dict[str, list[Recipe]]:
    """Each method's recipes: one, or best-ratio's one per ratio."""
    return {
        "lora": [Recipe(ratio=1.0)],
        "loraplus": [Recipe(ratio=16.0)],
        "best-ratio": [Recipe(ratio=q) for q in cfg.ratios],
        "auto": [Recipe(optimizer="auto")],
        "width-aware": [Recipe(ratio=16.0, n_ref=cfg.reference)],
        "lorafa": [Recipe(optimizer="lorafa")],
        "riemannian": [Recipe(optimizer="riemannian")],
        "rslora": [Recipe(ratio=1.0, rslora=True)],
        "pissa": [Recipe(ratio=1.0, pissa=True)],
        "loraplus+rslora": [Recipe(ratio=16.0, rslora=True)],
    }


def build(recipe: Recipe, n: int, seed: int, lr: float) -> tuple[Any, Callable[..., Any], Any]:
    """The student, its teacher and the optimizer of one run."""
    from peft.optimizers import create_lorafa_optimizer, create_riemannian_optimizer

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


def train_run(recipe: Recipe, n: int, seed: int, lr: float, steps: int) -> dict[str, Any]:
    """One run: held-out MSE every steps/6 steps and at the end; `final` None once diverged."""
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
        out["ratio"] = 2 ** statistics.mean(math.log2(v) for v in opt.ratios().values())
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


def _score(final: float | None) -> float:
    """The loss a run is ranked by; a diverged run ranks last."""
    return math.inf if final is None else float(final)


@dataclass
class RunStore:
    """Every run so far, kept in `path` (results.json's "runs") after each new one; `frozen`:
    a missing run raises KeyError instead of training (a report from committed runs)."""

    path: Path
    steps: int
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    frozen: bool = False
    used: set[str] = field(default_factory=set)
    done_now: int = 0
    echo: Callable[[str], None] = lambda _: None

    @classmethod
    def open(cls, path: Path, steps: int, **kw: Any) -> RunStore:
        """The store of `path` (empty if it does not exist yet)."""
        runs = json.loads(path.read_text()).get("runs", {}) if path.exists() else {}
        return cls(path, steps, runs, **kw)

    def get(self, recipe: Recipe, n: int, lr: float, seed: int) -> dict[str, Any]:
        """The run of (recipe, n, lr, seed), trained now if it is not in the store."""
        key = f"n={n}|{recipe.key}|lr={lr:.4g}|seed={seed}|steps={self.steps}"
        if key not in self.runs:
            if self.frozen:
                raise KeyError(f"{key} is not in {self.path}")
            result = train_run(recipe, n, seed, lr, self.steps)
            self.runs[key] = {"n": n, "recipe": recipe.key, "lr": lr, "seed": seed, **result}
            self.done_now += 1
            self.save({})
            final = result["final"]
            shown = "diverged" if final is None else f"{final:.4f}"
            self.echo(f"  {key}: {shown} ({result['seconds']:.1f} s)")
        self.used.add(key)
        return self.runs[key]

    def save(self, extra: dict[str, Any]) -> None:
        write_json(self.path, {**extra, "runs": self.runs})


def search_lr(store: RunStore, cfg: MethodsConfig, recipe: Recipe, n: int) -> dict[str, Any]:
    """One recipe's lr search at width n (tune's `plan`, run to its end): lrs ascending, losses."""
    search = cfg.search()
    results: dict[tuple[float, int], float | None] = {}
    while todo := plan(search, results).todo:
        results.update({(lr, s): store.get(recipe, n, lr, s)["final"] for lr, s in todo})
    lrs = sorted(lr for lr, _ in plan(search, results).runs)
    return {"recipe": recipe, "lrs": lrs, "losses": [results[(lr, search.seeds[0])] for lr in lrs]}


def evaluate(store: RunStore, cfg: MethodsConfig, method: str, n: int) -> dict[str, Any]:
    """One method at width n: its lr (and ratio) on the first seed, then every seed there."""
    columns = [search_lr(store, cfg, recipe, n) for recipe in recipes(cfg)[method]]
    picks = [
        (_score(loss), i, lr)
        for i, c in enumerate(columns)
        for lr, loss in zip(c["lrs"], c["losses"], strict=True)
    ]
    _, col, lr = min(picks, key=lambda p: p[0])
    recipe = columns[col]["recipe"]
    seeds = [store.get(recipe, n, lr, seed) for seed in cfg.seeds]
    finals = [r["final"] for r in seeds]
    done = None not in finals
    row: dict[str, Any] = {
        "method": method,
        "n": n,
        "recipe": recipe.key,
        "lr": lr,
        "ratio": recipe.ratio if method == "best-ratio" else None,
        "finals": finals,
        "mean": statistics.mean(finals) if done else None,
        "std": statistics.stdev(finals) if done and len(finals) > 1 else None,
        "runs": sum(len(c["lrs"]) for c in columns) + len(cfg.seeds) - 1,
        "sweep": [{**c, "recipe": c["recipe"].key} for c in columns],
    }
    if recipe.optimizer == "auto":
        row["auto_ratio"] = statistics.mean(r["ratio"] for r in seeds)
    return row


def run_methods(
    cfg: MethodsConfig,
    out: str | Path,
    *,
    command: str = "",
    echo: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Every method at every width (runs already in OUT/results.json are reused, the others
    trained and added), then results.json, results.md and methods.png; returns the summary."""
    from loraplus.experiments import methods_report

    folder = Path(out).expanduser()
    store = RunStore.open(folder / "results.json", cfg.steps, echo=echo)
    start = time.perf_counter()
    rows = []
    for n in cfg.widths:
        for method in cfg.methods:
            rows.append(evaluate(store, cfg, method, n))
            echo(f"n={n} {method}: {methods_report.fmt(rows[-1])} at lr {rows[-1]['lr']:.3g}")
    seconds = time.perf_counter() - start
    paired, notes = methods_report.paired(rows, cfg.widths)
    summary = {
        "command": command,
        "widths": cfg.widths,
        "steps": cfg.steps,
        "grid": list(cfg.grid),
        "ratios": cfg.ratios,
        "seeds": cfg.seeds,
        "refine": cfg.refine,
        "n_ref": cfg.reference,
        "peft": __import__("peft").__version__,
        "torch": torch.__version__,
        "rows": rows,
        "paired": paired,
        "comparisons": notes,
        "seconds_this_call": round(seconds, 1),
        "run_seconds_total": round(sum(r["seconds"] for r in store.runs.values()), 1),
        "runs_this_call": store.done_now,
        "extend": cfg.extend,
    }
    store.save(summary)
    methods_report.write_report(folder, summary)
    return summary
