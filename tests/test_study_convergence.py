"""benchmarks/studies/convergence.toml plans exactly the committed runs (docs/study/convergence),
stage by stage, given their results: the head lrs, the chosen head lr, the lr_A lines, the cells
run to convergence (with the runners-up), each with the training settings the study used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_train import tiny_files  # noqa: F401  (a fixture)

from loraplus import cli
from loraplus.study import load_study
from loraplus.study.convergence import compare, label
from loraplus.study.run import Done, Run, plan_runs, stage_cells
from loraplus.sweep.grid import HOLDING
from loraplus.train import read_record
from loraplus.train.history import steps_to_reach
from loraplus.train.methods import method_settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs/study/convergence"
SHORT = {"model": "minilm", "max_train": 4000, "max_eval": 400, "batch_size": 16}
SHORT |= {"max_length": 64, "rank": 8, "alpha": 16, "max_steps": 150, "eval_steps": 25}
LONG = {"max_steps": -1, "epochs": 3, "eval_steps": 25, "early_stopping_patience": 4}
HEAD = {"rotten-tomatoes": "0.016", "20newsgroups": "0.064"}  # as committed (results.json)


def committed(run: Run, task: str) -> tuple[str, list[dict[str, Any]]]:
    """The committed sweep(s) that ran this run's cells, and their trial rows."""
    stage = run.stage.removeprefix(f"{task}-")
    if stage == "head":
        head = run.each[0].partition("=")[2]
        names = [f"{task}-head{head}-{run.label}"]
    elif stage == "line":
        names = [f"{task}-line-{m}-head{HEAD[task]}" for m in ("lora", "loraplus")]
    else:
        names = [f"{task}-converge-{run.label}-head{HEAD[task]}"]
    rows = []
    for name in names:
        data = json.loads((DOCS / f"{name}_sweep.json").read_text())
        for row in data["trials"]:
            if row["status"] not in HOLDING:  # an attempt killed and run again
                continue
            method = "lora" if row["ratio"] == 1.0 else "loraplus"
            rows.append({**row, "method": method})
    return ",".join(names), rows


def test_config_plans_the_committed_runs() -> None:
    cfg = load_study(ROOT / "benchmarks/studies/convergence.toml")
    earlier: dict[str, list[Done]] = {}
    used: set[str] = set()
    for stage in cfg.stages:
        task = stage.group
        runs = plan_runs(cfg, stage, earlier)
        found = [(r, *committed(r, task)) for r in runs]
        earlier[stage.name] = [Done(r, rows) for r, _, rows in found]
        cells = stage_cells(cfg, stage, earlier)
        for run, names, rows in found:
            mine = sorted(
                (c.lr_a, method_settings(c.value)["ratio"], c.seed)
                for c in cells
                if c.run == run.name
            )
            assert mine == sorted((r["lr_a"], r["ratio"], r["seed"]) for r in rows), run.name
            used.update(names.split(","))
            config = next(c for c in cells if c.run == run.name).train_config()
            settings = {**SHORT, **(LONG if stage.base == "converge" else {}), "data": task}
            assert {k: getattr(config, k) for k in settings} == settings, run.name
            if stage.base != "head":
                assert config.lr_roles == [f"head={HEAD[task]}"], run.name
    on_disk = {p.name.removesuffix("_sweep.json") for p in DOCS.glob("*_sweep.json")}
    assert used == on_disk  # every committed run, and nothing more


def test_report_compares_steps_to_loras_final_accuracy() -> None:
    def rows(*points: tuple[int, float]) -> list[dict[str, float]]:
        return [{"step": s, "eval_accuracy": a} for s, a in points]

    converge = {
        "lora": {"runs": {"0": rows((0, 0.1), (25, 0.5), (50, 0.7), (75, 0.65))}},
        "loraplus": {"runs": {"0": rows((0, 0.1), (25, 0.66), (50, 0.68), (75, 0.69))}},
    }
    comp = compare(converge)
    assert comp["lora"] == {"best": [0.7], "final": [0.65], "steps": [75], "best_step": [50]}
    assert comp["loraplus"]["best"] == [0.69] and comp["loraplus"]["best_step"] == [75]
    # LoRA ends at 0.65, which it first reached at step 50; LoRA+ passes it at step 25.
    assert comp["reach"] == {"0": {"lora_final": 0.65, "lora_steps": 50, "loraplus_steps": 25}}
    converge["loraplus"]["runs"]["0"] = rows((0, 0.1), (25, 0.3))
    assert compare(converge)["reach"]["0"]["loraplus_steps"] is None
    assert label("lora-lr0.0016") == "LoRA (runner-up lr_A 0.0016)" and label("loraplus") == "LoRA+"
    early = rows((0, 0.9), (5, 0.6), (10, 0.8))  # step 0 (before training) never counts
    assert steps_to_reach(early, "eval_accuracy", 0.7) == 10
    assert steps_to_reach(early, "eval_accuracy", 0.95) is None


def test_smoke_one_task_end_to_end(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """README's command at --smoke size on a tiny model, one task: head -> line -> converge, the
    head lr chosen and fed on, the report and its curves written."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    stages = [f"rotten-tomatoes-{s}" for s in ("head", "line", "converge")]
    argv = [
        *(
            "study",
            str(ROOT / "benchmarks/studies/convergence.toml"),
            "--smoke",
            "--stage",
            *stages,
        ),
        *("--runs", str(runs), "--out", str(out)),
        *("--set", f"model='{tiny_files['bert']}'", "--set", f"data='{tiny_files['cls']}'"),
        *("--set", "max_length=32", "--set", "rank=4"),
    ]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    task = report["tasks"]["rotten-tomatoes"]
    assert task["head"]["chosen"] == "head=0.016" and set(task["converge"]) == {"lora", "loraplus"}
    for key, run in task["converge"].items():
        assert list(run["runs"]) == ["0"] and run["lr_a"] == task["lines"][key]["lr_a"]
    (trial,) = (runs / "rotten-tomatoes-converge-loraplus" / "trials").iterdir()
    config = read_record(trial).config
    assert config["early_stopping_patience"] == 1 and config["lr_roles"] == ["head=0.016"]
    assert (out / "curves-rotten-tomatoes.png").read_bytes()[:4] == b"\x89PNG"
    assert "| rotten-tomatoes | head=0.016 | LoRA+ |" in (out / "report.md").read_text()
