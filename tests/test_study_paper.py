"""benchmarks/studies/paper.toml plans exactly the committed runs (docs/study/*_sweep.json), stage
by stage, given their results; its report rebuilds the committed table and the demo's learning
rates (src/loraplus/cli/demo_lrs.json) from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_train import tiny_files  # noqa: F401  (a fixture)

from loraplus import cli
from loraplus.cli.demo import DEMO_SETTINGS
from loraplus.study import StudyResult, load_study
from loraplus.study.paper import demo_record, heatmap, seed0_cells, table
from loraplus.study.run import Done, Run, plan_runs, stage_cells
from loraplus.sweep.grid import HOLDING
from loraplus.train.methods import method_settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs/study"
SETTINGS = {k: v for k, v in DEMO_SETTINGS.items() if k not in ("seed", "data", "report_to")}


def load(name: str, ratios: tuple[float, ...] | None = None) -> list[dict[str, Any]]:
    """The held trial rows of a committed sweep (rows of `ratios` only), each with its method."""
    data = json.loads((DOCS / f"{name}_sweep.json").read_text())
    return [
        {**r, "method": "lora" if r["ratio"] == 1.0 else "loraplus"}
        for r in data["trials"]
        if r["status"] in HOLDING and (ratios is None or r["ratio"] in ratios)
    ]


def committed(run: Run) -> tuple[list[str], list[dict[str, Any]]]:
    """The committed sweeps that ran this run's cells, and their rows."""
    if run.stage == "mpnet":
        return ["mpnet-20newsgroups"], load("mpnet-20newsgroups")
    if run.stage == "mpnet-seeds":
        name = "mpnet-20newsgroups-seeds-" + ("lora" if run.label == "ratio1" else "loraplus")
        return [name], load(name)
    task, _, stage = run.stage.rpartition("-")
    grid = f"minilm-{task}"
    if stage == "grid":
        return [grid], load(grid, (4.0, 64.0))
    names = [p.name.removesuffix("_sweep.json") for p in DOCS.glob(f"{grid}-*_sweep.json")]
    return [grid, *names], load(grid, (1.0, 16.0)) + [r for n in names for r in load(n)]


def plan_committed() -> tuple[Any, dict[str, list[Done]], set[str]]:
    """Walk the stages with the committed results; check each stage's cells on the way."""
    cfg = load_study(ROOT / "benchmarks/studies/paper.toml")
    earlier: dict[str, list[Done]] = {}
    used: set[str] = set()
    for stage in cfg.stages:
        runs = plan_runs(cfg, stage, earlier)
        found = [(r, *committed(r)) for r in runs]
        earlier[stage.name] = [Done(r, rows) for r, _, rows in found]
        cells = stage_cells(cfg, stage, earlier)
        for run, names, rows in found:
            used.update(names)
            mine = sorted(
                (
                    c.lr_a,
                    c.value if c.axis == "ratio" else method_settings(c.value)["ratio"],
                    c.seed,
                )
                for c in cells
                if c.run == run.name
            )
            assert mine == sorted((r["lr_a"], r["ratio"], r["seed"]) for r in rows), run.name
            config = next(c for c in cells if c.run == run.name).train_config()
            expected = {**SETTINGS, "data": stage.group or "20newsgroups"}
            if stage.base.startswith("mpnet"):
                expected.update(model="mpnet", max_steps=100)
            assert {k: getattr(config, k) for k in expected} == expected, run.name
    return cfg, earlier, used


def test_config_plans_the_committed_runs() -> None:
    _, _, used = plan_committed()
    on_disk = {p.name.removesuffix("_sweep.json") for p in DOCS.glob("*_sweep.json")}
    assert used == on_disk  # every committed sweep, and nothing more


def test_report_rebuilds_the_committed_table_and_demo_lrs() -> None:
    cfg, earlier, _ = plan_committed()
    result = StudyResult(cfg, earlier)
    rows = json.loads((DOCS / "report.json").read_text())
    assert table(rows) == (DOCS / "report.md").read_text()
    grid, line = result.runs("grid", "rotten-tomatoes"), result.runs("line", "rotten-tomatoes")
    cells = seed0_cells(grid, line)
    demo = json.loads((ROOT / "src/loraplus/cli/demo_lrs.json").read_text())
    record = demo_record(result, "rotten-tomatoes", cells)
    for method in ("lora", "loraplus"):
        assert record[method] == demo[method]
    key = ("lr_a", "ratio", "mean", "state")
    assert sorted(tuple(c[k] for k in key) for c in record["provenance"]["results"]) == sorted(
        tuple(c[k] for k in key) for c in demo["provenance"]["results"]
    )
    assert record["provenance"]["settings"] == {**SETTINGS, "data": "rotten-tomatoes"}
    data = heatmap("rotten-tomatoes", cells)  # the best cell of any ratio: lr_A 1.6e-3, ratio 4
    assert data["best"] == [data["lr_a"].index(0.0016), data["y"].index(4.0)]
    assert data["lr_a"] == [0.0001, 0.0004, 0.0016, 0.0064, 0.0256]


def test_smoke_one_task_end_to_end(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """README's command at --smoke size on a tiny model, one task's stages: the table row, the
    heatmap of grid + lines; the shipped demo lrs are left alone under --smoke."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    shipped = (ROOT / "src/loraplus/cli/demo_lrs.json").read_text()
    stages = ["rotten-tomatoes-grid", "rotten-tomatoes-line"]
    argv = [
        *("study", str(ROOT / "benchmarks/studies/paper.toml"), "--smoke", "--stage", *stages),
        *("--runs", str(runs), "--out", str(out)),
        *("--set", f"model='{tiny_files['bert']}'", "--set", f"data='{tiny_files['cls']}'"),
        *("--set", "max_length=32", "--set", "rank=4"),
    ]
    assert cli.main(argv) == 0
    (row,) = json.loads((out / "report.json").read_text())
    assert row["task"] == "rotten-tomatoes" and row["seeds"] == [0] and row["steps"] == 2
    tuned = json.loads((out / "rotten-tomatoes-line_tune.json").read_text())
    for method, key in (("lora", "lr"), ("loraplus", "lr_a")):
        line = next(m for m in tuned["methods"] if m["method"] == method)
        assert row[method][key] == line["lr_a"] and row[method]["best_acc"] == line["values"]
    assert "| MiniLM-L6 (384) | rotten-tomatoes |" in (out / "report.md").read_text()
    assert (out / "heatmap-rotten-tomatoes.png").read_bytes()[:4] == b"\x89PNG"
    assert (ROOT / "src/loraplus/cli/demo_lrs.json").read_text() == shipped
