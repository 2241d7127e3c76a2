"""Complete checkpoints only: the Trainer writes into a staging folder, renamed when complete.

A checkpoint folder `checkpoint-<step>` in the output folder is always complete (adapter, optimizer
and scheduler state with the LoRA+ groups, RNG states, trainer state with the data position, and
`loraplus_checkpoint.json` with the resolved config): the Trainer writes it under
`.staging/`, and the main process renames it into place after every rank has written its part.
A kill at any moment leaves either the previous set of checkpoints or the new one, never half.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from loraplus._io import write_json

PREFIX = "checkpoint-"
STAGING = ".staging"
MARKER = "loraplus_checkpoint.json"  # written last into the staging folder: the resolved config
# Test-only: block inside the checkpoint write of this step (after the adapter, before the
# optimizer state), so a test can SIGKILL the process there deterministically.
PAUSE_ENV = "LORAPLUS_TEST_PAUSE_IN_CHECKPOINT"
PAUSED_FILE = ".paused-in-checkpoint"
_STEP = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoints in `output_dir`, oldest first (by step)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found) if (p / MARKER).is_file()]


def resolve_resume(resume: str | None, output_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint to resume from: None (fresh run), the latest one ("auto") or a given one."""
    if resume is None:  # a folder with another run's checkpoints was refused by train.checks
        return None
    if resume == "auto":
        existing = checkpoints(output_dir)
        return existing[-1] if existing else None
    path = Path(resume).expanduser()
    if not (path / MARKER).is_file():
        raise ValueError(
            f"--resume {resume}: not a complete loraplus checkpoint (no {MARKER}); pass a "
            f"{PREFIX}<step> folder written by --save-steps, or --resume auto."
        )
    return path


def saved_config(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The resolved config a checkpoint was written with."""
    data: dict[str, Any] = json.loads((Path(checkpoint) / MARKER).read_text(encoding="utf-8"))
    return dict(data.get("config", {}))


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Settings that differ between a checkpoint's run and this one (where it matters)."""
    ignore = {  # settings that change no number of the training itself
        "resume",
        "output_dir",
        "progress",
        "report_to",
        "save_steps",
        "save_total_limit",
        "divergence_factor",
        "allow_pickle",
        "save_adapter",
        "merge",
        "probe_every",
    }
    keys = sorted((set(saved) | set(now)) - ignore)
    return [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def clean_partial(output_dir: str | os.PathLike[str]) -> None:
    """Remove what a killed run left half-written: the staging folder and atomic-write temps."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    shutil.rmtree(folder / STAGING, ignore_errors=True)
    (folder / PAUSED_FILE).unlink(missing_ok=True)
    for path in folder.glob(".*"):
        if re.match(r"^\.(adapter|merged|metrics\.json|curves\.png)\.", path.name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    for path in folder.glob(f"{PREFIX}*"):  # an old-style checkpoint without its marker
        if _STEP.match(path.name) and not (path / MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)


def publish(staged: Path, output_dir: Path, keep: int | None) -> Path:
    """Rename a complete staged checkpoint into `output_dir`, then keep only the newest `keep`."""
    target = output_dir / staged.name
    old = None
    if target.exists():  # the same step written again (resumed from an older checkpoint)
        old = output_dir / STAGING / f"{staged.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        staged.parent.rmdir()  # the staging folder, when empty
    if keep is not None and keep > 0:
        for stale in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    return target


def write_marker(folder: Path, config: dict[str, Any], state: Any, global_batch: int) -> None:
    """The completion marker: the resolved config and the data position (written last)."""
    write_json(
        folder / MARKER,
        {
            "config": config,
            "global_step": int(state.global_step),
            "epoch": float(state.epoch or 0.0),
            "samples_seen": int(state.global_step) * global_batch,
        },
    )


def maybe_pause(output_dir: Path, step: int) -> None:
    """Test-only: block forever at the checkpoint of step $LORAPLUS_TEST_PAUSE_IN_CHECKPOINT."""
    wanted = os.environ.get(PAUSE_ENV)
    if wanted is None or int(wanted) != step:
        return
    (output_dir / PAUSED_FILE).write_text(str(os.getpid()), encoding="utf-8")
    while True:  # the test SIGKILLs the process here
        time.sleep(1.0)
