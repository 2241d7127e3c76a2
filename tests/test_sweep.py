"""loraplus.sweep: every cell runs exactly once (processes, resumes, crashes), configs are checked.

The tests inject a deterministic analytic `train_fn` (a known argmax over lr_A x ratio) that logs
every call, so "exactly once" is checked against what really ran; test_sweep_results.py and
test_sweep_postgres.py use it too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial
from test_train import tiny_files  # noqa: F401  (a fixture)

from loraplus import cli
from loraplus.sweep import (
    Reporter,
    SweepConfig,
    TrialSpec,
    make_storage,
    open_study,
    run_sweep,
    run_worker,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)

LR_A = [2.0**-13, 2.0**-12, 2.0**-11, 2.0**-10, 2.0**-9]


def score(lr_a: float, ratio: float, seed: int) -> float:
    """Known optimum: (2^-10, 16) overall at 0.9; on the ratio-1 row (2^-12, 1) at 0.82."""
    u, v = math.log2(lr_a), math.log2(ratio)
    return 0.9 - 0.01 * (u + 10 - (v - 4) / 2) ** 2 - 0.005 * (v - 4) ** 2 + 0.001 * seed


@dataclass
class FakeResult:
    history: list[dict[str, Any]]
    final: dict[str, Any]
    diverged: bool


def calls(log: Path) -> list[tuple[float, float, int, int]]:
    """(lr_a, ratio, seed, pid) of every training call so far."""
    if not log.exists():
        return []
    rows = [line.split() for line in log.read_text().splitlines() if line]
    return [(float(a), float(r), int(s), int(p)) for a, r, s, p in rows]


def fake_train(spec: TrialSpec, reporter: Reporter) -> FakeResult:
    """Evaluations at steps 0/10/20/30 reaching the score at step 20 (best) then 98% of it.

    `spec.overrides` steers it: log (file every call appends to), barrier (wait until this many
    processes have called), interrupt_at / hang_at / fail_at (trial number), diverge_above (lr_B),
    flat (every run scores 0.8), bad_from (trial number from which runs score 0.1), sleep
    (seconds). Like a real run it makes its output folder first.
    """
    opts = spec.overrides
    spec.output_dir.mkdir(parents=True)
    log = Path(opts["log"])
    with log.open("a") as handle:
        handle.write(f"{spec.lr_a!r} {spec.ratio!r} {spec.seed} {os.getpid()}\n")
    if opts.get("hang_at") == spec.number:
        time.sleep(600)
    if opts.get("fail_at") == spec.number:
        raise RuntimeError("out of memory (fake)")
    if opts.get("barrier"):
        deadline = time.monotonic() + 60
        while len({c[3] for c in calls(log)}) < opts["barrier"] and time.monotonic() < deadline:
            time.sleep(0.02)
    if opts.get("interrupt_at") == spec.number:
        raise KeyboardInterrupt
    time.sleep(opts.get("sleep", 0.0))
    if spec.lr_b > opts.get("diverge_above", math.inf):
        history = [{"step": 0, "eval_accuracy": 0.5}, {"step": 10, "eval_accuracy": math.nan}]
        return FakeResult(history, {"eval_accuracy": math.nan, "diverged_at_step": 7}, True)
    target = 0.8 if opts.get("flat") else score(spec.lr_a, spec.ratio, spec.seed)
    if spec.number >= opts.get("bad_from", math.inf):
        target = 0.1
    history = []
    for step, frac in ((0, 0.5), (10, 0.9), (20, 1.0), (30, 0.98)):
        history.append({"step": step, "eval_accuracy": target * frac, "train_loss": 1.0})
        if reporter.report(target * frac, step):
            break
    return FakeResult(history, {"eval_accuracy": history[-1]["eval_accuracy"]}, False)


DIVERGED = (2.0**-9, 16.0)  # lr_B = 2^-5 > 2^-6: diverges with diverge_above 2^-6


def config(tmp_path: Path, **kw: Any) -> SweepConfig:
    overrides = {"log": str(tmp_path / "calls.log"), **kw.pop("overrides", {})}
    settings: dict[str, Any] = {"lr_a": LR_A, "ratios": [1, 4, 16], "heartbeat_s": None}
    return SweepConfig(out_dir=str(tmp_path / "sweep"), overrides=overrides, **{**settings, **kw})


def worker(cfg: SweepConfig) -> None:
    """A worker process on the sweep's study (what `loraplus sweep` on another machine is)."""
    run_worker(cfg, train_fn=fake_train)


def wait_for_calls(log: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(calls(log)) < n:
        assert time.monotonic() < deadline, f"{len(calls(log))} of {n} calls"
        time.sleep(0.02)


def kill_worker_at(cfg: SweepConfig, number: int, calls_before: int) -> FrozenTrial:
    """Start a worker process that hangs in trial `number`, SIGKILL it there; the trial."""
    hang = dataclasses.replace(cfg, overrides={**cfg.overrides, "hang_at": number})
    proc = multiprocessing.get_context("spawn").Process(target=worker, args=(hang,))
    proc.start()
    wait_for_calls(Path(cfg.overrides["log"]), calls_before)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    return study.trials[number]


def test_resume_after_interrupt_and_crash_reruns_only_unfinished_cells(tmp_path: Path) -> None:
    cfg = config(tmp_path, lr_a=LR_A[:2], ratios=[1, 16], overrides={"interrupt_at": 2})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, train_fn=fake_train)
    cfg = config(tmp_path, lr_a=LR_A[:2], ratios=[1, 16])
    study, grid = open_study(cfg)
    statuses = [t.user_attrs.get("status") for t in study.trials]
    assert statuses == ["complete", "complete", "interrupted", None]  # trial 3 still queued
    assert study.trials[3].state == optuna.trial.TrialState.WAITING
    trials = Path(cfg.out_dir) / "trials"
    assert sorted(p.name for p in trials.iterdir())[-1] == "trial_0002"

    # A worker killed mid-run (SIGKILL) leaves its trial RUNNING; its lock file is free now.
    log = tmp_path / "calls.log"
    killed = kill_worker_at(config(tmp_path, lr_a=LR_A[:2], ratios=[1, 16]), 3, 4)
    assert killed.state == optuna.trial.TrialState.RUNNING
    assert (trials / "trial_0002").exists() is False  # the killed worker's resume cleaned it
    assert (trials / "trial_0003").is_dir()

    summary = run_sweep(cfg, train_fn=fake_train)
    cells = [c[:3] for c in calls(log)]
    assert cells[:2] == list(grid.cells[:2])  # the first two: never re-run
    assert cells == [*grid.cells[:4], *grid.cells[2:]]  # 4: cell 2 again, 5: cell 3 again
    assert summary.counts == {"complete": 4, "interrupted": 1, "crashed": 1}
    assert [t["status"] for t in summary.trials] == [
        "complete",
        "complete",
        "interrupted",
        "crashed",
        "complete",
        "complete",
    ]
    assert all(c["state"] == "complete" for c in summary.cells)
    assert sorted(p.name for p in trials.iterdir()) == [
        "trial_0000",
        "trial_0001",
        "trial_0004",
        "trial_0005",
    ]  # the interrupted and the killed trial's folders are gone


def test_a_worker_killed_on_another_machine_is_found_by_its_heartbeat(tmp_path: Path) -> None:
    cfg = config(tmp_path, lr_a=LR_A[:2], ratios=[1], heartbeat_s=1)
    killed = kill_worker_at(cfg, 0, 1)
    Path(killed.user_attrs["lock"]).unlink()  # as if it ran elsewhere: only the heartbeat tells
    time.sleep(4.0)  # stale after 2 heartbeats (2 s); 2 s of slack for a busy machine
    summary = run_sweep(cfg, train_fn=fake_train)  # its lock is gone: only the heartbeat can tell
    cells = [c[:3] for c in calls(tmp_path / "calls.log")]
    assert cells == [(LR_A[0], 1, 0), (LR_A[1], 1, 0), (LR_A[0], 1, 0)]
    assert [t["status"] for t in summary.trials] == ["crashed", "complete", "complete"]
    assert summary.cells[0]["trials"] == [0, 2]


def test_two_spawned_workers_on_one_sqlite_study_run_every_cell_once(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        lr_a=LR_A[:3],
        ratios=[1, 16],
        heartbeat_s=60,
        overrides={"barrier": 2, "sleep": 0.02},
    )
    summary = run_sweep(cfg, workers=2, train_fn=fake_train)
    log = calls(tmp_path / "calls.log")
    cells = [c[:3] for c in log]
    assert len(cells) == 6 and len(set(cells)) == 6  # every cell exactly once
    assert len({c[3] for c in log}) == 2  # both workers trained, concurrently (barrier)
    study, sampler = open_study(cfg)
    ran = [t for t in study.trials if t.user_attrs.get("status") != "idle"]
    assert len(ran) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in ran)
    assert len({sampler.cell_of(t) for t in ran}) == 6
    assert summary.counts.get("complete") == 6 and set(summary.counts) <= {"complete", "idle"}
    assert summary.best is not None and summary.best["lr_a"] == LR_A[2]


def start_together(cfg: SweepConfig, barrier: Any) -> None:
    """`loraplus sweep` started at the same moment as others, on a storage none has created."""
    barrier.wait()
    run_sweep(cfg, train_fn=fake_train)


def test_sweeps_started_at_once_on_a_new_sqlite_file_all_succeed(tmp_path: Path) -> None:
    """They race to create the tables (Optuna's schema set-up, then the grid): make_storage
    retries the loser, and open_study lets one process publish the grid."""
    cfg = config(tmp_path, lr_a=LR_A[:2], ratios=[1, 16], heartbeat_s=60)
    assert not Path(cfg.storage_url.split(":///")[1]).exists()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    procs = [context.Process(target=start_together, args=(cfg, barrier)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    cells = [c[:3] for c in calls(tmp_path / "calls.log")]
    assert len(cells) == 4 and len(set(cells)) == 4  # every cell exactly once


def test_a_cell_queued_twice_runs_once_and_errors_stay_taken_unless_retried(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, lr_a=LR_A[:2], ratios=[1], overrides={"fail_at": 1})
    study, grid = open_study(cfg)
    grid.enqueue(study, grid.cells[0])  # two workers re-queued the same cell at once
    summary = run_sweep(cfg, train_fn=fake_train)
    assert [c[:3] for c in calls(tmp_path / "calls.log")] == list(grid.cells)
    assert [t["status"] for t in summary.trials] == ["complete", "error", "duplicate"]
    assert summary.trials[1]["error"] == "RuntimeError: out of memory (fake)"
    assert summary.trials[2]["error"] == "the cell is trial 0's"
    assert [c["state"] for c in summary.cells] == ["complete", "error"]

    cfg = config(tmp_path, lr_a=LR_A[:2], ratios=[1])
    assert run_worker(cfg, train_fn=fake_train) == 0  # an errored cell is not retried...
    cfg = config(tmp_path, lr_a=LR_A[:2], ratios=[1], retry_failed=True)
    summary = run_sweep(cfg, train_fn=fake_train)  # ...unless asked to, once
    assert [c[:3] for c in calls(tmp_path / "calls.log")] == [*grid.cells, grid.cells[1]]
    assert [t["status"] for t in summary.trials] == ["complete", "error", "duplicate", "complete"]
    assert [c["state"] for c in summary.cells] == ["complete", "complete"]
    assert summary.cells[1]["trials"] == [1, 3]


def test_a_study_whose_grid_was_never_published_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path, publish_timeout_s=0.2)
    storage = make_storage(cfg.storage_url)
    optuna.create_study(storage=storage, study_name=cfg.study_name)  # not a sweep
    with pytest.raises(ValueError, match="has no published grid after 0.2 s"):
        open_study(cfg)
    loss = config(tmp_path, metric="eval_loss", study_name="loss")
    study = optuna.create_study(storage=storage, study_name="loss", direction="maximize")
    study.set_user_attr("loraplus_sweep", loss.record())
    with pytest.raises(ValueError, match="maximizes/minimizes differently"):
        open_study(loss)
    old = config(tmp_path, study_name="old")
    study = optuna.create_study(storage=storage, study_name="old", direction="maximize")
    study.set_user_attr("loraplus_sweep", {**old.record(), "version": 1})
    with pytest.raises(ValueError, match="another loraplus version"):
        open_study(old)


def test_config_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either ratios"):
        SweepConfig(ratios=[1, 2], lr_b=[1e-4])
    with pytest.raises(ValueError, match="sets them per cell"):
        SweepConfig(overrides={"lr": 1e-4})
    with pytest.raises(ValueError, match="metric"):
        SweepConfig(metric="eval_f1")
    with pytest.raises(ValueError, match="budget"):
        SweepConfig(budget=True, ratios=[1, 4])
    with pytest.raises(ValueError, match="> 0"):
        SweepConfig(lr_a=[0.0, 1e-4])
    cfg = config(tmp_path)
    open_study(cfg)
    with pytest.raises(ValueError, match="another sweep"):
        open_study(config(tmp_path, ratios=[1, 8]))
    assert SweepConfig(out_dir=str(tmp_path)).storage_url == f"sqlite:///{tmp_path}/sweep.db"


def test_sweep_input_and_storage_errors_are_one_line_and_failed_input_is_retried(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "".join(f"review {i},pos\n" for i in range(40)))
    out = tmp_path / "sweep"
    train_flags = ["--model", str(tiny_files["bert"]), "--data", str(data), "--max-steps", "2"]
    train_flags += ["--eval-steps", "2", "--batch-size", "8", "--max-length", "32", "--rank", "4"]
    train_flags += ["--report-to", "none", "--no-progress"]
    argv = ["sweep", "--lr-a", "1e-3", "--ratios", "16", "--out-dir", str(out), *train_flags]

    def refused(*extra: str) -> str:
        capsys.readouterr()
        assert cli.main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err.strip().splitlines()[-1]

    # every trial failed on its input (one class): exit 2 with the first cause
    line = refused()
    assert line.startswith("error: Every trial of the sweep failed on its input; the first: ")
    assert "every one of the 40 rows has the label 'pos'" in line
    # the input fixed, the same sweep runs the cells that failed (not kept as errors)
    data.write_text(
        "text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    )
    assert cli.main(argv) == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["counts"] == {"error": 1, "complete": 1}
    assert [c["state"] for c in summary["cells"]] == ["complete"]

    # storage errors: the URL (no password), the cause and the fix in one line
    line = refused("--storage", "postgresql://me:secret@127.0.0.1:9/db")
    assert line.startswith(
        "error: Cannot open the sweep storage postgresql://me:***@127.0.0.1:9/db"
    )
    assert "secret" not in line
    (tmp_path / "text.db").write_text("not a database\n" * 20)
    line = refused("--storage", str(tmp_path / "text.db"))
    assert f"Fix: {tmp_path / 'text.db'} is not a SQLite database: pass another --storage" in line
    line = refused("--storage", f"sqlite:///{tmp_path}")
    assert f"{tmp_path} is a folder: pass a database file path" in line
    line = refused("--summarize-only", "--out-dir", str(tmp_path / "none"))
    missing = tmp_path / "none" / "sweep.db"
    assert line == f"error: No sweep at {missing} (no such file): run the sweep first."
    assert not (tmp_path / "none").exists()
    line = refused("--summarize-only", "--study-name", "other")
    assert "holds no study 'other' (it holds: loraplus-sweep)" in line
