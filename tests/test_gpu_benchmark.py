"""benchmarks/gpu.py --tiny: every variant of the GPU lane at toy size on CPU, so it never rots."""

from __future__ import annotations

from typing import Any

import pytest
from scripts import load_benchmark


@pytest.mark.usefixtures("one_thread")
def test_gpu_lane_runs_every_variant_at_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    gpu = load_benchmark("gpu")
    results = {r["model"]: r for r in gpu.main(["--tiny"])}
    out = capsys.readouterr().out
    assert out.startswith("CPU tiny smoke run (toy shapes; not a GPU figure)")
    assert (results["1b"]["four_bit"], results["8b"]["four_bit"]) == (False, True)
    rows: dict[str, dict[str, Any]] = {r["variant"]: r for r in results["1b"]["rows"]}
    assert list(rows) == [
        "LoRA 1 group, fused",
        "LoRA+, fused",
        "PEFT LoRA+, fused",
        "LoRA 1 group, foreach",
        "LoRA+, foreach",
        "PEFT LoRA+, foreach",
        "LoRA+ ratio auto",
        "LoRA+ probe/10",
        "LoRA 1 group, adamw_bnb_8bit",
        "LoRA+, adamw_bnb_8bit",
        "LoRA 1 group, paged_adamw_8bit",
        "LoRA+, paged_adamw_8bit",
    ]
    assert [r["variant"] for r in results["8b"]["rows"]] == [
        "LoRA 1 group, fused",
        "LoRA+, fused",
        "LoRA 1 group, paged_adamw_8bit",
        "LoRA+, paged_adamw_8bit",
    ]
    for result in results.values():
        for row in result["rows"]:
            assert row["ms"] > 0 and row["peak"] is None  # no GPU memory on CPU
            # each variant trained what it says: plain LoRA at one lr, LoRA+ and PEFT at 16x
            spread = 1.0 if row["variant"].startswith("LoRA 1 group") else 16.0
            assert row["lr_spread"] == pytest.approx(spread), row["variant"]
            assert row["variant"] in out
    assert rows["LoRA+, adamw_bnb_8bit"]["optimizer"] == "AdamW8bit"
    assert rows["LoRA+, paged_adamw_8bit"]["optimizer"] == "PagedAdamW8bit"
    # ratio="auto" keeps the user's AdamW and attaches its controller through optimizer hooks
    assert rows["LoRA+ ratio auto"]["optimizer"] == "AdamW" and rows["LoRA+ ratio auto"]["auto"]
    assert not any(r["auto"] for name, r in rows.items() if name != "LoRA+ ratio auto")
    # the probe measured every LoRA layer (2 layers x 7 projections) once
    assert rows["LoRA+ probe/10"]["probed"] == 14
    assert all(r["probed"] == 0 for name, r in rows.items() if name != "LoRA+ probe/10")
