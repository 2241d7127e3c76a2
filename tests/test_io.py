"""Atomic writes: complete or absent, never half-written; records read back from JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loraplus._io import atomic_dir, atomic_file, from_dict, write_json
from loraplus.train.record import RECORD_FILE, TrainResult, read_record, write_record


def test_write_json_round_trips_and_nulls_non_finite(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a" / "m.json", {"x": 1.5, "bad": [float("nan"), float("inf")]})
    assert json.loads(path.read_text()) == {"x": 1.5, "bad": [None, None]}
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_file(target) as handle:
        handle.write("half of a new")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_dir_cache_keeps_a_finished_target(tmp_path: Path) -> None:
    calls = []

    def build(tmp: Path) -> Path:
        calls.append(tmp)
        (tmp / "config.json").write_text("{}")
        return tmp

    target = tmp_path / "models" / "m"
    assert atomic_dir(target, build, replace=False) == target
    assert atomic_dir(target, build, replace=False) == target
    assert len(calls) == 1 and (target / "config.json").is_file()
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no temp dirs left behind


def test_atomic_dir_replaces_and_moves_a_returned_subfolder(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "stale.txt").write_text("old run")

    def build(tmp: Path) -> Path:
        (tmp / "inner").mkdir()
        (tmp / "inner" / "w.safetensors").write_bytes(b"123")
        return tmp / "inner"

    atomic_dir(target, build)
    assert sorted(p.name for p in target.iterdir()) == ["w.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_a_failed_build_leaves_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "ok.txt").write_text("previous")

    def build(tmp: Path) -> None:
        (tmp / "part").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_dir(target, build)
    assert (target / "ok.txt").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


@dataclass
class Row:
    a: int
    b: list[int] = field(default_factory=list)


def test_from_dict_takes_the_fields_ignores_other_keys_and_adds_given() -> None:
    assert from_dict(Row, {"a": 1, "b": [2], "from_a_newer_version": "x"}) == Row(1, [2])
    assert from_dict(Row, {"a": 1}, a=5, b=[3]) == Row(5, [3])
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'a'"):
        from_dict(Row, {"b": [2]})


def test_a_record_reads_back_and_a_foreign_file_is_named(tmp_path: Path) -> None:
    record = TrainResult(
        history=[{"step": 1}], final={"steps": 1}, output_dir=tmp_path, diverged=False
    )
    path = write_record(record)
    data = json.loads(path.read_text())
    assert "output_dir" not in data and "main_process" not in data
    path.write_text(json.dumps({**data, "main_process": False, "newer": 1}))
    assert read_record(tmp_path) == record  # the file's reader is the main process
    path.write_text(json.dumps({"final": {}}))
    with pytest.raises(ValueError, match=f"{RECORD_FILE} lacks diverged, history: it was not"):
        read_record(path)
