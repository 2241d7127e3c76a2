"""loraplus.study.decoder: the ratio scan's lines, and the report on hand-made run records."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from loraplus.study import decoder
from loraplus.train.record import TrainResult


def test_scan_line_brackets_the_interpolated_lr() -> None:
    # LoRA at 4e-3, LoRA+ at 2.5e-4: log2 lr_A falls by 1 per doubling of the ratio
    assert decoder.scan_line(4e-3, 2.5e-4, 2.0) == pytest.approx([2e-3, 4e-3])
    assert decoder.scan_line(4e-3, 2.5e-4, 8.0) == pytest.approx([5e-4, 1e-3])
    assert decoder.scan_line(4e-3, 2.5e-4, 32.0) == pytest.approx([1.25e-4, 2.5e-4])
    # between ladder points the nearer one comes first
    assert decoder.scan_line(1e-3, 1e-3 / 2**0.8, 16.0) == pytest.approx([5e-4, 1e-3])
    assert decoder.scan_line(1e-3, 1e-3 / 2**0.2, 16.0) == pytest.approx([1e-3, 5e-4])


def record(
    lr: float, ratio: Any, seed: int, losses: list[float], init: str = "init1", **extra: Any
) -> TrainResult:
    """A run evaluated at steps 0, 10, 20 (the first loss is the untouched model's)."""
    history = [{"step": 10 * i, "eval_loss": v} for i, v in enumerate(losses)]
    history[-1].update(extra.get("last", {}))
    final = {"eval_loss": losses[-1], "steps": 10 * (len(losses) - 1)}
    final.update(extra.get("final", {}))
    config = {"lr": lr, "ratio": ratio, "seed": seed, "init": init}
    return TrainResult(history, final, Path("."), False, config=config)


def runs() -> list[TrainResult]:
    em = {"final": {"eval_exact_match": 0.25}}
    return [
        # the tuned lines (seed 0) and the seeds at the chosen cells
        record(1e-3, 1.0, 0, [2.0, 1.2, 0.9]),
        record(4e-3, 1.0, 0, [2.0, 0.8, 0.6], **em),
        record(4e-3, 1.0, 1, [2.0, 0.9, 0.7]),
        record(2.5e-4, 16.0, 0, [2.0, 0.7, 0.65]),
        record(2.5e-4, 16.0, 1, [2.0, 0.8, 0.5]),
        # Init[2] at LoRA's chosen cell; a ratio-2 line; auto at LoRA+'s lr_A
        record(4e-3, 1.0, 0, [2.0, 1.0, 0.95], init="init2"),
        record(2e-3, 2.0, 0, [2.0, 0.7, 0.62]),
        record(4e-3, 2.0, 0, [2.0, 0.7, 0.61]),
        record(2.5e-4, "auto", 0, [2.0, 0.9, 0.7], last={"auto_ratio/attn": 11.3}),
    ]


def test_report_tables_from_run_records(tmp_path: Path) -> None:
    chosen = {"lora": 4e-3, "loraplus": 2.5e-4}
    report = decoder.write(tmp_path, runs(), chosen, "Decoder")
    main = report["compare"]
    assert main["lora"]["seeds"] == [0, 1] and main["lora"]["best_eval_loss"] == [0.6, 0.7]
    assert main["lora"]["perplexity"] == pytest.approx(math.exp(0.65))
    assert main["lora"]["exact_match"] == [0.25, None]
    # LoRA+ reaches LoRA's final loss (0.6) on seed 1 only (0.5 at step 20)
    assert main["reach_steps"] == [None, 20]
    assert [(c["lr_a"], c["best"]) for c in report["grids"]["lora"]] == [(1e-3, 0.9), (4e-3, 0.6)]
    assert report["init"]["lora"]["init1"] == 0.6 and report["init"]["lora"]["init2"] == 0.95
    assert "loraplus" not in report["init"]  # no Init[2] run there
    scan = {r["ratio"]: r for r in report["ratios"]}
    assert set(scan) == {1.0, 2.0, 16.0}
    assert scan[2.0]["lr_a"] == 4e-3 and scan[2.0]["note"] == "best on the line's edge"
    assert report["auto"]["seeds"]["0"]["ratios"] == {"attn": 11.3}
    assert report["auto"]["seeds"]["0"]["loraplus"] == 0.65
    text = (tmp_path / "results.md").read_text()
    assert "| LoRA (ratio 1) | 0.004 (0.004) | 0,1 | 0.650 ± 0.071 |" in text
    assert "| 0 | 2.000 ± 0.000 | 2.000 ± 0.000 |" in text  # both start from the base model
    assert "| lora | 0.004 | 0.004 | 0.600 **chosen** | 0.600 | 0.250 |" in text
    assert "| 2 | 0.002, 0.004 | 0.004 | 0.610 | n/a | best on the line's edge |" in text
    assert "| 0 | 0.700 | 0.650 | attn 11.3 |" in text
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == 9
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
