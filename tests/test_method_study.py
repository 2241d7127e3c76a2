"""benchmarks/method_study.py --smoke: every method tuned, seeded and tabled at n = 16, 20 steps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from scripts import load_benchmark

import loraplus
from loraplus.experiments.lora_mlp import lora_config, mse, teacher_student

pytestmark = pytest.mark.usefixtures("one_thread")


def load_study() -> Any:
    return load_benchmark("method_study")


def test_pissa_learns_the_same_teacher() -> None:
    """PiSSA rewrites the base weights; the teacher and the starting function must not change."""
    x = torch.randn(128, 24, generator=torch.Generator().manual_seed(0))
    plain, teacher = teacher_student(24, seed=3)
    pissa, teacher_p = teacher_student(24, seed=3, config=lora_config(init_lora_weights="pissa"))
    assert torch.equal(teacher(x), teacher_p(x))
    name = "base_model.model.0.base_layer.weight"
    residual, original = pissa.get_parameter(name), plain.get_parameter(name)
    assert not torch.allclose(residual, original)  # PiSSA took the top directions out of the base
    torch.testing.assert_close(pissa(x), plain(x), atol=1e-5, rtol=1e-5)
    assert mse(pissa, teacher_p, x) == pytest.approx(mse(plain, teacher, x), rel=1e-4)
    assert mse(plain, teacher, x) > 0.1


def test_width_aware_here_is_loraplus_at_n_ref() -> None:
    """Both layers have fan-in n: width-aware is loraplus at n = n_ref, lr_A · n_ref/n off it."""
    model, _ = teacher_student(32)
    lrs = {g["role"]: g["lr"] for g in loraplus.create_optimizer(model, lr=1e-3).param_groups}
    aware = loraplus.create_optimizer(model, lr=1e-3, width_aware=True).param_groups
    assert {g["role"]: g["lr"] for g in aware} == lrs
    off = {
        g["role"]: g["lr"]
        for g in loraplus.create_optimizer(model, lr=1e-3, width_aware=True, n_ref=8).param_groups
    }
    assert off["lora_A"] == pytest.approx(1e-3 * 8 / 32) and off["lora_B"] == pytest.approx(16e-3)


def test_smoke_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = load_study()
    out = tmp_path / "out"
    assert study.main(["--smoke", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == list(study.METHODS)
    assert data["widths"] == [16] and data["steps"] == 20
    for method, row in rows.items():
        assert row["n"] == 16
        assert len(row["finals"]) == 3 and all(math.isfinite(v) for v in row["finals"]), method
        assert math.isfinite(row["mean"]) and row["std"] >= 0.0
        assert row["mean"] < 2.0, method  # the untrained student starts near 2
        tried = sum(len(s["lrs"]) for s in row["sweep"])
        assert tried >= 4 * len(row["sweep"]) and row["runs"] == tried + 2  # 2 lrs + 2 refined
        assert row["lr"] in next(s["lrs"] for s in row["sweep"] if s["recipe"] == row["recipe"])
        assert row["finals"][0] == min(  # seed 0 chose the lr: its loss is the sweep's best
            v for s in row["sweep"] for v in s["losses"] if v is not None
        )
    best = rows["best-ratio"]
    assert [s["recipe"] for s in best["sweep"]] == [f"ratio={q:g}" for q in study.RATIOS]
    assert best["sweep"][0] == rows["lora"]["sweep"][0]  # its ratio-1 column is lora's sweep
    assert best["sweep"][2] == rows["loraplus"]["sweep"][0]
    assert best["runs"] >= 2 * len(study.RATIOS) + 2  # the whole 2-D grid
    assert 1.0 <= rows["auto"]["auto_ratio"] <= 1024.0
    # n_ref = the smallest width = 16 here: width-aware is loraplus, run for run
    assert rows["width-aware"]["finals"] == rows["loraplus"]["finals"]
    # every run is in the file once, with the keys the study resumes from
    runs = data["runs"]
    assert all(r["final"] is None or math.isfinite(r["final"]) for r in runs.values())
    assert {r["recipe"] for r in runs.values()} >= {"lorafa", "riemannian", "auto", "ratio=1,pissa"}
    table = (out / "results.md").read_text()
    assert "| loraplus+rslora |" in table and "methods.png" in table
    assert (out / "methods.png").stat().st_size > 10_000
    # a restart reruns nothing and keeps the hand-written reading
    (out / "results.md").write_text(table + "\n## Reading\n\nby hand\n")
    capsys.readouterr()
    assert study.main(["--smoke", "--out", str(out)]) == 0
    assert "(0 runs in" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["rows"] == data["rows"]
    assert (out / "results.md").read_text().endswith("\n## Reading\n\nby hand\n")
