"""Atomic writes: complete or absent, never half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplus._io import atomic_dir, atomic_file, write_json


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
