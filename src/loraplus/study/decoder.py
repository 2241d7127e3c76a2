"""The decoder study (benchmarks/studies/decoder.toml): its ratio scan's lr lines and its report.

LoRA vs LoRA+ on a causal LM with no new head, scored by eval loss and exact match
(TrainConfig.exact_match). The report reads every run's record (metrics.json, keyed by the
run's own config: lr_A, ratio, seed, init) and the lr_A each method's tune chose; it writes
report.json, report.md and curves.png (eval loss against step).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplus.lr_search import mean_std
from loraplus.study.method_tasks import final_ratios
from loraplus.train.history import steps_to_reach
from loraplus.train.record import TrainResult

if TYPE_CHECKING:
    from loraplus.study.config import Stage, StudyConfig
    from loraplus.study.run import Done, StudyResult

LADDER = 2.5e-4  # the ratio scan's lr_A lines sit on LADDER * 2^k
METHODS = {"lora": 1.0, "loraplus": 16.0}  # the two tuned methods and their ratios
SCAN_RATIOS = (2.0, 4.0, 8.0, 32.0)  # the ratio scan (the first alone under --smoke)
NAMES = {"lora": "LoRA (ratio 1)", "loraplus": "LoRA+ (ratio 16)"}
Key = tuple[float, Any, int, str]  # (lr_A, ratio or "auto", seed, init)


def scan_line(lr_lora: float, lr_plus: float, ratio: float, ladder: float = LADDER) -> list[float]:
    """Two lr_A values, x2 apart on the ladder * 2^k, bracketing the log-interpolation
    (log-extrapolation past 16) between LoRA's lr_A at ratio 1 and LoRA+'s at ratio 16; the one
    nearer the interpolated value first."""
    t = math.log2(lr_lora) + math.log2(ratio) / 4 * (math.log2(lr_plus) - math.log2(lr_lora))
    x = t - math.log2(ladder)
    k = math.floor(x + 1e-9)
    line = [ladder * 2.0**k, ladder * 2.0 ** (k + 1)]
    return line if x - k <= 0.5 + 1e-9 else line[::-1]


def prepare_data(cfg: StudyConfig, write: bool = True) -> dict[str, Any]:
    """The study's `prepare`: a built-in data set's rows written once as <runs>/data/train.jsonl,
    test.jsonl (prompt, response) and data.json, drawn by load_data with seed 0 (max_train,
    max_eval), so that every run trains on the same rows while its seed moves the init and the
    batch order; the overrides that point every run there. Data that is not built in: {}."""
    from loraplus import zoo
    from loraplus.data import load_data

    train = cfg.stages[0].train
    name = str(train.get("data", ""))
    if name not in zoo.DATASETS:
        return {}
    folder = (cfg.runs / "data").resolve()
    if write and not (folder / "data.json").exists():
        from loraplus._io import atomic_file, write_json

        limits = {"max_train": train.get("max_train"), "max_eval": train.get("max_eval")}
        data = load_data(
            name,
            task="causal-lm",
            seed=0,
            max_train=limits["max_train"],
            max_eval=limits["max_eval"],
        )
        for part, rows in (("train", data.train), ("test", data.eval)):
            with atomic_file(folder / f"{part}.jsonl") as handle:
                for row in rows:
                    handle.write(json.dumps({"prompt": row["prompt"], "response": row["response"]}))
                    handle.write("\n")
        info = {"source": name, "seed": 0, **limits, "split": data.split}
        write_json(folder / "data.json", {**info, "rows": [len(data.train), len(data.eval)]})
    return {"data": str(folder), "max_train": None, "max_eval": None}


def chosen_lrs(stage: Stage, earlier: Mapping[str, Sequence[Done]]) -> dict[str, float]:
    """The lr_A each method of the stage's first `after` tune chose (methods without one left
    out)."""
    from loraplus.study.run import chosen

    rows = [row for done in earlier[stage.after[0]] for row in chosen(done)]
    return {row["method"]: row["lr_a"] for row in rows if row["lr_a"] is not None}


def ratio_scan(
    cfg: StudyConfig, stage: Stage, earlier: Mapping[str, Sequence[Done]]
) -> list[dict[str, Any]]:
    """A stage's `at` cells (study/run.py): each scanned ratio on its scan_line between LoRA's
    and LoRA+'s chosen lr_A; every ratio's nearer point first, so a scan cut short has one lr_A
    per ratio."""
    lrs = chosen_lrs(stage, earlier)
    if not {"lora", "loraplus"} <= set(lrs):
        return []
    ratios = SCAN_RATIOS[:1] if cfg.smoke else SCAN_RATIOS
    lines = {r: scan_line(lrs["lora"], lrs["loraplus"], r) for r in ratios}
    return [
        {"label": f"ratio{r:g}-lr{lines[r][k]:.3g}", "lr_a": lines[r][k], "ratio": r}
        for k in (0, 1)
        for r in ratios
    ]


def auto_cell(
    cfg: StudyConfig, stage: Stage, earlier: Mapping[str, Sequence[Done]]
) -> list[dict[str, Any]]:
    """A stage's `at` cell: ratio="auto" at LoRA+'s chosen lr_A (no re-tuning)."""
    lr = chosen_lrs(stage, earlier).get("loraplus")
    return [] if lr is None else [{"label": "at-loraplus", "lr_a": lr, "method": "auto"}]


def run_key(record: TrainResult) -> Key:
    """(lr_A, ratio, seed, init) of a run, from its own config."""
    c = record.config
    ratio = c.get("ratio", 1.0)
    return (float(c["lr"]), ratio if ratio == "auto" else float(ratio), int(c["seed"]), c["init"])


def index(records: Iterable[TrainResult]) -> dict[Key, TrainResult]:
    """The runs by run_key."""
    return {run_key(r): r for r in records}


def curve(record: TrainResult) -> list[tuple[int, float]]:
    """(step, eval_loss) of one run, step 0 included."""
    return [(int(r["step"]), float(r["eval_loss"])) for r in record.history if "eval_loss" in r]


def best_loss(record: TrainResult) -> float | None:
    """The run's lowest eval loss after step 0 (its record's; None when it diverged)."""
    return record.final.get("best_eval_loss")


def final_loss(record: TrainResult) -> float | None:
    """The run's eval loss at its last evaluation (its record's; None when it diverged)."""
    return record.final.get("eval_loss")


def exact(record: TrainResult | None) -> float | None:
    """Exact match at the run's last evaluation (None without --exact-match)."""
    return None if record is None else record.final.get("eval_exact_match")


def compare(chosen: Mapping[str, float], runs: Mapping[Key, TrainResult]) -> dict[str, Any]:
    """LoRA vs LoRA+ at their chosen lr_A over every seed run there: best/final eval loss,
    perplexity, exact match, curves, and the steps LoRA+ needs to reach LoRA's final loss."""
    out: dict[str, Any] = {}
    per: dict[str, dict[int, TrainResult]] = {}
    for method, lr in chosen.items():
        ratio = METHODS[method]
        cells = sorted(k for k in runs if k[:2] == (lr, ratio) and k[3] == "init1")
        per[method] = found = {k[2]: runs[k] for k in cells}
        losses = [best_loss(m) for m in found.values()]
        finite = [v for v in losses if v is not None]
        out[method] = {
            "lr_a": lr,
            "ratio": ratio,
            "seeds": sorted(found),
            "best_eval_loss": losses,
            "final_eval_loss": [final_loss(m) for m in found.values()],
            "exact_match": [exact(m) for m in found.values()],
            "curves": {str(s): curve(m) for s, m in found.items()},
            "perplexity": math.exp(statistics.mean(finite)) if finite else None,
        }
    reach: list[int | None] = []
    for seed, lora in per.get("lora", {}).items():
        plus = per.get("loraplus", {}).get(seed)
        target = final_loss(lora)
        if plus is not None and target is not None:
            reach.append(steps_to_reach(plus.history, "eval_loss", target))
    out["reach_steps"] = reach  # per seed; None = never within the run
    return out


def line_rows(runs: Mapping[Key, TrainResult], ratio: float) -> list[dict[str, Any]]:
    """Every seed-0 Init[1] run at `ratio`, by lr_A: best/final eval loss and exact match."""
    rows = []
    for key in sorted(k for k in runs if k[1] == ratio and k[2] == 0 and k[3] == "init1"):
        m = runs[key]
        rows.append(
            {
                "lr_a": key[0],
                "ratio": ratio,
                "diverged": m.diverged,
                "best": best_loss(m),
                "final": final_loss(m),
                "exact_match": exact(m),
            }
        )
    return rows


def scan_rows(runs: Mapping[Key, TrainResult]) -> list[dict[str, Any]]:
    """One row per fixed ratio run at seed 0: the lr_A tried, the best, its loss, a note."""
    ratios = sorted({k[1] for k in runs if isinstance(k[1], float) and k[3] == "init1"})
    rows = []
    for ratio in ratios:
        cells = [c for c in line_rows(runs, ratio) if c["best"] is not None]
        if not cells:
            continue
        top = min(cells, key=lambda c: c["best"])
        tried = [c["lr_a"] for c in line_rows(runs, ratio)]
        note = "tuned (x4 apart)" if ratio in METHODS.values() else ""
        if not note and top["lr_a"] in (tried[0], tried[-1]):
            note = "best on the line's edge"
        rows.append({**top, "tried": tried, "note": note})
    return rows


def init_rows(chosen: Mapping[str, float], runs: Mapping[Key, TrainResult]) -> dict[str, Any]:
    """Init[1] vs Init[2] at each chosen cell, seed 0: best eval loss, exact match, the curve."""
    rows = {}
    for method, lr in chosen.items():
        one = runs.get((lr, METHODS[method], 0, "init1"))
        two = runs.get((lr, METHODS[method], 0, "init2"))
        if two is None:
            continue
        rows[method] = {
            "lr_a": lr,
            "ratio": METHODS[method],
            "init1": best_loss(one) if one else None,
            "init2": best_loss(two),
            "init1_em": exact(one),
            "init2_em": exact(two),
            "curve": curve(two),
        }
    return rows


def auto_rows(runs: Mapping[Key, TrainResult]) -> dict[str, Any]:
    """ratio="auto" runs, per seed: best eval loss, LoRA+'s at the same lr_A and seed, the
    ratio each module kind ended at, and the curve ({} without auto runs)."""
    autos = sorted((k for k in runs if k[1] == "auto"), key=lambda k: k[2])
    if not autos:
        return {}
    seeds = {}
    for key in autos:
        plus = runs.get((key[0], 16.0, key[2], "init1"))
        seeds[str(key[2])] = {
            "lr_a": key[0],
            "best_eval_loss": best_loss(runs[key]),
            "loraplus": best_loss(plus) if plus else None,
            "ratios": final_ratios(runs[key]),
            "curve": curve(runs[key]),
        }
    return {"lr_a": autos[0][0], "seeds": seeds}


def build(records: Iterable[TrainResult], chosen: Mapping[str, float]) -> dict[str, Any]:
    """The report's data: compare, grids, ratios, init, auto (results.json)."""
    runs = index(records)
    return {
        "chosen": dict(chosen),
        "compare": compare(chosen, runs),
        "grids": {m: line_rows(runs, METHODS[m]) for m in chosen},
        "ratios": scan_rows(runs),
        "init": init_rows(chosen, runs),
        "auto": auto_rows(runs),
        "runs": len(runs),
    }


def figure(report: Mapping[str, Any], title: str) -> dict[str, Any]:
    """plots.draw_eval_curves data: LoRA and LoRA+ (mean, min-max band), Init[2] dashed,
    auto dotted per seed."""
    colours = {"lora": "tab:blue", "loraplus": "tab:red"}
    series: list[dict[str, Any]] = []
    for method in ("lora", "loraplus"):
        row = report["compare"].get(method)
        if row and row["curves"]:
            label = (
                f"{NAMES[method]}, lr_A {row['lr_a']:.3g}, {len(row['curves'])} seed(s)"
                f"{'' if len(row['curves']) < 2 else ', min-max'}"
            )
            runs = list(row["curves"].values())
            series.append({"label": label, "runs": runs, "colour": colours[method]})
        other = report["init"].get(method)
        if other:
            label = "  same cell, Init[2], seed 0"
            series.append(
                {"label": label, "runs": [other["curve"]], "colour": colours[method], "style": "--"}
            )
    auto = report.get("auto") or {}
    if auto:
        runs = [r["curve"] for r in auto["seeds"].values()]
        label = f'ratio="auto" at lr_A {auto["lr_a"]:.3g}, each seed'
        series.append(
            {"label": label, "runs": runs, "colour": "tab:green", "style": ":", "band": False}
        )
    return {
        "series": series,
        "ylabel": "eval loss (response tokens)",
        "log": True,
        "title": title,
    }


def fmt(value: Any) -> str:
    """A number with 3 decimals, or n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def step_table(main: Mapping[str, Any]) -> list[tuple[int, str, str]]:
    """(step, LoRA eval loss, LoRA+ eval loss) over the seeds, at every evaluation."""
    by_step: dict[str, dict[int, list[float]]] = {"lora": {}, "loraplus": {}}
    for method, table in by_step.items():
        for points in main.get(method, {}).get("curves", {}).values():
            for step, value in points:
                table.setdefault(int(step), []).append(float(value))
    steps = sorted(set(by_step["lora"]) | set(by_step["loraplus"]))
    return [
        (s, mean_std(by_step["lora"].get(s, [])), mean_std(by_step["loraplus"].get(s, [])))
        for s in steps
    ]


def markdown(report: Mapping[str, Any], title: str, steps: int) -> str:
    """results.md: every table of the report."""
    lines = [f"# {title}", "", "## LoRA vs LoRA+ at their tuned learning rates", ""]
    lines += [
        "| method | lr_A (lr_B) | seeds | best eval loss | perplexity | final eval loss "
        "| exact match (final) |",
        "|---|---|---|---|---|---|---|",
    ]
    main = report["compare"]
    for method, name in NAMES.items():
        r = main.get(method)
        if not r:
            continue
        lines.append(
            f"| {name} | {r['lr_a']:.3g} ({r['lr_a'] * r['ratio']:.3g}) | "
            f"{','.join(map(str, r['seeds']))} | {mean_std(r['best_eval_loss'])} | "
            f"{fmt(r['perplexity'])} | {mean_std(r['final_eval_loss'])} | "
            f"{mean_std(r['exact_match'])} |"
        )
    reach = main.get("reach_steps", [])
    if reach:
        text = ", ".join("never" if x is None else str(x) for x in reach)
        lines += ["", f"Steps LoRA+ needs to reach LoRA's final eval loss (of {steps}): {text}."]
    lines += ["", "Eval loss at each evaluation (mean ± std over the seeds above):", ""]
    lines += ["| step | LoRA | LoRA+ |", "|---|---|---|"]
    lines += [f"| {s} | {a} | {b} |" for s, a, b in step_table(main)]
    lines += ["", "![eval loss](curves.png)", "", "## The lr lines (seed 0)", ""]
    lines += ["| method | lr_A | lr_B | best eval loss | final eval loss | exact match |"]
    lines += ["|---|---|---|---|---|---|"]
    for method, cells in report["grids"].items():
        for c in cells:
            mark = " **chosen**" if c["lr_a"] == report["chosen"][method] else ""
            best = "diverged" if c["diverged"] else fmt(c["best"])
            lines.append(
                f"| {method} | {c['lr_a']:.3g} | {c['lr_a'] * c['ratio']:.3g} | {best}{mark} "
                f"| {fmt(c['final'])} | {fmt(c['exact_match'])} |"
            )
    if report.get("init"):
        lines += ["", "## Init[1] (B = 0) vs Init[2] (A = 0) at the chosen cells, seed 0", ""]
        lines += [
            "| method | lr_A | Init[1] best eval loss | Init[2] best eval loss | "
            "Init[1] exact match | Init[2] exact match |",
            "|---|---|---|---|---|---|",
        ]
        for method, r in report["init"].items():
            lines.append(
                f"| {method} | {r['lr_a']:.3g} | {fmt(r['init1'])} | {fmt(r['init2'])} | "
                f"{fmt(r['init1_em'])} | {fmt(r['init2_em'])} |"
            )
    if len(report.get("ratios", [])) > len(report["grids"]):
        lines += ["", "## Ratio scan, each ratio at its best lr_A on its line (seed 0)", ""]
        lines += ["| ratio | lr_A tried | best lr_A | best eval loss | exact match | note |"]
        lines += ["|---|---|---|---|---|---|"]
        for r in report["ratios"]:
            lines.append(
                f"| {r['ratio']:g} | {', '.join(f'{x:.3g}' for x in r['tried'])} | "
                f"{r['lr_a']:.3g} | {fmt(r['best'])} | {fmt(r['exact_match'])} | {r['note']} |"
            )
    if report.get("auto"):
        auto = report["auto"]
        lines += ["", f'## ratio="auto" at LoRA+\'s lr_A ({auto["lr_a"]:.3g}), no re-tuning', ""]
        lines += ["| seed | best eval loss | LoRA+ (ratio 16), same seed | ratio at the end |"]
        lines += ["|---|---|---|---|"]
        for seed, r in auto["seeds"].items():
            ends = ", ".join(f"{k} {v:.3g}" for k, v in r["ratios"].items())
            lines.append(f"| {seed} | {fmt(r['best_eval_loss'])} | {fmt(r['loraplus'])} | {ends} |")
        values = [r["best_eval_loss"] for r in auto["seeds"].values()]
        lines += ["", f"Mean ± std: {mean_std(values)}."]
    return "\n".join(lines) + "\n"


def report(result: StudyResult, out: Path) -> dict[str, Any]:
    """The study's report (`report = "loraplus.study.decoder:report"`): the decoder tables of
    every stage that ran (report.md, report.json, curves.png) and, with the methods stage, the
    method table (methods.md, methods.json, methods.png) in `out`."""
    from loraplus.study import method_tasks
    from loraplus.study.run import chosen, records

    lrs = {r["method"]: r["lr_a"] for d in result.runs("grid") for r in chosen(d) if r["lr_a"]}
    dones = [d for name in ("grid", "init2", "scan", "auto") for d in result.runs(name)]
    found = write(Path(out), [r for d in dones for r in records(d).values()], lrs, result.cfg.title)
    if result.runs("methods"):
        method_tasks.report(result, out, ("grid", "scan", "methods"), "best-ratio")
    return found


def write(
    out: Path, records: Iterable[TrainResult], chosen: Mapping[str, float], title: str
) -> dict[str, Any]:
    """report.json, report.md and curves.png of the runs into `out`; the report's data."""
    from loraplus._io import atomic_file, write_json
    from loraplus.plots import plot_eval_curves

    records = list(records)
    report = build(records, chosen)
    steps = max((int(r.final.get("steps", 0)) for r in records), default=0)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    with atomic_file(out / "report.md") as handle:
        handle.write(markdown(report, title, steps))
    if any(report["compare"][m]["curves"] for m in chosen):
        plot_eval_curves(out / "curves.png", figure(report, title))
    return report
