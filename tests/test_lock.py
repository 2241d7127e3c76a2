"""One run per output folder: a real `loraplus train` process and a second run, one folder."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
from pathlib import Path

import pytest
from test_resume import PAUSED_FILE, _flags, _kill, _start, _wait_for
from test_train import tiny_cls_config, tiny_files  # noqa: F401  (a fixture)

from loraplus.cli import main
from loraplus.train import train
from loraplus.train.lock import LOCK_FILE, holder, run_lock

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_second_run_into_a_folder_in_use_is_refused_and_a_dead_holder_taken_over(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    first = _start(_flags(tiny_files, out), pause_at=2)  # holds the folder, mid-checkpoint
    _wait_for(out / PAUSED_FILE, first)
    try:
        _refused_then_taken_over(tiny_files, out, first, caplog, capsys)
    finally:
        if first.poll() is None:
            _kill(first)


def _refused_then_taken_over(
    files: dict[str, Path],
    out: Path,
    first: subprocess.Popen[str],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = holder(out)
    assert name is not None
    assert re.fullmatch(rf"pid {first.pid} on {re.escape(socket.gethostname())} since \S+Z", name)

    # a second run (this process), even with --overwrite, stops before it writes or deletes
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    assert main(["train", *_flags(files, out), "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --output-dir {out} is in use by another run ({holder(out)}): wait for it to "
        "end, or pass another --output-dir."
    )
    with pytest.raises(ValueError, match=r"is in use by another run \(pid "):
        train(tiny_cls_config(files, out, overwrite=True))  # the lock itself, past any check
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert first.poll() is None  # the first run goes on

    # the holder killed: the next run takes the folder over and says whose lock it was
    stale = holder(out)
    _kill(first)
    assert holder(out) is None and (out / LOCK_FILE).read_text().strip() == stale
    with caplog.at_level(logging.WARNING, logger="loraplus"):
        result = train(tiny_cls_config(files, out, max_steps=2, eval_steps=2, overwrite=True))
    assert f"Took over {out / LOCK_FILE}: its holder ({stale}) is gone." in caplog.text
    assert result.final["steps"] == 2
    assert not (out / LOCK_FILE).exists()  # released cleanly: nothing to take over


def test_the_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    with run_lock(tmp_path / "a" / "b"):
        assert holder(tmp_path / "a" / "b") is None  # its own holder is not "another run"
        assert "pid" in (tmp_path / "a" / "b" / LOCK_FILE).read_text()
    assert not (tmp_path / "a").exists()  # the folders it made, empty, are removed again
    with pytest.raises(RuntimeError, match="bad input"), run_lock(tmp_path / "a" / "b"):
        (tmp_path / "a" / "kept").write_text("x")
        raise RuntimeError("bad input")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["kept"]
    with run_lock(tmp_path / "c", take=False):
        assert not (tmp_path / "c").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot create it"), run_lock(tmp_path / "file" / "r"):
        pass
