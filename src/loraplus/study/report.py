"""The generic report of a study: per stage and run, its cells (mean ± std over seeds), the best
cell of a sweep, the chosen lr_A of each tuned method; results.json and results.md in its out."""

from __future__ import annotations

from typing import Any

from loraplus._io import atomic_file, write_json
from loraplus.lr_search import mean_std
from loraplus.study.run import Done, StudyResult, best_each, cell_means, chosen, function


def run_report(done: Done) -> dict[str, Any]:
    """One run as plain data: its cells (or per method the chosen cell) and its best."""
    cfg = done.run.config
    base = {
        "run": done.run.name,
        "kind": done.run.kind,
        "each": done.run.each,
        "at": done.run.label,
    }
    if done.run.kind == "tune":
        return {**base, "methods": chosen(done)}
    axis = cfg.axis  # type: ignore[union-attr]
    means = cell_means(done.rows, axis)  # complete cells only
    cells = []
    keys = sorted({(r["lr_a"], r.get(axis)) for r in done.rows}, key=lambda k: (k[0], str(k[1])))
    for lr, value in keys:
        got = [r for r in done.rows if r["lr_a"] == lr and r.get(axis) == value]
        cells.append(
            {
                "lr_a": lr,
                axis: value,
                "mean": means.get((lr, value)),
                "values": [r["value"] for r in got],
                "states": [r["status"] for r in got],
            }
        )
    sign = -1.0 if cfg.metric == "eval_loss" else 1.0
    done_cells = [c for c in cells if c["mean"] is not None]
    best = max(done_cells, key=lambda c: sign * c["mean"]) if done_cells else None
    return {**base, "axis": axis, "cells": cells, "best": best}


def write_generic(result: StudyResult) -> None:
    """results.json and results.md: every stage's runs, and each `each` stage's best value."""
    cfg = result.cfg
    stages = []
    for name, done in result.stages.items():
        stage = cfg.stage(name)
        entry: dict[str, Any] = {
            "stage": name,
            "kind": stage.kind,
            "runs": [run_report(d) for d in done],
        }
        if stage.each is not None and done:
            try:
                entry["best"] = {stage.each[0]: best_each(stage, done)}
            except ValueError:
                entry["best"] = None
        stages.append(entry)
    data = {"title": cfg.title, "study": str(cfg.path), "smoke": cfg.smoke, "stages": stages}
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json(cfg.out / "results.json", data)
    with atomic_file(cfg.out / "results.md") as handle:
        handle.write(markdown(data))


def markdown(data: dict[str, Any]) -> str:
    """The generic report as markdown: one table per stage."""
    lines = [f"# {data['title']}", "", f"`loraplus study {data['study']}`", ""]
    for stage in data["stages"]:
        lines += [f"## {stage['stage']} ({stage['kind']})", ""]
        if stage.get("best"):
            ((key, value),) = stage["best"].items()
            lines += [f"Best {key}: {value}", ""]
        if stage["kind"] == "tune":
            lines += ["| run | method | chosen lr_A | mean ± std | line (lr_A: first seed) |"]
            lines += ["|---|---|---|---|---|"]
            for run in stage["runs"]:
                for m in run["methods"]:
                    line = ", ".join(f"{lr:g}: {_num(v)}" for lr, v in m["line"].items())
                    lr = "-" if m["lr_a"] is None else f"{m['lr_a']:g}"
                    value = mean_std(m["values"])
                    lines.append(f"| {run['run']} | {m['method']} | {lr} | {value} | {line} |")
        else:
            lines += [
                "| run | lr_A | second axis | mean ± std (seeds) | best |",
                "|---|---|---|---|---|",
            ]
            for run in stage["runs"]:
                for c in run["cells"]:
                    mark = "**best**" if c == run["best"] else ""
                    value = c[run["axis"]]
                    lines.append(
                        f"| {run['run']} | {c['lr_a']:g} | {run['axis']} {value} | "
                        f"{mean_std(c['values'])} ({len(c['values'])}) | {mark} |"
                    )
        lines.append("")
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_report(result: StudyResult) -> None:
    """The generic report, then the study's own (`report = "loraplus.study.<module>:<fn>"`)."""
    write_generic(result)
    if result.cfg.report:
        fn = function(result.cfg.report, "report", result.cfg.path)
        fn(result, result.cfg.out, **result.cfg.report_options)
