"""loraplus.sweep.tune: the search (pure), every run exactly once (kills, resumes, workers), the
budget, a finished tune trains nothing, tune.json / tune.png, and `loraplus tune` on a tiny model.

Runs use test_sweep's analytic `fake_train`: LoRA (ratio 1) peaks at lr_A = 2^-12, LoRA+ (ratio
16) at 2^-10, and every call is logged, so "exactly once" is checked against what really ran.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from postgres import postgres_url  # noqa: F401  (fixture)
from test_sweep import calls, fake_train, score, wait_for_calls
from test_train import tiny_files  # noqa: F401  (a fixture)

from loraplus import cli
from loraplus.lr_search import Search, mean_std
from loraplus.plots import draw_tune
from loraplus.sweep import TuneConfig, load_tune, plan, tune
from loraplus.train import read_record

optuna.logging.set_verbosity(optuna.logging.ERROR)

LINE = [6.10352e-05, 0.000244141, 0.000976562]  # 2^-14, 2^-12, 2^-10 to 6 digits


def config(tmp_path: Path, name: str = "tune", **kw: Any) -> TuneConfig:
    overrides = {"log": str(tmp_path / "calls.log"), **kw.pop("overrides", {})}
    settings: dict[str, Any] = {"centre": 2.0**-12, "seeds": [0, 1, 2], "heartbeat_s": None}
    return TuneConfig(out_dir=str(tmp_path / name), overrides=overrides, **{**settings, **kw})


def cells(log: Path) -> list[tuple[float, float, int]]:
    """(lr_a, ratio, seed) of every training call so far."""
    return [c[:3] for c in calls(log)]


# The full tune of `config`, in the order it runs: both lines, LoRA+'s extension, both seeds.
EXPECTED = [
    *[(lr, 1.0, 0) for lr in LINE],
    *[(lr, 16.0, 0) for lr in LINE],
    (0.00390625, 16.0, 0),  # LoRA+'s best was the line's top: one x4 step past it
    (LINE[1], 1.0, 1),
    (LINE[1], 1.0, 2),
    (LINE[2], 16.0, 1),
    (LINE[2], 16.0, 2),
]


def walk(search: Search, value: Any) -> list[list[tuple[float, int]]]:
    """Run `plan` to its end with value(lr, seed) as each run's result; the rounds it asked."""
    results: dict[tuple[float, int], float | None] = {}
    rounds = []
    while (todo := plan(search, results).todo) and len(rounds) < 20:
        rounds.append(todo)
        results.update({p: value(*p) for p in todo})
    return rounds


def test_plan_line_extensions_refinement_then_seeds() -> None:
    peak = 1.6e-2  # 16 x the centre: two x4 steps up
    search = Search(1e-3, 4.0, 2, True, (0, 1, 2), None, 1.0)
    rounds = walk(search, lambda lr, seed: -(math.log(lr / peak, 4) ** 2) + 1e-3 * seed)
    assert rounds == [
        [(2.5e-4, 0), (1e-3, 0), (4e-3, 0)],
        [(1.6e-2, 0)],  # best at the top edge: extended
        [(6.4e-2, 0)],  # still at the edge: extended again (2 = extend)
        [(8e-3, 0), (3.2e-2, 0)],  # refined: best / 2, best * 2
        [(1.6e-2, 1), (1.6e-2, 2)],  # the other seeds at the chosen lr_A
    ]
    results = {p: -(math.log(p[0] / peak, 4) ** 2) for r in rounds for p in r}
    done = plan(search, results)
    assert done.chosen == 1.6e-2 and not done.todo and len(done.runs) == 9


def test_plan_takes_a_given_first_line_and_keeps_lrs_as_computed() -> None:
    """A first line of any length (here half a decade apart, as the method study's) and, with
    digits=None, every lr_A exactly as computed: the line's own floats, step and sqrt(step)."""
    line = tuple(1e-4 * 10 ** (k / 2) for k in range(4))
    step = line[1] / line[0]
    search = Search(0.0, step, 1, True, (0, 1), None, -1.0, line=line, digits=None)
    rounds = walk(search, lambda lr, seed: abs(math.log10(lr / 5e-5)))  # best below the line
    low = line[0] / step
    assert rounds == [
        [(lr, 0) for lr in line],
        [(low, 0)],  # one extension (extend=1) past the lower edge
        [(low / math.sqrt(step), 0), (low * math.sqrt(step), 0)],
        [(low * math.sqrt(step), 1)],
    ]
    assert rounds[0][1][0] == 0.000316227766016838 != float(f"{rounds[0][1][0]:.6g}")
    rounded = walk(Search(0.0, step, 0, False, (0,), None, -1.0, line=line), lambda *_: 1.0)
    assert rounded == [[(float(f"{lr:.6g}"), 0) for lr in line]]  # default: 6 digits, as before


def test_plan_goes_down_when_all_diverge_minimizes_loss_and_stops_at_the_budget() -> None:
    diverged = walk(Search(1e-2, 4.0, 1, False, (0,), None, 1.0), lambda lr, seed: None)
    assert diverged == [[(2.5e-3, 0), (1e-2, 0), (4e-2, 0)], [(6.25e-4, 0)]]
    loss = Search(1e-3, 2.0, 3, False, (0, 1), None, -1.0)  # lower is better
    rounds = walk(loss, lambda lr, seed: abs(math.log2(lr / 2.5e-4)))
    assert rounds == [
        [(5e-4, 0), (1e-3, 0), (2e-3, 0)],
        [(2.5e-4, 0)],
        [(1.25e-4, 0)],
        [(2.5e-4, 1)],
    ]
    budget = Search(1e-3, 2.0, 3, False, (0, 1), 4, -1.0)
    results = {p: abs(math.log2(p[0] / 2.5e-4)) for r in rounds[:2] for p in r}
    stopped = plan(budget, results)  # 4 runs used: no room for the next edge or the seeds
    assert stopped.todo == [] and stopped.budget_reached and stopped.chosen == 2.5e-4
    assert len(stopped.runs) == 4


def test_a_tune_killed_mid_run_resumes_runs_each_cell_once_and_then_trains_nothing(
    tmp_path: Path,
) -> None:
    log = tmp_path / "calls.log"
    hang = config(tmp_path, overrides={"hang_at": 4})  # trial 4: LoRA+'s first line cell
    context = multiprocessing.get_context("spawn")
    proc = context.Process(target=tune, args=(hang,), kwargs={"train_fn": fake_train})
    proc.start()
    wait_for_calls(log, 5)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up: the trial stays RUNNING, its folder stays
    proc.join()

    summary = tune(config(tmp_path), train_fn=fake_train, poll_s=0.05)
    ran = cells(log)
    assert ran[:5] == EXPECTED[:5]
    assert sorted(ran) == sorted([*EXPECTED, EXPECTED[4]])  # each once, the killed cell twice
    assert summary.counts == {"complete": 11, "crashed": 1}
    assert not (tmp_path / "tune" / "trials" / "trial_0004").exists()  # the killed run's folder

    lora, plus = summary.method("lora"), summary.method("loraplus")
    assert (lora["lr_a"], plus["lr_a"]) == (LINE[1], LINE[2])
    assert lora["values"] == pytest.approx([score(LINE[1], 1.0, s) for s in (0, 1, 2)])
    assert lora["mean"] == pytest.approx(score(LINE[1], 1.0, 1))  # seeds add 0, 1, 2 thousandths
    assert lora["std"] == pytest.approx(0.001)
    assert (lora["runs"], plus["runs"]) == (5, 6)
    assert [p["lr_a"] for p in plus["line"]] == [*LINE, 0.00390625]

    again = tune(config(tmp_path), train_fn=fake_train, poll_s=0.05)  # a second identical call
    assert cells(log) == ran  # trains nothing
    assert again.methods == summary.methods
    assert load_tune(tmp_path / "tune" / "tune.json").to_dict() == again.to_dict()


def test_an_interrupted_tune_resumes_and_a_larger_budget_goes_on_from_the_same_runs(
    tmp_path: Path,
) -> None:
    log = tmp_path / "calls.log"
    with pytest.raises(KeyboardInterrupt):
        tune(config(tmp_path, overrides={"interrupt_at": 2}), train_fn=fake_train)
    budget = tune(config(tmp_path, max_runs=4), train_fn=fake_train)
    assert sorted(cells(log)) == sorted([*EXPECTED[:8], EXPECTED[2]])  # 2 twice: interrupted
    assert [(r["runs"], r["budget_reached"]) for r in budget.methods] == [(4, True), (4, True)]
    assert budget.method("lora")["n"] == 2  # line + one more seed: the budget ends it
    assert "5 (budget)" not in budget.table() and "4 (budget)" in budget.table()
    lora = budget.method("lora")
    assert f"{lora['mean']:.4f} ± {lora['std']:.4f}" in budget.table()  # over its 2 seeds
    assert mean_std([0.5, None, math.nan]) == "0.500" and mean_std([]) == "n/a"

    full = tune(config(tmp_path), train_fn=fake_train)  # no budget: on from the 8 runs done
    assert sorted(cells(log)) == sorted([*EXPECTED, EXPECTED[2]])
    assert [r["runs"] for r in full.methods] == [5, 6] and full.method("loraplus")["n"] == 3


def test_tune_json_figure_and_errors(tmp_path: Path) -> None:
    methods = ["loraplus", "ratio=4"]
    cfg = config(tmp_path, method=methods, seeds=[0], extend=0, centres=["ratio=4=1e-3"])
    assert cfg.centre_of("ratio=4") == 1e-3 and cfg.centre_of("loraplus") == 2.0**-12
    summary = tune(cfg, train_fn=fake_train)
    data = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert data["search"]["centre"] == {"loraplus": 2.0**-12, "ratio=4": 1e-3}
    row = data["methods"][1]
    assert [t["lr_a"] for t in row["trials"]] == [2.5e-4, 1e-3, 4e-3]
    assert row["trials"][0]["record"] is None  # fake runs write no metrics.json
    assert (tmp_path / "tune" / "tune.png").read_bytes()[:4] == b"\x89PNG"
    fig = draw_tune(summary.figure())
    lines = fig.axes[0].get_lines()
    line = lines[0].get_xydata().tolist()  # loraplus's line
    assert line == [[p["lr_a"], p["value"]] for p in data["methods"][0]["line"]]
    star = next(ln for ln in lines if ln.get_marker() == "*").get_xydata().tolist()
    assert star == [[data["methods"][0]["lr_a"], data["methods"][0]["mean"]]]

    with pytest.raises(ValueError, match="made for another tune \\(differs in method\\)"):
        tune(config(tmp_path, method=["lora"]), train_fn=fake_train)
    with pytest.raises(ValueError, match="drop --lr and give the line's middle as --centre"):
        TuneConfig(overrides={"lr": 1e-3})
    with pytest.raises(ValueError, match="step must be > 1"):
        TuneConfig(step=1)
    with pytest.raises(ValueError, match="centres names rslora, which is not tuned here"):
        TuneConfig(centres=["rslora=1e-3"])


@pytest.mark.usefixtures("one_thread")
def test_readme_tune_command_on_a_tiny_model(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """README "Find your learning rate": the command as shown, on a tiny model and budget."""
    out = tmp_path / "tune"
    readme = ["tune", "--method", "lora", "loraplus", "--centre", "1e-3", "--seeds", "0", "1"]
    # README's --model minilm --data rotten-tomatoes --max-steps 150, at a tiny size:
    small = [
        *("--model", str(tiny_files["bert"]), "--data", str(tiny_files["cls"])),
        *("--max-steps", "2", "--eval-steps", "2", "--batch-size", "8", "--max-length", "32"),
        *("--rank", "4", "--max-runs", "3", "--out-dir", str(out)),
    ]
    assert cli.main([*readme, *small]) == 0
    text = capsys.readouterr().out
    data = json.loads((out / "tune.json").read_text())
    for row in data["methods"]:
        assert row["runs"] == 3 and row["budget_reached"] and row["lr_a"] is not None
        assert f"{row['method']}  " in text and f"{row['lr_a']:.3g}" in text
        first = row["trials"][0]
        record = read_record(first["dir"])  # every run's record, also inside tune.json
        assert record.to_dict() == first["record"] and record.config["lr"] == first["lr_a"]
        assert record.config["seed"] == first["seed"]
    trials = len(list((out / "trials").iterdir()))
    assert cli.main([*readme, *small]) == 0  # again: trains nothing
    assert len(list((out / "trials").iterdir())) == trials


def test_two_workers_share_one_tune_on_postgres(
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """--workers 2 on a PostgreSQL study (what two machines running `loraplus tune` on one
    --storage are: each worker plans the same search from the study): every cell runs once."""
    cfg = config(tmp_path, storage=postgres_url, workers=2, overrides={"barrier": 2})
    summary = tune(cfg, train_fn=fake_train, poll_s=0.05)
    log = calls(tmp_path / "calls.log")
    assert sorted(c[:3] for c in log) == sorted(EXPECTED)  # every cell exactly once
    assert len({c[3] for c in log}) == 2  # both workers trained
    assert [r["lr_a"] for r in summary.methods] == [LINE[1], LINE[2]]
    again = tune(dataclasses.replace(cfg, workers=1), train_fn=fake_train)  # nothing to train
    assert len(calls(tmp_path / "calls.log")) == len(EXPECTED)
    assert again.methods == summary.methods


def test_bad_tune_flags_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tune", "--lr", "1e-3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: tune sets lr per cell: drop --lr and give the line's middle as --centre "
        "(or --centres METHOD=LR)."
    )
    assert cli.main(["tune", "--step", "0.5"]) == 2
    assert "step must be > 1" in capsys.readouterr().err
