"""README's Init[1] / Init[2] table is docs/study/init/init_sweep.json, the committed run of
benchmarks/studies/init.toml, which plans exactly those cells."""

from __future__ import annotations

import json
import re
from pathlib import Path

from loraplus.study import load_study, stage_cells

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_is_the_committed_run() -> None:
    cfg = load_study(ROOT / "benchmarks/studies/init.toml")
    (stage,) = cfg.stages
    data = json.loads((ROOT / cfg.out / "init_sweep.json").read_text())
    runs = {(t["init"], t["seed"]): t["value"] for t in data["trials"] if t["status"] == "complete"}
    cells = stage_cells(cfg, stage, {})
    assert sorted((c.value, c.seed) for c in cells) == sorted(runs)
    config = cells[0].train_config()
    assert config.ratio == 16 and config.lr == 4e-4 and config.lr_multipliers == ["head=1"]
    readme = (ROOT / "README.md").read_text()
    for init, label in (("init1", "Init[1] (B = 0)"), ("init2", "Init[2] (A = 0)")):
        row = re.search(rf"\| {re.escape(label)} \| ([\d.]+) \| ([\d.]+) \|", readme)
        assert row is not None, label
        assert [float(row.group(1)), float(row.group(2))] == [runs[(init, 0)], runs[(init, 1)]]
