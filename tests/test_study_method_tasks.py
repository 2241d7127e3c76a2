"""loraplus.study.method_tasks: rows, best-ratio and the table on hand-made runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train import save_tiny_bert, write_cls_data

from loraplus import cli
from loraplus.study.method_tasks import best_ratio, method_row, ordered, paired, write


def line(values: dict[float, float], seeds: dict[float, list[float]] | None = None) -> list:
    """(lr, seed, value) points: a first-seed line, then seeds 1, 2... at some lrs."""
    points = [(lr, 0, v) for lr, v in values.items()]
    for lr, more in (seeds or {}).items():
        points += [(lr, s, v) for s, v in enumerate(more, start=1)]
    return points


def test_rows_best_ratio_paired_and_table(tmp_path: Path) -> None:
    up = 1.0  # eval accuracy: higher is better
    rows = {
        "lora": method_row("lora", line({1.6e-3: 0.6, 6.4e-3: 0.70}, {6.4e-3: [0.68, 0.69]}), up),
        "ratio=4": method_row(
            "ratio=4", line({4e-4: 0.5, 1.6e-3: 0.72}, {1.6e-3: [0.70, 0.71]}), up
        ),
        "loraplus": method_row("loraplus", line({4e-4: 0.69}, {4e-4: [0.69, 0.70]}), up),
        "auto": method_row(
            "auto", line({1e-4: None, 4e-4: 0.66, 1.6e-3: 0.6}, {4e-4: [0.67, 0.65]}), up
        ),
        "pissa": method_row("pissa", line({1e-3: 0.6}), up),  # one seed: nothing to pair
    }
    assert rows["auto"]["line"] == {"0.0004": 0.66, "0.0016": 0.6}  # the None run: no value
    assert rows["auto"]["lr_a"] == 4e-4 and rows["auto"]["runs"] == 5
    assert rows["lora"]["values"] == [0.70, 0.68, 0.69] and rows["lora"]["runs"] == 4
    fixed = [rows[m] for m in ("lora", "ratio=4", "loraplus")]
    best = best_ratio(fixed, up)
    assert best is not None and best["method"] == "best-ratio (ratio=4)"
    # the three first-seed lines (2 + 2 + 1 runs) and ratio 4's two other seeds
    assert best["values"] == [0.72, 0.70, 0.71] and best["runs"] == 5 + 2
    assert paired(rows["auto"], best) == "-0.050 (-0.060, -0.030, -0.060)"
    assert paired(rows["pissa"], best) == paired(rows["ratio=4"], best) == ""
    table = ordered(rows, ["lora", "ratio=4", "loraplus"], best)
    names = [r["method"] for r in table]
    assert names == ["lora", "ratio=4", "loraplus", "best-ratio (ratio=4)", "auto", "pissa"]
    write(tmp_path, table, best, "eval_accuracy", "MiniLM")
    text = (tmp_path / "methods.md").read_text()
    assert "| best-ratio (ratio=4) | 0.0016 | 0.710 ± 0.010 | 3 | 7 |  |" in text
    assert "| auto | 0.0004 | 0.660 ± 0.010 | 3 | 5 | -0.050 (-0.060, -0.030, -0.060) |" in text
    assert "| pissa | 0.001 | 0.600 | 1 | 1 |  | 0.001: 0.600 |" in text
    assert "best eval accuracy" in text
    assert json.loads((tmp_path / "methods.json").read_text())["rows"][3]["runs"] == 7
    assert (tmp_path / "methods.png").read_bytes()[:4] == b"\x89PNG"


def test_best_ratio_runs_the_seeds_its_line_lacks() -> None:
    """On a loss the lowest wins; a ratio scan's 2-point line has one seed, so best-ratio's
    other seeds come from a later stage (`more`), at its lr_A only."""
    down = -1.0
    fixed = [
        method_row("lora", line({1e-3: 0.70, 4e-3: 0.52}, {4e-3: [0.53, 0.54]}), down),
        method_row("ratio=2", line({2e-3: 0.51, 4e-3: 0.49}), down),
    ]
    more = [(4e-3, 1, 0.53), (4e-3, 2, 0.51), (2e-3, 1, 9.9)]
    best = best_ratio(fixed, down, more)
    assert best is not None and best["method"] == "best-ratio (ratio=2)"
    assert best["values"] == [0.49, 0.53, 0.51] and best["runs"] == 2 + 2 + 2


def test_the_config_plans_the_committed_runs() -> None:
    """Every committed method run (docs/study/method-tasks) is a cell the config plans, with the
    settings it trained with; best-ratio (ratio 4) had its seeds from its tune: no more runs."""
    from test_study_decoder import check_cells, committed, planned

    from loraplus.study.config import load_study

    root = Path(__file__).resolve().parents[1]
    folder = root / "docs/study/method-tasks"
    names = sorted(p.name.removesuffix("_sweep.json") for p in folder.glob("*_sweep.json"))
    rows = {"methods": committed(folder, names), "best-ratio": []}
    cells = planned(load_study(root / "benchmarks/studies/method-tasks.toml"), rows)
    assert cells["best-ratio"] == []
    check_cells(cells["methods"], rows["methods"], folder, skip=("output_dir",))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_smoke_study(tmp_path: Path) -> None:
    """The study at a few steps on a tiny saved BERT: one run per method (--smoke's budget),
    then best-ratio's seeds 1, 2 at its cell, the table and its figure."""
    root = Path(__file__).resolve().parents[1]
    model, data = save_tiny_bert(tmp_path / "bert", 2), write_cls_data(tmp_path / "reviews.csv")
    argv = ["study", str(root / "benchmarks/studies/method-tasks.toml"), "--smoke"]
    argv += ["--set", f"model={model}", "--set", f"data={data}", "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--runs", str(tmp_path / "runs")]) == 0
    result = json.loads((tmp_path / "out" / "methods.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["lora"]["lr_a"] == 1.6e-3 and rows["ratio=4"]["lr_a"] == 4e-4  # centre / 4
    best = result["rows"][2]
    fixed = max(result["rows"][:2], key=lambda r: r["values"][0])  # accuracy: highest, seed 0
    assert best["method"] == f"best-ratio ({fixed['method']})" and len(best["values"]) == 3
    assert best["runs"] == 1 + 1 + 2 and result["metric"] == "eval_accuracy"
    assert (tmp_path / "out" / "methods.png").read_bytes()[:4] == b"\x89PNG"
