"""`loraplus sweep --method`: a grid of lr_A x method, each cell trained with the method's
settings, summarized per method (its best lr), written and read back, drawn with named rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from loraplus.plots import draw_sweep_heatmap
from loraplus.sweep import Reporter, SweepConfig, TrialSpec, load_summary, run_sweep, write_outputs

optuna.logging.set_verbosity(optuna.logging.ERROR)

METHODS = ["lora", "loraplus", "auto", "lorafa", "pissa", "ratio=4"]
BEST_LR = {"lora": 2**-8, "loraplus": 2**-11, "auto": 2**-10, "lorafa": 2**-8, "pissa": 2**-9}
LR_A = [2.0**-11, 2.0**-10, 2.0**-9, 2.0**-8]


@dataclass
class Result:
    history: list[dict[str, Any]]
    final: dict[str, Any]
    diverged: bool


def method_score(method: str, lr_a: float, seed: int) -> float:
    """Peak 0.8 (+0.01 per method index) at the method's best lr; ratio=4 peaks at 2^-9."""
    best = BEST_LR.get(method, 2.0**-9)
    return 0.8 + 0.01 * METHODS.index(method) - 0.02 * (math.log2(lr_a / best)) ** 2 + 1e-3 * seed


def run_methods(tmp_path: Path, seeds: list[int]) -> tuple[SweepConfig, Any, list[Any]]:
    """The method sweep with an in-process train_fn that records each cell's TrainConfig."""
    seen: list[Any] = []

    def train_fn(spec: TrialSpec, reporter: Reporter) -> Result:
        cfg = spec.train_config()
        seen.append((spec.method, spec.lr_a, spec.seed, cfg))
        value = method_score(str(spec.method), spec.lr_a, spec.seed)
        reporter.report(value, 10)
        return Result([{"step": 10, "eval_accuracy": value}], {"eval_accuracy": value}, False)

    cfg = SweepConfig(
        lr_a=LR_A,
        method=["LoRA", "loraplus", "auto", "lorafa", "PiSSA", "ratio=4.0", "lora"],
        seeds=seeds,
        out_dir=str(tmp_path / "sweep"),
        heartbeat_s=None,
        overrides={"lr_roles": ["other=0.003"]},
    )
    return cfg, run_sweep(cfg, train_fn=train_fn), seen


def test_every_cell_trains_its_method_and_each_method_gets_its_best_lr(tmp_path: Path) -> None:
    cfg, summary, seen = run_methods(tmp_path, seeds=[0, 1])
    assert cfg.axis == "method" and cfg.y == METHODS  # canonical names, duplicates dropped
    assert len(seen) == cfg.grid_size == 4 * 6 * 2
    for method, lr_a, seed, train_cfg in seen:  # the TrainConfig each cell really got
        assert (train_cfg.lr, train_cfg.seed, train_cfg.lr_roles) == (lr_a, seed, ["other=0.003"])
        expected = {
            "lora": (1.0, "loraplus", "init1"),
            "loraplus": (16.0, "loraplus", "init1"),
            "auto": ("auto", "loraplus", "init1"),
            "lorafa": (1.0, "lorafa", "init1"),
            "pissa": (1.0, "loraplus", "pissa"),
            "ratio=4": (4.0, "loraplus", "init1"),
        }[method]
        assert (train_cfg.ratio, train_cfg.lora_optimizer, train_cfg.init) == expected
    table = {row["method"]: row for row in summary.methods()}
    assert list(table) == METHODS
    for method in METHODS:
        best = table[method]["best"]
        assert best["lr_a"] == BEST_LR.get(method, 2.0**-9) and best["n"] == 2
        assert best["mean"] == pytest.approx(method_score(method, best["lr_a"], 0) + 5e-4)
        assert table[method]["runs"] == 8
    assert summary.best["method"] == "ratio=4" and summary.best_lora["method"] == "lora"
    assert summary.gain == pytest.approx(0.05)
    auto = summary.cell(2.0**-10, "auto")
    assert auto["ratio"] == "auto" and auto["lr_b"] is None
    assert summary.cell(2.0**-10, "ratio=4")["lr_b"] == pytest.approx(4 * 2.0**-10)

    paths = write_outputs(summary, tmp_path / "out")
    back = load_summary(paths["json"])
    assert back.methods() == summary.methods() and back.y == METHODS
    fig = draw_sweep_heatmap(back.heatmap())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == METHODS
    assert ax.get_ylabel() == "method"
    assert ax.get_title().startswith(f"{summary.study_name}: eval_accuracy")  # no subject known
    back.subject = "minilm on 20newsgroups, 150 steps"
    assert back.heatmap()["title"].startswith("minilm on 20newsgroups, 150 steps\neval_accuracy;")


def test_method_grids_are_checked() -> None:
    with pytest.raises(ValueError, match="method is the grid's second axis: drop ratios"):
        SweepConfig(method=["lora"], ratios=[1, 16])
    with pytest.raises(ValueError, match="Unknown method 'qlora'"):
        SweepConfig(method=["lora", "qlora"])
    with pytest.raises(
        ValueError, match="overrides set rslora, which method loraplus\\+rslora sets per cell"
    ):
        SweepConfig(method=["lora", "loraplus+rslora"], overrides={"rslora": True})
    assert SweepConfig(method="lora,loraplus").y == ["lora", "loraplus"]
    assert SweepConfig(method=["lora"], overrides={"rslora": True}).method == ["lora"]
