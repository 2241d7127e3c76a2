"""Sweeps across machines on a real PostgreSQL server: every cell runs exactly once.

Two independent worker processes (what `loraplus sweep --storage postgresql://...` on two
machines is) start on a fresh database at once: one creates the study and queues the grid, the
other waits for it; together they train every cell once. The server is started by the
`postgres_url` fixture (tests/postgres.py).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import optuna
from postgres import postgres_url  # noqa: F401  (fixture)
from test_sweep import LR_A, calls, config, worker

from loraplus.sweep import open_study, summarize


def test_two_workers_on_one_postgres_study_run_every_cell_once(
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = config(
        tmp_path,
        lr_a=LR_A[1:4],
        ratios=[1, 4, 16],
        storage=postgres_url,
        study_name="two-machines",
        heartbeat_s=1,
        overrides={"barrier": 2, "sleep": 0.01},
    )
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=worker, args=(cfg,)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]

    log = calls(tmp_path / "calls.log")
    cells = [c[:3] for c in log]
    assert len(cells) == 9 and len(set(cells)) == 9  # every cell exactly once
    assert len({c[3] for c in log}) == 2  # both processes trained (the barrier makes them meet)
    summary = summarize(postgres_url, "two-machines")
    assert summary.counts.get("complete") == 9 and set(summary.counts) <= {"complete", "idle"}
    assert summary.best is not None and (summary.best["lr_a"], summary.best["ratio"]) == (
        2.0**-10,
        16.0,
    )
    study, grid = open_study(cfg)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(grid.cell_of(t) for t in done) == sorted(grid.cells)
    assert optuna.get_all_study_names(postgres_url) == ["two-machines"]
