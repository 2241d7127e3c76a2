"""`loraplus sweep --axis FIELD=V1,V2`: any TrainConfig field as the grid's second axis, typed as
its flag, each cell trained with that value at the config's ratio, the heatmap labelled by it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import _tiny_train_args
from test_train import tiny_files  # noqa: F401  (a fixture)

from loraplus import cli
from loraplus.plots import draw_sweep_heatmap
from loraplus.sweep import SweepConfig, load_summary
from loraplus.train import read_record


def test_axis_values_are_typed_as_the_field_and_bad_axes_name_the_fix() -> None:
    cfg = SweepConfig(field_axis="rank=4,16,4", overrides={"ratio": 8})
    assert (cfg.axis, cfg.y, cfg.grid_size) == ("rank", [4, 16], 10)
    assert cfg.record()["axis"] == "rank" and cfg.search_space["rank"] == [4, 16]
    assert SweepConfig(field_axis="dropout=0.1 0.2").y == [0.1, 0.2]
    for text, message in (
        ("lr=1e-3,1e-4", "axis lr: the sweep sets it per cell"),
        ("ratio=1,4", "axis ratio: use ratios"),
        ("init", "axis takes FIELD=V1,V2,..."),
        ("rnak=4,8", "Unknown setting\\(s\\) in axis: rnak"),
        ("rank=four", "Bad value for rank in axis"),
    ):
        with pytest.raises(ValueError, match=message):
            SweepConfig(field_axis=text)
    with pytest.raises(ValueError, match="drop ratios / lr_b / method"):
        SweepConfig(field_axis="rank=4,8", ratios=[1, 4])
    with pytest.raises(ValueError, match="may not set init"):
        SweepConfig(field_axis="init=init1,init2", overrides={"init": "init1"})


@pytest.mark.usefixtures("one_thread")
def test_sweep_over_init_at_one_ratio_on_a_tiny_model(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "init"
    args = _tiny_train_args(tiny_files, tmp_path / "unused")[1:-2]
    argv = ["sweep", "--lr-a", "1e-3", "--axis", "init=init1,init2", "--ratio", "16"]  # README's
    assert cli.main([*argv, *args, "--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads((out / "sweep.json").read_text())
    assert (data["axis"], data["y"], data["counts"]) == (
        "init",
        ["init1", "init2"],
        {"complete": 2},
    )
    for trial in data["trials"]:
        record = read_record(out / "trials" / f"trial_{trial['number']:04d}")
        assert record.config["init"] == trial["init"] and record.config["ratio"] == 16.0
        assert trial["ratio"] is None  # the config's, not the grid's
    summary = load_summary(out / "sweep.json")
    best = summary.best
    assert best is not None and f"best: lr_A=0.001 init={best['init']} " in text
    ax = draw_sweep_heatmap(summary.heatmap()).axes[0]
    assert ax.get_ylabel() == "init"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["init1", "init2"]
