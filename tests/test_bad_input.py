"""Bad input: exit 2, one line naming the problem and the fix, no traceback, nothing written.

Each case builds its files in code, runs `loraplus train` (or the Python API) and checks the exit
status, a fragment of the message, and that --output-dir was not created or changed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train import tiny_files  # noqa: F401  (a fixture)

from loraplus import cli
from loraplus.data import load_data
from loraplus.train import make_config, train

pytestmark = pytest.mark.usefixtures("one_thread")

Files = dict[str, Path]


def _csv(path: Path, rows: list[tuple[Any, Any]], header: str = "text,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def _labelled(path: Path, n: int = 40) -> Path:
    return _csv(path, [(f"row {i}", "pos" if i % 2 else "neg") for i in range(n)])


def _run_folder(path: Path) -> Path:
    """A folder holding an earlier run: metrics and a TensorBoard log."""
    (path / "tensorboard").mkdir(parents=True)
    (path / "tensorboard" / "events.out.tfevents.1").write_text("old")
    (path / "metrics.json").write_text("{}")
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder with its content (empty when the folder does not exist)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {"": folder.read_text()}
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


# Each case: (id, setup(tmp, files) -> (argv after `train`, output folder), message fragment).
Setup = Callable[[Path, Files], tuple[list[str], Path]]


def _args(files: Files, out: Path, *extra: str, data: Path | str | None = None) -> list[str]:
    """A complete, otherwise valid `loraplus train` command line."""
    base = ["--model", str(files["bert"]), "--data", str(data or files["cls"])]
    return [*base, "--batch-size", "8", "--report-to", "none", "--output-dir", str(out), *extra]


def _case_output_file(tmp: Path, files: Files) -> tuple[list[str], Path]:
    (tmp / "out").write_text("a file")
    return _args(files, tmp / "out"), tmp / "out"


def _case_output_under_file(tmp: Path, files: Files) -> tuple[list[str], Path]:
    (tmp / "f").write_text("a file")
    return _args(files, tmp / "f" / "out"), tmp / "f"


def _case_output_not_writable(tmp: Path, files: Files) -> tuple[list[str], Path]:
    (tmp / "ro").mkdir()
    return _args(files, tmp / "ro" / "out"), tmp / "ro"


def _case_output_holds_run(tmp: Path, files: Files) -> tuple[list[str], Path]:
    return _args(files, _run_folder(tmp / "out")), tmp / "out"


def _case_mixed_labels(tmp: Path, files: Files) -> tuple[list[str], Path]:
    rows = [(f"t{i}", ["1", "pos", "2.5", "neg"][i % 4]) for i in range(40)]
    return _args(files, tmp / "out", data=_csv(tmp / "m.csv", rows)), tmp / "out"


def _case_one_class(tmp: Path, files: Files) -> tuple[list[str], Path]:
    data = _csv(tmp / "one.csv", [(f"t{i}", "pos") for i in range(40)])
    return _args(files, tmp / "out", data=data), tmp / "out"


def _case_one_row(tmp: Path, files: Files) -> tuple[list[str], Path]:
    return _args(files, tmp / "out", data=_csv(tmp / "r.csv", [("hello", "pos")])), tmp / "out"


def _case_under_one_batch(tmp: Path, files: Files) -> tuple[list[str], Path]:
    argv = _args(files, tmp / "out", "--batch-size", "16", data=_labelled(tmp / "s.csv", 12))
    return argv, tmp / "out"


def _case_model_empty_folder(tmp: Path, files: Files) -> tuple[list[str], Path]:
    (tmp / "model").mkdir()
    return [*_args(files, tmp / "out"), "--model", str(tmp / "model")], tmp / "out"


def _case_model_is_file(tmp: Path, files: Files) -> tuple[list[str], Path]:
    (tmp / "model.bin").write_text("x")
    return [*_args(files, tmp / "out"), "--model", str(tmp / "model.bin")], tmp / "out"


def _case_model_missing(tmp: Path, files: Files) -> tuple[list[str], Path]:
    return [*_args(files, tmp / "out"), "--model", str(tmp / "no" / "model")], tmp / "out"


def _flags(*extra: str) -> Setup:
    """A case that adds flags to a valid command line."""

    def setup(tmp: Path, files: Files) -> tuple[list[str], Path]:
        return _args(files, tmp / "out", *extra), tmp / "out"

    return setup


def _data(write: Callable[[Path], Path], *extra: str) -> Setup:
    """A case with its own --data file."""

    def setup(tmp: Path, files: Files) -> tuple[list[str], Path]:
        return _args(files, tmp / "out", *extra, data=write(tmp)), tmp / "out"

    return setup


def _config(text: str, name: str = "run.yaml") -> Setup:
    """A case with a --config file."""

    def setup(tmp: Path, files: Files) -> tuple[list[str], Path]:
        (tmp / name).write_text(text)
        return [*_args(files, tmp / "out"), "--config", str(tmp / name)], tmp / "out"

    return setup


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _empty(path: Path) -> Path:
    return _write(path, "")


def _eval_folder(tmp: Path) -> Path:
    (tmp / "d").mkdir()
    _labelled(tmp / "d" / "train.csv")
    _labelled(tmp / "d" / "test.csv", 10)
    return tmp / "d"


def _jsonl(tmp: Path) -> Path:
    lines = ['{"text": "a", "label": 1}', '{"text": "b", "label": 0}', '{"text": "c", label: 2}']
    (tmp / "d.jsonl").write_text("\n".join(lines) + "\n")
    return tmp / "d.jsonl"


def _eval_with(rows: list[tuple[Any, Any]], *extra: str) -> Setup:
    """A case with an --eval-data file of text/label rows."""

    def setup(tmp: Path, files: Files) -> tuple[list[str], Path]:
        evals = _csv(tmp / "e.csv", rows)
        return _args(files, tmp / "out", "--eval-data", str(evals), *extra), tmp / "out"

    return setup


CASES: list[tuple[str, Setup, str]] = [
    ("output is a file", _case_output_file, "cannot be a folder: pass a folder path"),
    ("output under a file", _case_output_under_file, "is a file): pass a folder path"),
    ("output not writable", _case_output_not_writable, "is not writable; pass a folder"),
    ("output holds a run", _case_output_holds_run, "holds another run (metrics.json, tensorb"),
    ("mixed labels", _case_mixed_labels, "mixes kinds: 20 rows are numbers (1, 2.5); 20 rows"),
    ("one class", _case_one_class, "every one of the 40 rows has the label 'pos'"),
    ("one row", _case_one_row, "1 usable rows with 1 distinct text(s)"),
    ("under one batch", _case_under_one_batch, "fewer than one batch (--batch-size 16)"),
    ("empty model folder", _case_model_empty_folder, "holds no model: no config.json"),
    ("model is a file", _case_model_is_file, "is a file. Pass a model folder"),
    ("model missing", _case_model_missing, "does not exist. Pass an existing folder"),
    ("unknown optimizer", _flags("--optimizer", "adamw_torhc"), "Did you mean adamw_torch"),
    ("unknown scheduler", _flags("--scheduler", "cosin"), "scheduler must be one of"),
    ("unknown task", _flags("--task", "regression"), "task must be one of"),
    ("negative lr", _flags("--lr", "-1"), "lr must be > 0"),
    ("lr not a number", _flags("--lr", "fast"), "invalid float value"),
    ("unknown flag", _flags("--learning-rate", "1"), "unrecognized arguments"),
    ("prompt column, classification", _flags("--prompt-column", "q"), "apply to --task causal"),
    ("blank text column", _flags("--text-column", " "), "text_column is blank"),
    ("missing label column", _flags("--label-column", "stars"), "'stars' (--label-column) not"),
    (
        "no text column",
        _data(lambda t: _csv(t / "x.csv", [(1, 2)] * 30, "a,b")),
        "Pass --text-column NAME",
    ),
    (
        "no label column",
        _data(lambda t: _csv(t / "x.csv", [("a", "b")] * 30, "text,b")),
        "Pass --label-column NAME",
    ),
    ("jsonl parse error", _data(_jsonl), "d.jsonl: line 3 is not valid JSON"),
    (
        "jsonl line not an object",
        _data(lambda t: _write(t / "a.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n')),
        "a.jsonl: line 2 is a JSON list, not an object of column: value",
    ),
    (
        "csv ragged row",
        _data(lambda t: _write(t / "r.csv", "text,label\na,x\nb,y,z\nc,x\n")),
        "r.csv as csv: Error tokenizing data. C error: Expected 2 fields in line 3, saw 3",
    ),
    (
        "fractional labels",
        _data(lambda t: _csv(t / "f.csv", [(f"t{i}", i / 4) for i in range(40)])),
        "are not class ids",
    ),
    ("unknown data", _flags("--data", "imdb"), "Unknown dataset 'imdb'"),
    ("unsupported type", _data(lambda t: _csv(t / "d.xlsx", [])), "unsupported file type '.xlsx'"),
    ("empty csv", _data(lambda t: _empty(t / "e.csv")), "e.csv has no data rows"),
    ("header only", _data(lambda t: _csv(t / "h.csv", [])), "h.csv has no data rows"),
    (
        "blank labels",
        _data(lambda t: _csv(t / "b.csv", [(f"t{i}", "") for i in range(30)])),
        "has no usable rows",
    ),
    ("eval file missing", _flags("--eval-data", "nope.csv"), "--eval-data 'nope.csv' does not"),
    ("eval with built-in", _flags("--data", "rotten-tomatoes", "--eval-data", "x.csv"), "built-in"),
    (
        "eval and test.csv",
        _data(_eval_folder, "--eval-data", "x.csv"),
        "already holds an eval file",
    ),
    (
        "eval columns differ",
        lambda t, f: _eval_with([("q", "a")] * 5, "--task", "causal-lm", "--data", str(f["lm"]))(
            t, f
        ),
        "same columns",
    ),
    ("eval no rows", _eval_with([]), "e.csv has no data rows"),
    ("eval blank rows", _eval_with([("", "x")] * 3), "The eval set of"),
    ("yaml bad type", _config("rank: abc\n"), "run.yaml: invalid int value"),
    ("yaml failed check", _config("lr: -1\n"), "run.yaml, key lr: lr must be"),
    ("yaml null", _config("batch_size: null\n"), "batch_size in"),
    ("yaml unknown key", _config("learning_rate: 1\n"), "Unknown setting(s) in"),
    ("toml syntax", _config("lr = \n", "run.toml"), "Cannot parse"),
    ("config missing", _flags("--config", "nope.yaml"), "does not exist"),
    ("max length above positions", _flags("--max-length", "65"), "above the 64 positions of"),
    ("report to a missing package", _flags("--report-to", "wandb"), "needs the wandb package"),
    ("report to no integration", _flags("--report-to", "wandbb"), "not a logging integration"),
    ("hub id offline", _flags("--model", "someone/model"), "not in the local cache and the hub"),
    (
        "list labels",
        _data(lambda t: _write(t / "l.jsonl", '{"text": "a", "label": [0, 1]}\n' * 30)),
        "row 1 has the label [0, 1], a list; multi-label classification is not supported",
    ),
    (
        "infinite labels",
        _data(lambda t: _csv(t / "i.csv", [(f"t{i}", ["1", "inf"][i % 2]) for i in range(40)])),
        "labels such as inf are not class ids",
    ),
    ("resume a damaged checkpoint", _flags("--resume", "nope"), "cannot resume from it: it has no"),
]


@pytest.mark.parametrize(("setup", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_refuses_bad_input(
    setup: Setup,
    fragment: str,
    tiny_files: Files,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    argv, out = setup(tmp_path, tiny_files)
    if out.name == "ro":  # root may write anywhere: make the folder read-only to os.access
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: Path(p) != out and real(p, m))
    before = _snapshot(out)
    status = cli.main(["train", *argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert fragment in err
    assert _snapshot(out) == before  # nothing written


def test_the_table_is_long_enough() -> None:
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


# --- the Python API -------------------------------------------------------------------------


def _api_cfg(files: Files, out: Path, **overrides: Any) -> Any:
    settings_: dict[str, Any] = {
        "model": str(files["bert"]),
        "data": str(files["cls"]),
        "batch_size": 8,
        "max_steps": 2,
        "report_to": "none",
        "progress": False,
        "output_dir": str(out),
    }
    return make_config(**{**settings_, **overrides})


API_CASES: list[tuple[str, Callable[[Path, Files], Any], str]] = [
    (
        "run in the folder",
        lambda t, f: train(_api_cfg(f, t / "run")),
        "holds another run",
    ),
    (
        "mixed labels",
        lambda t, f: load_data(_csv(t / "m.csv", [("a", 1), ("b", "pos")]), task="cls"),
        "mixes kinds: 1 rows are numbers (1); 1 rows are words (pos)",
    ),
    (
        "one row",
        lambda t, f: train(_api_cfg(f, t / "out", data=str(_csv(t / "r.csv", [("a", "b")])))),
        "needs at least 2 distinct texts",
    ),
    (
        "under one batch",
        lambda t, f: train(_api_cfg(f, t / "out", data=str(_labelled(t / "s.csv", 6)))),
        "fewer than one batch (--batch-size 8)",
    ),
    (
        "empty model folder",
        lambda t, f: train(_api_cfg(f, t / "out", model=str(t))),
        "holds no model",
    ),
    ("optimizer", lambda t, f: _api_cfg(f, t / "out", optimizer="adam"), "not a transformers"),
    ("jsonl", lambda t, f: load_data(_jsonl(t), task="cls"), "line 3 is not valid JSON"),
    (
        "eval conflict",
        lambda t, f: load_data(_eval_folder(t), task="cls", eval_data=t / "d" / "test.csv"),
        "already holds an eval file (test.csv)",
    ),
]


@pytest.mark.parametrize(
    ("call", "fragment"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES]
)
def test_python_api_refuses_bad_input(
    call: Callable[[Path, Files], Any],
    fragment: str,
    tiny_files: Files,  # noqa: F811
    tmp_path: Path,
) -> None:
    _run_folder(tmp_path / "run")
    before = [_snapshot(tmp_path / "out"), _snapshot(tmp_path / "run")]
    with pytest.raises(ValueError) as info:
        call(tmp_path, tiny_files)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert [_snapshot(tmp_path / "out"), _snapshot(tmp_path / "run")] == before


# --- what is not refused --------------------------------------------------------------------


def test_print_config_checks_the_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--data", str(tmp_path / "gone.csv"), "--print-config"]) == 2
    assert "Unknown dataset" in capsys.readouterr().err
    _labelled(tmp_path / "d.csv")
    argv = ["train", "--data", str(tmp_path / "d.csv"), "--eval-data", str(tmp_path / "d.csv")]
    assert cli.main([*argv, "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["eval_data"] == str(tmp_path / "d.csv")


def test_overwrite_replaces_the_old_run(
    tiny_files: Files,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _run_folder(tmp_path / "out")
    (out / "checkpoint-7").mkdir()  # the old run's checkpoint: never resumed into the new one
    argv = [*_args(tiny_files, out, "--max-steps", "2", "--no-progress"), "--report-to"]
    assert cli.main(["train", *argv, "tensorboard", "--overwrite"]) == 0
    events = [p.name for p in (out / "tensorboard").iterdir()]
    assert events and "events.out.tfevents.1" not in events  # the old log is gone
    assert not (out / "checkpoint-7").exists()
    assert json.loads((out / "metrics.json").read_text())["config"]["overwrite"] is True


# --- config values: a file and a flag agree, and a file's error names the file and key -----

_NUMBERS = ["lr", "ratio", "rank", "alpha", "dropout", "epochs", "max_steps", "batch_size"]
_NUMBERS += ["grad_accum", "eval_steps", "warmup_ratio", "weight_decay", "max_eval", "seed"]


def _outcome(call: Callable[[], Any]) -> Any:
    """The config's values, or the ValueError's message."""
    try:
        cfg = call()
    except ValueError as err:
        return ("error", str(err))
    return ("ok", {k: v for k, v in cfg.to_dict().items() if not _is_nan(v)})


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


@settings(max_examples=150, deadline=None)
@given(
    key=st.sampled_from(_NUMBERS),
    value=st.one_of(
        st.integers(-3, 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=6),
        st.booleans(),
        st.none(),
    ),
)
def test_config_file_values_are_typed_as_flags(key: str, value: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.yaml"
        path.write_text(yaml.safe_dump({key: value}))
        from_file = _outcome(lambda: make_config(path))
        from_flag = _outcome(lambda: make_config(**{key: value}))
    assert from_file[0] == from_flag[0]  # both accept or both refuse
    if from_file[0] == "ok":
        assert from_file == from_flag
    else:
        assert str(path) in from_file[1] and key in from_file[1]
        assert "\n" not in from_file[1]
