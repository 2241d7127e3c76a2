"""Checkpoints and exact resume: real `loraplus train` processes SIGKILLed and resumed.

A killed run resumed with `--resume auto` must end with an adapter bit-identical to an
uninterrupted run; a half-written checkpoint is never visible and never picked up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from pause_in_checkpoint import PAUSED_FILE
from safetensors.torch import load_file
from test_train import tiny_cls_config, tiny_files  # noqa: F401  (a fixture)
from transformers import TrainerCallback

from loraplus.cli import main
from loraplus.train import checkpoint as ckpt
from loraplus.train import train
from loraplus.train.outputs import FINAL_FILES

PAUSER = Path(__file__).with_name("pause_in_checkpoint.py")
SETTINGS = {"max_steps": 6, "eval_steps": 3, "save_steps": 2, "save_total_limit": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def _flags(files: dict[str, Path], out: Path, **extra: Any) -> list[str]:
    cfg = tiny_cls_config(files, out, **{**SETTINGS, **extra})
    flags = ["--model", cfg.model, "--data", cfg.data, "--output-dir", str(out)]
    for key in ("max_steps", "eval_steps", "save_steps", "save_total_limit", "batch_size"):
        if getattr(cfg, key) is not None:
            flags += [f"--{key.replace('_', '-')}", str(getattr(cfg, key))]
    flags += ["--max-length", "32", "--lr", "1e-3", "--rank", "4", "--report-to", "none"]
    given = {k: v for k, v in extra.items() if k not in SETTINGS and k != "save_total_limit"}
    return [*flags, "--no-progress", *(a for k, v in given.items() for a in _flag(k, v))]


def _flag(key: str, value: Any) -> list[str]:
    return [f"--{key.replace('_', '-')}", str(value)]


def _start(flags: list[str], pause_at: int | None = None) -> subprocess.Popen[str]:
    """`loraplus train` in a process; with `pause_at`, blocked inside that step's checkpoint
    write (tests/pause_in_checkpoint.py) once it has written PAUSED_FILE."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "loraplus.cli", "train", *flags]
    if pause_at is not None:
        out = flags[flags.index("--output-dir") + 1]
        cmd = [sys.executable, str(PAUSER), str(pause_at), out, "train", *flags]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name}: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _finish(flags: list[str]) -> str:
    proc = _start(flags)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def _assert_same_adapter(a: Path, b: Path) -> None:
    left, right = (
        load_file(a / "adapter_model.safetensors"),
        load_file(b / "adapter_model.safetensors"),
    )
    assert left.keys() == right.keys() and len(left) > 0
    for name in left:
        assert torch.equal(left[name], right[name]), name


def test_sigkilled_runs_resume_bit_identically(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    reference = train(tiny_cls_config(tiny_files, tmp_path / "ref", **SETTINGS))
    out = tmp_path / "run"

    # 1. killed inside the write of checkpoint-4: only checkpoint-2 is visible
    proc = _start(_flags(tiny_files, out), pause_at=4)
    _wait_for(out / PAUSED_FILE, proc)
    staged = out / ckpt.STAGING / "checkpoint-4"
    assert (staged / "adapter_model.safetensors").is_file()  # the write is half done
    assert not (staged / "optimizer.pt").exists()
    _kill(proc)
    assert [p.name for p in ckpt.checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "checkpoint-4").exists() and not (out / "metrics.json").exists()

    # 2. resumed from checkpoint-2 (the stale half of 4 cleared), then killed again inside the
    # write of checkpoint-6, after checkpoint-4 was published: a waiting poll is not fast enough
    # to stop a tiny model between two steps, so the pause makes that moment certain
    (out / PAUSED_FILE).unlink()
    proc = _start(_flags(tiny_files, out, resume="auto"), pause_at=6)
    _wait_for(out / PAUSED_FILE, proc)
    assert [p.name for p in ckpt.checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert not (out / ckpt.STAGING / "checkpoint-4").exists()  # the stale half was cleared
    _kill(proc)
    (out / PAUSED_FILE).unlink()

    # 3. resumed again to the end
    text = _finish(_flags(tiny_files, out, resume="auto"))
    assert "6 steps in" in text
    _assert_same_adapter(reference.output_dir / "adapter", out / "adapter")
    for step in (4, 6):  # checkpoints are complete and equal to the uninterrupted run's
        _assert_same_adapter(
            reference.output_dir / f"checkpoint-{step}", out / f"checkpoint-{step}"
        )
    assert [p.name for p in ckpt.checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]
    metrics = json.loads((out / "metrics.json").read_text())
    ref_metrics = json.loads((reference.output_dir / "metrics.json").read_text())
    assert metrics["history"] == ref_metrics["history"]  # history kept across the kills
    assert metrics["train_loss_log"] == ref_metrics["train_loss_log"]
    assert metrics["resumed_from"].endswith("checkpoint-4")
    assert not (out / ckpt.STAGING).exists() and not list(out.glob(".adapter*"))


def test_resume_rules_and_a_changed_ratio_is_loud(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "run"
    settings = {**SETTINGS, "max_steps": 4, "save_adapter": False}
    first = train(tiny_cls_config(tiny_files, out, **settings))
    assert not first.diverged
    # a fresh run into a folder with checkpoints is refused (it would mix two runs)
    with pytest.raises(ValueError, match=r"holds another run .*checkpoint-4.*--resume auto"):
        train(tiny_cls_config(tiny_files, out, **settings))
    bad = tmp_path / "nope"
    bad.mkdir()
    with pytest.raises(ValueError, match="not a complete loraplus checkpoint"):
        train(tiny_cls_config(tiny_files, out, **settings, resume=str(bad), overwrite=True))
    # a half-written checkpoint (no marker) at a later step is not picked up
    (out / "checkpoint-9").mkdir()
    assert ckpt.resolve_resume("auto", out) == out / "checkpoint-4"
    changed = {**settings, "max_steps": 6, "ratio": 4, "resume": str(out / "checkpoint-2")}
    # resuming would replace the finished run: refused, unless --overwrite
    with pytest.raises(ValueError, match=r"finished run with other settings \(max_steps 4 -> 6"):
        train(tiny_cls_config(tiny_files, out, **changed))
    with pytest.warns(UserWarning, match=r"ratio 16 -> ratio 4"):
        again = train(tiny_cls_config(tiny_files, out, **changed, overwrite=True))
    assert again.final["steps"] == 6 and not (out / "checkpoint-9").exists()
    assert "saved with other settings (max_steps 4 -> 6; ratio 16.0 -> 4.0)" in caplog.text
    lrs = json.loads((out / "metrics.json").read_text())["param_groups"]
    assert {g["role"]: g["lr"] for g in lrs}["lora_B"] == pytest.approx(4e-3)


class Crash(TrainerCallback):
    """Fails the run after its first step, as a kill there would."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 1:
            raise RuntimeError("crash at step 1")


def test_a_new_run_never_leaves_the_previous_runs_outputs_beside_its_own(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    train(tiny_cls_config(tiny_files, out, max_steps=2, eval_steps=2))
    assert all((out / name).exists() for name in ("metrics.json", "curves.png", "adapter"))
    (out / ".adapter.k1ll3d").mkdir()  # what a kill inside an adapter write leaves
    with pytest.raises(RuntimeError, match="crash at step 1"):
        again = tiny_cls_config(tiny_files, out, max_steps=4, eval_steps=2, overwrite=True)
        train(again, callbacks=[Crash()])
    assert not [name for name in FINAL_FILES if (out / name).exists()]
    assert not (out / ".adapter.k1ll3d").exists()


def _damage(path: Path, how: str) -> None:
    """Damage a checkpoint file for real: truncate it, flip one byte, empty it or delete it."""
    if how == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()


def test_damaged_checkpoints_are_skipped_and_never_used(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "run"
    settings = {**SETTINGS, "save_total_limit": None}
    first = train(tiny_cls_config(tiny_files, out, **settings))
    reference = tmp_path / "adapter"
    (out / "adapter").rename(reference)
    (out / "metrics.json").unlink()  # as if killed after the last checkpoint
    assert [p.name for p in ckpt.checkpoints(out)] == [f"checkpoint-{s}" for s in (2, 4, 6)]
    assert all(ckpt.problem(p) is None for p in ckpt.checkpoints(out))

    # every kind of damage to any file of a checkpoint is found (a copy is damaged each time)
    source = out / "checkpoint-6"
    names = sorted(p.name for p in source.iterdir() if p.is_file() and p.name != ckpt.MARKER)
    assert {"adapter_model.safetensors", "optimizer.pt", "rng_state.pth"} <= set(names)
    expected = {
        "truncate": "bytes, its marker says",
        "flip": "does not match its sha256",
        "empty": "bytes, its marker says",
        "delete": "is missing",
    }
    for name in [*names, ckpt.MARKER]:
        for how, why in expected.items():
            copy = tmp_path / "copies" / f"{name}-{how}" / "checkpoint-6"
            shutil.copytree(source, copy)
            _damage(copy / name, how)
            found = ckpt.problem(copy)
            assert found is not None, (name, how)
            if name == ckpt.MARKER:
                assert ckpt.MARKER in found
            else:
                assert found.startswith(name) and why in found, found
            with pytest.raises(ValueError, match="cannot resume from it"):
                ckpt.resolve_resume(str(copy), out)

    # resume auto: the newest checkpoint that verifies, the skipped ones said with the reason
    _damage(out / "checkpoint-6" / "optimizer.pt", "truncate")
    _damage(out / "checkpoint-4" / "trainer_state.json", "empty")
    with caplog.at_level(logging.WARNING, logger="loraplus"):
        resumed = train(tiny_cls_config(tiny_files, out, **settings, resume="auto"))
    assert "Skipped checkpoint-6: optimizer.pt has" in caplog.text
    assert "Skipped checkpoint-4: trainer_state.json has 0 bytes" in caplog.text
    assert resumed.final["steps"] == 6 == first.final["steps"]
    _assert_same_adapter(reference, out / "adapter")  # from checkpoint-2, as if never stopped
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-2")
    assert ckpt.problem(out / "checkpoint-6") is None  # rewritten whole by the resumed run

    # nothing verifies: refused (exit 2), never a fresh run that mixes into the folder
    (out / "metrics.json").unlink()
    for step in (2, 4, 6):
        _damage(out / f"checkpoint-{step}" / "adapter_model.safetensors", "flip")
    args = _flags(tiny_files, out, resume="auto")
    assert main(["train", *args]) == 2
    assert ckpt.resolve_resume(None, out) is None
    with pytest.raises(ValueError, match=r"no checkpoint in .* verifies \(checkpoint-6: adapter"):
        ckpt.resolve_resume("auto", out)


def test_resume_refuses_what_cannot_resume_and_never_replaces_a_finished_run(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "run"
    settings = {**SETTINGS, "max_steps": 4, "save_total_limit": None}
    train(tiny_cls_config(tiny_files, out, **settings))
    files = {p.name: p.read_bytes() for p in (out / "metrics.json", out / "curves.png")}
    adapter = (out / "adapter" / "adapter_model.safetensors").read_bytes()

    def unchanged() -> bool:
        now = {name: (out / name).read_bytes() for name in files}
        return now == files and (out / "adapter/adapter_model.safetensors").read_bytes() == adapter

    # the same settings: a no-op that says so (exit 0), whatever flags change no number
    flags = _flags(tiny_files, out, **settings, resume="auto")
    with caplog.at_level(logging.WARNING, logger="loraplus"):
        assert main(["train", *flags]) == 0
    assert "finished at step 4: nothing to resume" in caplog.text
    assert unchanged() and not (out / "checkpoint-5").exists()
    # other settings: refused (exit 2), the finished run kept
    for key, value, shown in (("lr", "0.002", "lr 0.001 -> 0.002"), ("seed", "3", "seed 0 -> 3")):
        capsys.readouterr()
        assert main(["train", *flags, f"--{key}", value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --output-dir") and err.count("\n") == 0, err
        assert f"finished run with other settings ({shown})" in err and "--overwrite" in err
        assert unchanged()

    # killed after its last checkpoint: resume writes the outputs, never trains past max_steps
    for name in ("metrics.json", "adapter"):
        shutil.rmtree(out / name) if name == "adapter" else (out / name).unlink()
    for _ in range(2):
        again = train(tiny_cls_config(tiny_files, out, **settings, resume="auto"))
        assert again.final["steps"] == 4
        assert [p.name for p in ckpt.checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
        assert (out / "adapter/adapter_model.safetensors").read_bytes() == adapter
        (out / "metrics.json").unlink()

    # what a checkpoint cannot resume with: refused before any model loads, naming both values
    relabelled = tmp_path / "relabelled.csv"
    relabelled.write_text(tiny_files["cls"].read_text().replace(",pos", ",good"))
    refused = {
        "rank": ({"rank": 2}, "trained with rank 4, this run has 2"),
        "targets": ({"target_modules": ["query"]}, "target_modules None, this run has ['query']"),
        "model": ({"model": str(tiny_files["llama"])}, "trained with model '"),
        "labels": ({"data": str(relabelled)}, "label set ['neg', 'pos'], this run has ['good',"),
        "auto": ({"ratio": "auto"}, "trained with ratio 16.0, this run has 'auto'"),
        "steps": ({"max_steps": 2}, "checkpoint-4 is at step 4, past --max-steps 2"),
    }
    for name, (change, message) in refused.items():
        cfg = tiny_cls_config(tiny_files, out, **{**settings, **change, "resume": "auto"})
        with pytest.raises(ValueError, match=re.escape(message)):
            train(cfg)
        assert not (out / "metrics.json").exists(), name
    # fewer epochs than the checkpoint trained (the total known only to the Trainer): refused
    fewer = {**settings, "max_steps": -1, "epochs": 0.1, "resume": "auto"}
    with pytest.raises(ValueError, match=r"checkpoint is at step 4, past this run's 2 steps"):
        train(tiny_cls_config(tiny_files, out, **fewer))
    # the same model named another way (a trailing slash, a relative path) is the same model
    now = tiny_cls_config(tiny_files, out, **settings).to_dict()
    for name in (f"{tiny_files['bert']}/", os.path.relpath(tiny_files["bert"])):
        ckpt.check_compatible(out / "checkpoint-4", {**now, "model": name}, ["neg", "pos"], 4)
    # a setting added since a run was saved counts at its default: no change to warn about
    assert ckpt.config_changes({k: v for k, v in now.items() if k != "rslora"}, now) == []
    capsys.readouterr()
    assert main(["train", *_flags(tiny_files, out, **settings, resume="auto"), "--rank", "2"]) == 2
    assert "cannot resume with another rank" in capsys.readouterr().err
