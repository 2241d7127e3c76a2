"""loraplus.experiments.methods (`loraplus experiment methods`): the committed study's cells and
report from its own runs without training, and the README command end to end at n = 16."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import loraplus
from loraplus import cli
from loraplus.experiments import methods_report
from loraplus.experiments.lora_mlp import lora_config, mse, teacher_student
from loraplus.experiments.methods import METHODS, MethodsConfig, RunStore, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).parents[1]
COMMITTED = ROOT / "docs/study/methods"
CONFIG = ROOT / "benchmarks/studies/methods.toml"
SMOKE = ["--widths", "16", "--steps", "20", "--lr-low", "1e-3", "--lr-points", "2"]
SMOKE += ["--per-decade", "1"]  # the line 1e-3, 1e-2: a x10 step


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


def test_the_config_asks_for_exactly_the_committed_runs() -> None:
    """docs/study/methods/results.json was made by the former benchmarks/method_study.py, with
    its own lr search. Given its runs and nothing else (a missing run raises), the config's
    search (tune's `plan`) asks for the same cells (method, width, lr, seed), to the last bit of
    each lr, and rebuilds every row, the table and the paired comparison exactly."""
    from loraplus._config import build

    committed = json.loads((COMMITTED / "results.json").read_text())
    cfg = build(MethodsConfig, CONFIG)
    assert list(cfg.grid) == committed["grid"] and cfg.widths == committed["widths"]
    store = RunStore.open(COMMITTED / "results.json", cfg.steps, frozen=True)
    rows = [evaluate(store, cfg, method, n) for n in cfg.widths for method in cfg.methods]
    assert rows == committed["rows"]
    reported = {  # the committed rows' cells: each line at seed 0, every seed at the pick
        (row["n"], column["recipe"], lr, 0)
        for row in rows
        for column in row["sweep"]
        for lr in column["lrs"]
    } | {(row["n"], row["recipe"], row["lr"], seed) for row in rows for seed in cfg.seeds}
    asked = {(r["n"], r["recipe"], r["lr"], r["seed"]) for r in map(store.runs.get, store.used)}
    assert asked == reported
    runs = committed["runs"]
    assert len(store.used) == 344 and set(store.used) <= set(runs)
    # the file's other 28 runs are seeds 1, 2 at picks the later refinement moved away from
    assert all(runs[k]["seed"] > 0 for k in set(runs) - store.used)
    text = methods_report.table(rows, cfg.widths)
    assert text in (COMMITTED / "results.md").read_text()
    assert methods_report.paired(rows, cfg.widths) == (
        committed["paired"],
        committed["comparisons"],
    )
    with pytest.raises(KeyError, match="n=16"):
        evaluate(store, cfg, "lora", 16)  # frozen: never trains


def test_readme_command_at_n16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README's command with the config file, at n = 16, 20 steps, a 2-lr line: every method
    tuned, seeded and tabled; a second call trains nothing and keeps the hand-written reading."""
    out = tmp_path / "out"
    argv = ["experiment", "methods", "--config", str(CONFIG), *SMOKE, "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == list(METHODS)
    assert data["widths"] == [16] and data["steps"] == 20 and data["grid"] == [1e-3, 1e-2]
    assert data["command"].startswith("loraplus experiment methods --config ")
    assert "--widths 16 --steps 20" in data["command"]
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
    assert [s["recipe"] for s in best["sweep"]] == [f"ratio={q:g}" for q in (1, 4, 16, 64, 256)]
    assert best["sweep"][0] == rows["lora"]["sweep"][0]  # its ratio-1 column is lora's sweep
    assert best["sweep"][2] == rows["loraplus"]["sweep"][0]
    assert best["runs"] >= 2 * 5 + 2  # the whole 2-D grid
    assert 1.0 <= rows["auto"]["auto_ratio"] <= 1024.0
    # n_ref = the smallest width = 16 here: width-aware is loraplus, run for run
    assert rows["width-aware"]["finals"] == rows["loraplus"]["finals"]
    runs = data["runs"]
    assert {r["recipe"] for r in runs.values()} >= {"lorafa", "riemannian", "auto", "ratio=1,pissa"}
    assert len(runs) == data["runs_this_call"]  # every run once
    table = (out / "results.md").read_text()
    assert "| loraplus+rslora |" in table and "methods.png" in table
    assert (out / "methods.png").stat().st_size > 10_000
    (out / "results.md").write_text(table + "\n## Reading\n\nby hand\n")
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "(0 runs in" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["rows"] == data["rows"]
    assert (out / "results.md").read_text().endswith("\n## Reading\n\nby hand\n")


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    assert cli.main(["experiment", "methods", "--methods", "dora", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--methods ['dora']: choose from lora, loraplus" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("widths = [16]\nlr = 1e-3\n")
    assert cli.main(["experiment", "methods", "--config", str(bad), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"Unknown setting(s) in {bad}: lr." in err
    assert not (tmp_path / "out").exists()
