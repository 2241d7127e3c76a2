"""Complete checkpoints only: the Trainer writes into a staging folder, renamed when complete.

A checkpoint folder `checkpoint-<step>` in the output folder is always complete (adapter, optimizer
and scheduler state with the LoRA+ groups, RNG states, trainer state with the data position, and
`loraplus_checkpoint.json` with the resolved config): the Trainer writes it under
`.staging/`, and the main process renames it into place after every rank has written its part.
A kill at any moment leaves either the previous set of checkpoints or the new one, never half.

The marker also lists every file of the checkpoint with its size and sha256, so a checkpoint
damaged afterwards (a truncated or missing file, flipped bytes) is found before it is used:
`--resume auto` takes the newest checkpoint that verifies and says which it skipped and why.
Settings a checkpoint cannot resume with (another model, rank, target set, label set, ...) are
refused before anything loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from loraplus._io import write_json

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
STAGING = ".staging"
MARKER = "loraplus_checkpoint.json"  # written last into the staging folder: the resolved config
_STEP = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoints in `output_dir`, oldest first (by step)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found) if (p / MARKER).is_file()]


def _sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under `folder` but the marker: {relative path: {"size", "sha256"}}."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    return {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in files
    }


def _marker(checkpoint: Path) -> dict[str, Any]:
    """The marker's content; ValueError saying what is wrong with it."""
    path = checkpoint / MARKER
    if not path.is_file():
        raise ValueError(f"it has no {MARKER} (not a complete loraplus checkpoint)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"its {MARKER} cannot be read ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ValueError(f"its {MARKER} lists no files to verify (damaged, or an older loraplus)")
    return data


def problem(checkpoint: str | os.PathLike[str]) -> str | None:
    """Why `checkpoint` cannot be used (a missing, resized or changed file), or None if it
    verifies against the sizes and sha256 sums in its marker."""
    folder = Path(checkpoint)
    try:
        files = _marker(folder)["files"]
    except ValueError as err:
        return str(err)
    for name, expected in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected.get("size"):
            return f"{name} has {size} bytes, its marker says {expected.get('size')} (truncated?)"
        if _sha256(path) != expected.get("sha256"):
            return f"{name} does not match its sha256 (the bytes changed)"
    return None


def resolve_resume(resume: str | None, output_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint to resume from: None (fresh run), the newest one that verifies ("auto",
    saying which it skipped and why) or a given one (ValueError unless it verifies)."""
    if resume is None:  # a folder with another run's checkpoints was refused by train.checks
        return None
    if resume == "auto":
        skipped: list[str] = []
        for candidate in reversed(checkpoints(output_dir)):
            why = problem(candidate)
            if why is None:
                for line in skipped:
                    log.warning("Skipped %s; resuming from %s.", line, candidate.name)
                return candidate
            skipped.append(f"{candidate.name}: {why}")
        if skipped:
            raise ValueError(
                f"--resume auto: no checkpoint in {output_dir} verifies ({'; '.join(skipped)}): "
                "pass --overwrite without --resume to start over, or another --output-dir."
            )
        return None
    path = Path(resume).expanduser()
    why = problem(path)
    if why is not None:
        raise ValueError(
            f"--resume {resume}: cannot resume from it: {why}. Pass a {PREFIX}<step> folder "
            "written by --save-steps that verifies, or --resume auto (the newest that does)."
        )
    return path


def saved_config(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The resolved config a checkpoint was written with."""
    return dict(_marker(Path(checkpoint)).get("config", {}))


# Settings a checkpoint cannot resume with: its tensors would not load (model, rank, targets,
# task, head, optimizer state layout) or would mean something else (scale, PiSSA's base).
INCOMPATIBLE = (
    "model",
    "task",
    "rank",
    "target_modules",
    "alpha",
    "rslora",
    "init",
    "lora_optimizer",
    "optimizer",
    "width_aware",
)


def _model_key(name: Any) -> str:
    """What identifies a model: a built-in's name (any alias), a folder's real path, a hub id."""
    from loraplus.zoo import find_model

    text = str(name)
    spec = find_model(text)
    if spec is not None:
        return f"builtin:{spec.name}"
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def check_compatible(
    checkpoint: Path, now: dict[str, Any], label_names: list[str], max_steps: int
) -> None:
    """ValueError naming the setting and both values where this run cannot resume `checkpoint`:
    an INCOMPATIBLE setting, ratio auto against a number, another label set, or a checkpoint
    already past max_steps."""
    data = _marker(checkpoint)
    saved = dict(data.get("config", {}))
    same = {"model": _model_key(saved.get("model")) == _model_key(now.get("model"))}
    pairs = [(k, saved.get(k), now.get(k)) for k in INCOMPATIBLE if k in saved and not same.get(k)]
    auto = [saved.get("ratio") == "auto", now.get("ratio") == "auto"]
    if auto[0] != auto[1]:
        pairs.append(("ratio", saved.get("ratio"), now.get("ratio")))
    if "label_names" in data and data["label_names"] != label_names:
        pairs.append(("label set", data["label_names"], label_names))
    for key, before, after in pairs:
        if before != after:
            raise ValueError(
                f"--resume: {checkpoint.name} was trained with {key} {before!r}, this run has "
                f"{after!r}; a checkpoint cannot resume with another {key}. Use {key} "
                f"{before!r}, or start over without --resume (--overwrite, or another "
                "--output-dir)."
            )
    step = int(data.get("global_step", 0))
    if max_steps > 0 and step > max_steps:
        raise ValueError(
            f"--resume: {checkpoint.name} is at step {step}, past --max-steps {max_steps}: "
            f"pass --max-steps {step} or more, or --resume an earlier checkpoint."
        )


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
        "overwrite",
    }
    saved = {**_defaults(), **saved}  # a setting added since that run had its default there
    keys = sorted((set(saved) | set(now)) - ignore)
    return [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def _defaults() -> dict[str, Any]:
    """TrainConfig's defaults, as to_dict() writes them."""
    import dataclasses

    from loraplus.train.config import TrainConfig

    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def clean_partial(output_dir: str | os.PathLike[str]) -> None:
    """Remove what a killed run left half-written: the staging folder and atomic-write temps."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    shutil.rmtree(folder / STAGING, ignore_errors=True)
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


def write_marker(
    folder: Path,
    config: dict[str, Any],
    state: Any,
    global_batch: int,
    label_names: list[str] | None = None,
) -> None:
    """The completion marker (written last): the resolved config, the label set, the data
    position, and every file's size and sha256."""
    write_json(
        folder / MARKER,
        {
            "config": config,
            "label_names": list(label_names or []),
            "files": manifest(folder),
            "global_step": int(state.global_step),
            "epoch": float(state.epoch or 0.0),
            "samples_seen": int(state.global_step) * global_batch,
        },
    )
