"""benchmarks/decoder_study.py: its helpers, and --smoke end to end on a tiny saved Llama."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from scripts import load_benchmark
from test_train import NEGATIVE, POSITIVE, WORDS, save_tiny_llama
from tiny import tiny_llama

from loraplus.train.history import steps_to_reach


def load_study() -> Any:
    return load_benchmark("decoder_study")


def write_verdicts(folder: Path) -> Path:
    """train.jsonl / test.jsonl of prompt -> yes/no rows in the tiny tokenizer's words."""
    folder.mkdir(parents=True)
    for name, rows in (("train", 48), ("test", 12)):
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for i in range(rows):
                positive = i % 2 == 0
                word = (POSITIVE if positive else NEGATIVE)[i % 5]
                filler = " ".join(WORDS[10 : 10 + i % 7])
                row = {"prompt": f"review : {filler} {word} . verdict :", "response": "yes"}
                row["response"] = "yes" if positive else "no"
                handle.write(json.dumps(row) + "\n")
    return folder


def test_steps_to_reach_and_losses() -> None:
    study = load_study()
    metrics = {
        "history": [
            {"step": 0, "eval_loss": 1.0},
            {"step": 5, "eval_loss": 2.0},
            {"step": 10, "eval_loss": 1.5},
        ]
    }
    assert study.best_loss(metrics) == 1.5  # step 0 (before training) never counts
    assert study.final_loss(metrics) == 1.5
    assert study.curve(metrics) == [(0, 1.0), (5, 2.0), (10, 1.5)]
    assert steps_to_reach(metrics["history"], "eval_loss", 1.6) == 10
    assert steps_to_reach(metrics["history"], "eval_loss", 1.0) is None


def test_scan_line_brackets_the_interpolated_lr() -> None:
    study = load_study()
    # LoRA at 4e-3, LoRA+ at 2.5e-4: log2 lr_A falls by 1 per doubling of the ratio
    assert study.scan_line(4e-3, 2.5e-4, 2.0) == pytest.approx([2e-3, 4e-3])
    assert study.scan_line(4e-3, 2.5e-4, 8.0) == pytest.approx([5e-4, 1e-3])
    assert study.scan_line(4e-3, 2.5e-4, 32.0) == pytest.approx([1.25e-4, 2.5e-4])
    # between ladder points the nearer one comes first
    assert study.scan_line(1e-3, 1e-3 / 2**0.8, 16.0) == pytest.approx([5e-4, 1e-3])
    assert study.scan_line(1e-3, 1e-3 / 2**0.2, 16.0) == pytest.approx([1e-3, 5e-4])


def test_exact_match_is_greedy_answer_through_eos() -> None:
    study = load_study()
    model = tiny_llama(vocab_size=16).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 5, 6, 7, 8]])
    with torch.no_grad():
        greedy = model(input_ids=ids[:, :3]).logits[0, -1].argmax().item()
        second = model(input_ids=torch.tensor([[1, 5, 6, greedy]])).logits[0, -1].argmax().item()
    right = [-100, -100, -100, greedy, second]  # the prompt is 1 5 6; the answer 2 tokens
    wrong = [-100, -100, -100, greedy, (second + 1) % 16]
    batch = {
        "input_ids": torch.tensor(
            [[1, 5, 6, greedy, second], [1, 5, 6, greedy, (second + 1) % 16]]
        ),
        "attention_mask": torch.ones(2, 5, dtype=torch.long),
        "labels": torch.tensor([right, wrong]),
    }
    assert study.exact_match(model, [batch]) == 0.5
    assert not model.training


@pytest.mark.slow
def test_smoke_study(tmp_path: Path) -> None:
    study = load_study()
    model = save_tiny_llama(tmp_path / "llama")
    data = write_verdicts(tmp_path / "data")
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--smoke", "--model", str(model), "--data", str(data), "--out", str(out)]
    assert study.main([*argv, "--runs", str(runs)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["missing"] == []
    assert report["data"]["train_rows"] == 48 and report["data"]["eval_rows"] == 12
    assert report["settings"]["target_modules"] == study.TARGETS
    main = report["compare"]
    assert main["lora"]["ratio"] == 1.0 and main["loraplus"]["ratio"] == 16.0
    assert main["lora"]["lr_a"] == 1e-3 and main["loraplus"]["lr_a"] == 2.5e-4
    for method in ("lora", "loraplus"):
        row = main[method]
        assert row["seeds"] == [0, 1]
        assert all(math.isfinite(x) and x > 0 for x in row["best_eval_loss"])
        assert all(0.0 <= x <= 1.0 for x in row["exact_match"])
        assert row["perplexity"] == pytest.approx(math.exp(sum(row["best_eval_loss"]) / 2))
        # the step-0 eval is the untouched base model (Init[1]: B = 0), the same for every run
        starts = {c[0][1] for c in row["curves"].values()}
        assert len(starts) == 1 and [s for s, _ in row["curves"]["0"]] == [0, 2, 4]
    assert len(main["reach_steps"]) == 2
    assert set(report["init"]) == {"lora", "loraplus"}
    assert report["init"]["lora"]["init2"] != report["init"]["lora"]["init1"]
    assert [r["ratio"] for r in report["ratios"]] == [1.0, 2.0, 16.0]
    assert report["ratios"][1]["tried"] == sorted(study.scan_line(1e-3, 2.5e-4, 2.0))
    assert report["wall_s"] > 0 and report["runs"] == 8  # 2 grid, 2 seed, 2 Init[2], 2 ratio
    assert report["run_s"] > 0
    # exact match lands in each run's metrics.json too
    trial = runs / "grid-lora" / "trials" / "trial_0000" / "metrics.json"
    metrics = json.loads(trial.read_text())
    assert 0.0 <= metrics["final"]["eval_exact_match"] <= 1.0
    assert "eval_exact_match" in metrics["history"][-1]
    text = (out / "results.md").read_text()
    assert "| LoRA (ratio 1) | 0.001 (0.001) | 0,1 |" in text
    assert "| LoRA+ (ratio 16) | 0.00025 (0.004) | 0,1 |" in text
    start = f"{main['lora']['curves']['0'][0][1]:.3f} ± 0.000"
    assert f"| 0 | {start} | {start} |" in text  # both start from the same base model
    assert "| 4 | " in text and "8 runs" in text
    assert "## Ratio scan" in text and "## Init[1] (B = 0) vs Init[2]" in text
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "grid-lora_sweep.json").exists()
    # a rerun resumes: nothing is trained again and the tables are the same
    assert study.main([*argv, "--runs", str(runs)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["compare"] == report["compare"]
    assert len(again["invocations"]) == 2
    # the auto stage: ratio="auto" at LoRA+'s chosen lr_A, seeds 0 and 1, beside LoRA+'s runs
    assert study.main([*argv, "--runs", str(runs), "--stages", "seeds", "auto"]) == 0
    auto = json.loads((out / "results.json").read_text())["auto"]
    assert auto["lr_a"] == 2.5e-4 and set(auto["seeds"]) == {"0", "1"}
    for seed, row in auto["seeds"].items():
        assert row["loraplus"] == main["loraplus"]["best_eval_loss"][int(seed)]
        assert row["best_eval_loss"] == min(v for s, v in row["curve"] if s > 0)
        assert set(row["ratios"]) and all(1.0 <= r <= 2.0**10 for r in row["ratios"].values())
    text = (out / "results.md").read_text()
    assert '## ratio="auto" at LoRA+\'s lr_A (0.00025), no re-tuning' in text
