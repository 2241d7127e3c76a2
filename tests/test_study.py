"""loraplus.study: study files checked before anything trains (one-line errors), the planning of
stages from earlier results (references, `at`, `each`), and `loraplus study` end to end on a tiny
model (benchmarks/studies/init.toml --smoke): outputs, a second call that trains nothing,
--dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train import tiny_files  # noqa: F401  (a fixture)

from loraplus import cli
from loraplus.study import load_study
from loraplus.study.run import Done, plan_runs, stage_cells

ROOT = Path(__file__).resolve().parents[1]

STUDY = """
title = "t"
runs = "runs/t"
out = "out/t"
each = { data = ["a.csv", "b.csv"] }
[train]
max_steps = 3
[[stage]]
name = "head"
kind = "sweep"
at = [{ method = "lora", lr_a = 1e-3 }, { ratio = 16, lr_a = 1e-4 }]
each = { lr_roles = [["head=0.01"], ["head=0.1"]] }
[[stage]]
name = "line"
kind = "tune"
method = ["lora", "loraplus"]
centre = 1e-3
extend = 1
seeds = [0, 1]
[stage.train]
lr_roles = "{head.best}"
[[stage]]
name = "long"
kind = "sweep"
at = "line"
near = 0.05
seeds = [0, 1, 2]
[stage.train]
lr_roles = "{head.best}"
max_steps = 9
"""


SWEEP = "[[stage]]\nname='x'\nkind='sweep'"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def rows(run_name: str, cells: list[tuple[float, object, int, float | None]], axis: str) -> list:
    """Trial rows as sweep.json / tune.json hold them."""
    return [
        {"lr_a": lr, axis: y, "seed": seed, "value": v, "status": "complete" if v else "diverged"}
        for lr, y, seed, v in cells
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{SWEEP}\nlr_a=[1e-3]\nbogus=1", "unknown key 'bogus' in stage 'x'"),
        (f"[train]\nmax_stepz=3\n{SWEEP}", "unknown key 'max_stepz' in [train]"),
        ("[[stage]]\nname='x'\nkind='grid'", "kind must be 'sweep' or 'tune'"),
        (f"{SWEEP}\nseeds='0'", "stage 'x': seeds must be a non-empty list"),
        (f"[train]\nmax_steps='many'\n{SWEEP}", "stage 'x': Bad value for max_steps"),
        ("[[stage]]\nname='x'\nkind='sweep'\nat='y'", "reads stage 'y', which is not an earlier"),
        ("[[stage]]\nname='x'\nkind='tune'\nat='y'", "`at` is for sweep stages"),
        ("[[stage]]\nname='x'\nkind='sweep'\nat=[{lr_a=1}]", "each `at` cell is"),
        ("report='os:system'\n[[stage]]\nname='x'\nkind='sweep'", "report must name a function"),
    ],
)
def test_bad_study_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = write(tmp_path, f"title='t'\nruns='r'\nout='o'\n{text}\n")
    with pytest.raises(ValueError, match="s.toml") as err:
        load_study(path)
    assert message in str(err.value)
    assert cli.main(["study", str(path), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_stages_plan_from_earlier_results(tmp_path: Path) -> None:
    """`each` values x `at` cells become runs; "{head.best}" is the each-value whose runs scored
    best; `at` a tune runs its chosen lr per method, plus line cells within `near`."""
    cfg = load_study(write(tmp_path, STUDY))
    assert [s.name for s in cfg.stages] == [
        f"{d}-{s}" for s in ("head", "line", "long") for d in ("a.csv", "b.csv")
    ]
    head, line, long = cfg.stages[::2]
    runs = plan_runs(cfg, head, {})
    assert [r.name for r in runs] == [
        "a.csv-head-head=0.01-lora",
        "a.csv-head-head=0.01-ratio16",
        "a.csv-head-head=0.1-lora",
        "a.csv-head-head=0.1-ratio16",
    ]
    cells = stage_cells(cfg, head, {})
    assert [(c.lr_a, c.axis, c.value, c.seed) for c in cells[:2]] == [
        (1e-3, "method", "lora", 0),
        (1e-4, "ratio", 16.0, 0),
    ]
    config = cells[1].train_config()
    assert config.lr_roles == ["head=0.01"] and config.ratio == 16 and config.data == "a.csv"
    # head=0.1 wins on the mean of its two runs' best (0.6, 0.9) over head=0.01's (0.8, 0.5)
    scores = {runs[0].name: 0.8, runs[1].name: 0.5, runs[2].name: 0.6, runs[3].name: 0.9}
    axis = {r.name: r.config.axis for r in runs}
    done = [
        Done(r, rows(r.name, [(r.config.lr_a[0], r.config.y[0], 0, scores[r.name])], axis[r.name]))
        for r in runs
    ]
    earlier = {head.name: done}
    (tune_run,) = plan_runs(cfg, line, earlier)
    assert tune_run.config.overrides["lr_roles"] == ["head=0.1"]
    first = stage_cells(cfg, line, earlier)  # no results yet: the two first lines
    assert [(c.value, c.lr_a) for c in first] == [
        (m, lr) for m in ("lora", "loraplus") for lr in (0.00025, 0.001, 0.004)
    ]
    value = {0.00025: 0.7, 0.001: 0.72, 0.004: 0.5, 6.25e-05: 0.1}  # lora: middle best
    plus = {0.00025: 0.6, 0.001: 0.7, 0.004: 0.8, 0.016: 0.76}  # loraplus: top edge, extended
    tune_rows = rows("", [(lr, "lora", 0, v) for lr, v in value.items() if v > 0.1], "method")
    tune_rows += rows("", [(lr, "loraplus", 0, v) for lr, v in plus.items()], "method")
    tune_rows += rows("", [(0.001, "lora", 1, 0.7), (0.004, "loraplus", 1, 0.79)], "method")
    earlier[line.name] = [Done(tune_run, tune_rows)]
    planned = stage_cells(cfg, line, earlier)
    assert sorted((c.value, c.lr_a, c.seed) for c in planned) == sorted(
        [("lora", lr, 0) for lr in (0.00025, 0.001, 0.004)]
        + [("loraplus", lr, 0) for lr in (0.00025, 0.001, 0.004, 0.016)]
        + [("lora", 0.001, 1), ("loraplus", 0.004, 1)]
    )
    longs = plan_runs(cfg, long, earlier)  # near 0.05: lora's 0.00025 (0.7 vs 0.72), plus 0.016
    assert [r.name for r in longs] == [
        "a.csv-long-lora",
        "a.csv-long-lora-lr0.00025",
        "a.csv-long-loraplus",
        "a.csv-long-loraplus-lr0.016",
    ]
    assert longs[3].config.lr_a == [0.016] and longs[3].config.seeds == [0, 1, 2]
    cell = stage_cells(cfg, long, earlier)[0].train_config()
    assert cell.max_steps == 9 and cell.lr_roles == ["head=0.1"] and cell.lr == 0.001


def test_init_study_smoke_end_to_end(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`loraplus study benchmarks/studies/init.toml --smoke` on a tiny model: every planned cell
    trains once, the outputs land in --out, a second call trains nothing."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = [
        "study",
        str(ROOT / "benchmarks/studies/init.toml"),
        "--smoke",
        *("--runs", str(runs), "--out", str(out)),
        *("--set", f"model='{tiny_files['bert']}'", "--set", f"data='{tiny_files['cls']}'"),
        *("--set", "max_length=32", "--set", "rank=4"),
    ]
    assert cli.main([*argv, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "init: 4 cell(s)" in text and "init init2, seed 1" in text
    assert cli.main(argv) == 0
    sweep = json.loads((out / "init_sweep.json").read_text())
    assert sweep["axis"] == "init" and sweep["y"] == ["init1", "init2"]
    assert sorted((t["init"], t["seed"]) for t in sweep["trials"]) == [
        (i, s) for i in ("init1", "init2") for s in (0, 1)
    ]
    assert (out / "init_sweep_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    (run,) = results["stages"][0]["runs"]
    assert [c["init"] for c in run["cells"]] == ["init1", "init2"]
    assert "| init | 0.0004 | init init1 |" in (out / "results.md").read_text()
    trials = sorted((runs / "init" / "trials").iterdir())
    config = json.loads((trials[0] / "metrics.json").read_text())["config"]
    assert config["ratio"] == 16 and config["lr_multipliers"] == ["head=1"]
    assert cli.main(argv) == 0  # again: trains nothing
    assert sorted((runs / "init" / "trials").iterdir()) == trials
