"""loraplus.study.decoder: the ratio scan's lines, and the report on hand-made run records."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from test_train import NEGATIVE, POSITIVE, WORDS, save_tiny_llama

from loraplus import cli
from loraplus.study import decoder
from loraplus.train.history import final_metrics
from loraplus.train.record import TrainResult


def test_scan_line_brackets_the_interpolated_lr() -> None:
    # LoRA at 4e-3, LoRA+ at 2.5e-4: log2 lr_A falls by 1 per doubling of the ratio
    assert decoder.scan_line(4e-3, 2.5e-4, 2.0) == pytest.approx([2e-3, 4e-3])
    assert decoder.scan_line(4e-3, 2.5e-4, 8.0) == pytest.approx([5e-4, 1e-3])
    assert decoder.scan_line(4e-3, 2.5e-4, 32.0) == pytest.approx([1.25e-4, 2.5e-4])
    # between ladder points the nearer one comes first
    assert decoder.scan_line(1e-3, 1e-3 / 2**0.8, 16.0) == pytest.approx([5e-4, 1e-3])
    assert decoder.scan_line(1e-3, 1e-3 / 2**0.2, 16.0) == pytest.approx([1e-3, 5e-4])


def record(
    lr: float, ratio: Any, seed: int, losses: list[float], init: str = "init1", **extra: Any
) -> TrainResult:
    """A run evaluated at steps 0, 10, 20 (the first loss is the untouched model's)."""
    history = [{"step": 10 * i, "eval_loss": v} for i, v in enumerate(losses)]
    history[-1].update(extra.get("last", {}))
    final = final_metrics(history, "eval_loss", 10 * (len(losses) - 1), 1.0, False)
    final.update(extra.get("final", {}))
    config = {"lr": lr, "ratio": ratio, "seed": seed, "init": init}
    return TrainResult(history, final, Path("."), False, config=config)


def runs() -> list[TrainResult]:
    em = {"final": {"eval_exact_match": 0.25}}
    return [
        # the tuned lines (seed 0) and the seeds at the chosen cells
        record(1e-3, 1.0, 0, [2.0, 1.2, 0.9]),
        record(4e-3, 1.0, 0, [2.0, 0.8, 0.6], **em),
        record(4e-3, 1.0, 1, [2.0, 0.9, 0.7]),
        record(2.5e-4, 16.0, 0, [2.0, 0.7, 0.65]),
        record(2.5e-4, 16.0, 1, [2.0, 0.8, 0.5]),
        # Init[2] at LoRA's chosen cell; a ratio-2 line; auto at LoRA+'s lr_A
        record(4e-3, 1.0, 0, [2.0, 1.0, 0.95], init="init2"),
        record(2e-3, 2.0, 0, [2.0, 0.7, 0.62]),
        record(4e-3, 2.0, 0, [2.0, 0.7, 0.61]),
        record(2.5e-4, "auto", 0, [2.0, 0.9, 0.7], last={"auto_ratio/attn": 11.3}),
    ]


def test_report_tables_from_run_records(tmp_path: Path) -> None:
    chosen = {"lora": 4e-3, "loraplus": 2.5e-4}
    report = decoder.write(tmp_path, runs(), chosen, "Decoder")
    main = report["compare"]
    assert main["lora"]["seeds"] == [0, 1] and main["lora"]["best_eval_loss"] == [0.6, 0.7]
    assert main["lora"]["perplexity"] == pytest.approx(math.exp(0.65))
    assert main["lora"]["exact_match"] == [0.25, None]
    # LoRA+ reaches LoRA's final loss (0.6) on seed 1 only (0.5 at step 20)
    assert main["reach_steps"] == [None, 20]
    assert [(c["lr_a"], c["best"]) for c in report["grids"]["lora"]] == [(1e-3, 0.9), (4e-3, 0.6)]
    assert report["init"]["lora"]["init1"] == 0.6 and report["init"]["lora"]["init2"] == 0.95
    assert "loraplus" not in report["init"]  # no Init[2] run there
    scan = {r["ratio"]: r for r in report["ratios"]}
    assert set(scan) == {1.0, 2.0, 16.0}
    assert scan[2.0]["lr_a"] == 4e-3 and scan[2.0]["note"] == "best on the line's edge"
    assert report["auto"]["seeds"]["0"]["ratios"] == {"attn": 11.3}
    assert report["auto"]["seeds"]["0"]["loraplus"] == 0.65
    text = (tmp_path / "report.md").read_text()
    assert "| LoRA (ratio 1) | 0.004 (0.004) | 0,1 | 0.650 ± 0.071 |" in text
    assert "| 0 | 2.000 ± 0.000 | 2.000 ± 0.000 |" in text  # both start from the base model
    assert "| lora | 0.004 | 0.004 | 0.600 **chosen** | 0.600 | 0.250 |" in text
    assert "| 2 | 0.002, 0.004 | 0.004 | 0.610 | n/a | best on the line's edge |" in text
    assert "| 0 | 0.700 | 0.650 | attn 11.3 |" in text
    assert json.loads((tmp_path / "report.json").read_text())["runs"] == 9
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


# --- the config plans the committed runs -------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks/studies/decoder.toml"
DATA_KEYS = ("data", "exact_match", "output_dir")
GRID = ["grid-lora", "grid-lora-lr0.016", "seeds-lora", "grid-loraplus", "seeds-loraplus"]
SCAN = [f"ratio{r}-lr{lr}" for r, lrs in ((2, "0.002 0.004"), (4, "0.001 0.002"),
        (8, "0.0005 0.001"), (32, "0.000125 0.00025")) for lr in lrs.split()]  # fmt: skip


def committed(folder: Path, names: list[str]) -> list[dict[str, Any]]:
    """The trial rows of committed sweeps (<name>_sweep.json) that trained, each with its method
    (a ratio as lora / loraplus / ratio=X) and init (the init2-* sweeps' Init[2])."""
    from loraplus.study.method_tasks import method_of

    rows = []
    for name in names:
        data = json.loads((folder / f"{name}_sweep.json").read_text())
        init = "init2" if name.startswith("init2") else "init1"
        for t in data["trials"]:
            if t["status"] in ("complete", "diverged"):
                rows.append({**t, "method": method_of(t), "init": init, "axis": data["axis"]})
    return rows


def cell_key(cell: Any) -> tuple[float, str, int, str]:
    """(lr_A, method, seed, init) of a planned cell."""
    from loraplus.study.method_tasks import method_of

    method = cell.value if cell.axis == "method" else method_of({"ratio": cell.value})
    return (cell.lr_a, method, cell.seed, dict(cell.overrides).get("init", "init1"))


def row_key(row: dict[str, Any]) -> tuple[float, str, int, str]:
    return (row["lr_a"], row["method"], row["seed"], row["init"])


def planned(cfg: Any, rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    """Each stage of `rows`' cells, planned from the committed rows of the stages before it
    (and, for a tune, its own): nothing trains."""
    from loraplus.study.run import Done, plan_runs, prepared, stage_cells

    cfg = prepared(cfg, write=False)
    earlier: dict[str, list[Any]] = {}
    cells = {}
    for stage in cfg.stages:
        if stage.name not in rows:
            continue
        runs = plan_runs(cfg, stage, earlier)
        earlier[stage.name] = [
            Done(r, rows[stage.name] if i == 0 else []) for i, r in enumerate(runs)
        ]
        cells[stage.name] = stage_cells(cfg, stage, earlier)
    return cells


def old_config(row: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig a committed run trained with (as decoder_study / method_tasks built it)."""
    from loraplus.sweep import TrialSpec

    method = row["method"] if row["axis"] == "method" else None
    overrides = {**settings, "init": row["init"]}
    spec = TrialSpec(0, row["lr_a"], None if method else row["ratio"], row["seed"], Path("out"))
    spec = dataclasses.replace(spec, overrides=overrides, method=method)
    return spec.train_config().to_dict()


def check_cells(
    cells: list[Any], rows: list[dict[str, Any]], folder: Path, skip: tuple[str, ...] = DATA_KEYS
) -> None:
    """The planned cells are the committed runs, each trained as its committed run was (with
    `folder`'s results.json settings); for the decoder (skip: the keys that differ so), the
    data is the folder prepare_data writes under the runs folder, as decoder_study.py wrote it,
    and exact match is scored."""
    from collections import Counter

    assert Counter(cell_key(c) for c in cells) == Counter(row_key(r) for r in rows)
    settings = json.loads((folder / "results.json").read_text())["settings"]
    by_key = {row_key(r): r for r in rows}
    for cell in cells:
        new = cell.train_config().to_dict()
        old = old_config(by_key[cell_key(cell)], settings)
        assert {k: v for k, v in new.items() if k not in skip} == {
            k: v for k, v in old.items() if k not in skip
        }
        if skip == DATA_KEYS:
            assert new["exact_match"] is True
            assert new["data"] == str(Path("runs/decoder/data").resolve())


def test_the_config_plans_the_committed_decoder_study() -> None:
    from loraplus.study.config import load_study

    folder = ROOT / "docs/study/decoder"
    rows = {
        "grid": committed(folder, GRID),
        "init2": committed(folder, ["init2-lora", "init2-loraplus"]),
        "scan": committed(folder, SCAN),
    }
    cfg = load_study(STUDY)
    cells = planned(cfg, rows)
    for stage, got in cells.items():
        check_cells(got, rows[stage], folder)
    # prepare_data draws the rows decoder_study.py drew: 20 Newsgroups, seed 0, these sizes
    data = json.loads((folder / "data.json").read_text())
    train = cfg.stages[0].train
    assert (train["data"], train["max_train"], train["max_eval"]) == (
        data["source"],
        data["train_rows"],
        data["eval_rows"],
    )
    assert {c.lr_a for c in cells["init2"]} == {4e-3, 2.5e-4}  # LoRA's and LoRA+'s chosen lr_A


def test_the_config_plans_the_committed_200_step_study() -> None:
    from loraplus.study.config import load_study

    folder = ROOT / "docs/study/decoder-200"
    grid = [*GRID[:4], "grid-loraplus-lr0.004", "seeds-loraplus"]
    rows = {"grid": committed(folder, grid), "auto": committed(folder, ["auto"])}
    cfg = load_study(STUDY, sets=["max_steps=200", "eval_steps=20"])
    for stage, got in planned(cfg, rows).items():
        check_cells(got, rows[stage], folder)


def test_the_config_plans_the_committed_method_runs_on_the_decoder() -> None:
    """The methods stage and best-ratio's seeds, planned from the decoder study's committed grid
    and scan; a `lora` method cell trains as the grid's ratio-1 cell did (DATA_KEYS aside)."""
    from loraplus.study.config import load_study

    decoder, folder = ROOT / "docs/study/decoder", ROOT / "docs/study/method-tasks-decoder"
    names = ["auto", "width-aware", "lorafa", "riemannian", "rslora", "pissa", "loraplus+rslora"]
    sweeps = [f"{m}-{part}" for m in names for part in ("line", "edge", "seeds")]
    rows = {
        "grid": committed(decoder, GRID),
        "scan": committed(decoder, SCAN),
        "methods": committed(folder, [s for s in sweeps if (folder / f"{s}_sweep.json").exists()]),
        "best-ratio": committed(folder, ["ratio2-seeds"]),
    }
    cells = planned(load_study(STUDY), rows)
    for stage in ("methods", "best-ratio"):
        check_cells(cells[stage], rows[stage], folder)
    lora = next(c for c in cells["grid"] if c.lr_a == 4e-3 and c.seed == 0)
    as_method = dataclasses.replace(lora, axis="method", value="lora")
    assert as_method.train_config().to_dict() == lora.train_config().to_dict()


# --- the study end to end, at a few steps on a tiny saved Llama --------------------------------


def write_verdicts(folder: Path) -> Path:
    """train.jsonl / test.jsonl of prompt -> yes/no rows in the tiny tokenizer's words."""
    folder.mkdir(parents=True)
    for name, rows in (("train", 48), ("test", 12)):
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for i in range(rows):
                positive = i % 2 == 0
                word = (POSITIVE if positive else NEGATIVE)[i % 5]
                filler = " ".join(WORDS[10 : 10 + i % 7])
                row = {"prompt": f"review : {filler} {word} . verdict :"}
                row["response"] = "yes" if positive else "no"
                handle.write(json.dumps(row) + "\n")
    return folder


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_smoke_study(tmp_path: Path) -> None:
    model = save_tiny_llama(tmp_path / "llama")
    data = write_verdicts(tmp_path / "data")
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["study", str(STUDY), "--smoke", "--set", f"model={model}", "--set", f"data={data}"]
    argv += ["--out", str(out), "--runs", str(runs)]
    assert cli.main([*argv, "--stage", "grid", "init2", "scan"]) == 0
    report = json.loads((out / "report.json").read_text())
    main = report["compare"]
    # one run per method under --smoke: its centre / 4
    assert report["chosen"] == {"lora": 2.5e-4, "loraplus": 6.25e-5}
    for method in ("lora", "loraplus"):
        assert main[method]["seeds"] == [0] and 0 <= main[method]["exact_match"][0] <= 1
    assert report["init"]["lora"]["init2"] != report["init"]["lora"]["init1"]
    scan = {r["ratio"]: r for r in report["ratios"]}
    assert set(scan) == {1.0, 2.0, 16.0}
    assert scan[2.0]["tried"] == sorted(decoder.scan_line(2.5e-4, 6.25e-5, 2.0))
    assert report["runs"] == 2 + 2 + 2  # grid, Init[2], ratio 2's line
    text = (out / "report.md").read_text()
    assert "| LoRA (ratio 1) | 0.00025 (0.00025) | 0 |" in text and "## Ratio scan" in text
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "results.md").is_file() and (out / "grid_tune.json").is_file()
    # the method table: width-aware tuned; best-ratio's seeds 1, 2 run at its cell (its line,
    # like every line here, has seed 0 only); grid and scan are read back from `out`
    assert cli.main([*argv, "--stage", "methods", "best-ratio"]) == 0
    rows = json.loads((out / "methods.json").read_text())["rows"]
    names = [r["method"] for r in rows]
    assert names[:3] == ["lora", "loraplus", "ratio=2"] and names[4] == "width-aware"
    best = rows[3]
    fixed = min(rows[:3], key=lambda r: r["line"][f"{r['lr_a']:g}"])  # lowest loss, seed 0
    assert best["method"] == f"best-ratio ({fixed['method']})"
    assert best["values"][0] == fixed["values"][0] and best["lr_a"] == fixed["lr_a"]
    assert len(best["values"]) == 3 and best["runs"] == 1 + 1 + 2 + 2
    assert (out / "methods.png").read_bytes()[:4] == b"\x89PNG"


def test_prepare_data_writes_the_seed_0_rows_once(tmp_path: Path) -> None:
    """Every run of the study trains on the rows drawn with seed 0 (its seed moves the init and
    the batch order only): they are written once under the runs folder, and data that is not
    built in is used as given."""
    from loraplus.data import load_data
    from loraplus.study.config import load_study

    sets = ["data='rotten-tomatoes'", "max_train=8", "max_eval=4"]
    cfg = load_study(STUDY, sets=sets, runs=tmp_path / "runs")
    folder = (tmp_path / "runs" / "data").resolve()
    assert decoder.prepare_data(cfg, write=False) == {
        "data": str(folder), "max_train": None, "max_eval": None
    }  # fmt: skip
    assert not folder.exists()
    decoder.prepare_data(cfg)
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    drawn = load_data("rotten-tomatoes", task="causal-lm", seed=0, max_train=8, max_eval=4)
    assert rows == [{"prompt": r["prompt"], "response": r["response"]} for r in drawn.train]
    again = load_data("rotten-tomatoes", task="causal-lm", seed=1, max_train=8, max_eval=4)
    assert [r["prompt"] for r in again.train] != [r["prompt"] for r in rows]  # seed 1 differs
    stamp = (folder / "train.jsonl").stat().st_mtime_ns
    decoder.prepare_data(cfg)
    assert (folder / "train.jsonl").stat().st_mtime_ns == stamp  # written once
    own = load_study(STUDY, sets=[f"data='{tmp_path}'"], runs=tmp_path / "runs")
    assert decoder.prepare_data(own) == {}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("os:system", "prepare must name a function as 'loraplus.study.<module>:<function>'"),
        (
            "loraplus.study.decoder:nothing",
            "prepare 'loraplus.study.decoder:nothing' does not exist",
        ),
    ],
)
def test_prepare_must_name_a_study_function(tmp_path: Path, name: str, message: str) -> None:
    from loraplus.study.config import load_study

    text = STUDY.read_text().replace('"loraplus.study.decoder:prepare_data"', f'"{name}"')
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_study(tmp_path / "s.toml")
