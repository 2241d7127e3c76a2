"""benchmarks/studies/head.toml plans exactly the committed runs of the head study
(docs/study/head/*_sweep.json, written by the study under these names), with its settings."""

from __future__ import annotations

import json
from pathlib import Path

from loraplus.study import load_study, stage_cells
from loraplus.sweep.grid import HOLDING

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"model": "minilm", "lr_multipliers": ["head=16"], "max_steps": 150, "eval_steps": 25}
SETTINGS |= {"max_train": 4000, "max_eval": 400, "batch_size": 16, "max_length": 64, "rank": 8}


def test_config_plans_the_committed_runs() -> None:
    cfg = load_study(ROOT / "benchmarks/studies/head.toml")
    names = []
    for stage in cfg.stages:
        cells = stage_cells(cfg, stage, {})
        data = json.loads((ROOT / cfg.out / f"{stage.name}_sweep.json").read_text())
        rows = [r for r in data["trials"] if r["status"] in HOLDING]
        assert sorted((c.lr_a, c.value, c.seed) for c in cells) == sorted(
            (r["lr_a"], r["ratio"], r["seed"]) for r in rows
        )
        config = cells[0].train_config()
        expected = {**SETTINGS, "data": stage.name.removesuffix("-seeds")}
        assert {k: getattr(config, k) for k in expected} == expected
        names.append(f"{stage.name}_sweep.json")
    assert sorted(names) == sorted(p.name for p in (ROOT / cfg.out).glob("*.json"))
