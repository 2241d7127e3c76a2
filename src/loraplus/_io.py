"""Files, one helper per job: atomic writes, and dataclass records read back from JSON.

A file or folder is visible only once it is complete: everything is written to a temporary name
beside the target and moved over it with os.replace, so a crash leaves the old file (or
nothing), never half of a new one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Record = TypeVar("Record", bound=DataclassInstance)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path` for writing; on success it replaces `path` (mode 0644)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with open(fd, mode, encoding=encoding) as handle:
            yield handle
        os.chmod(tmp, 0o644)  # mkstemp makes private files; outputs are read like any other
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    """Write `data` as strict JSON (NaN/inf become null) atomically; return the path."""
    with atomic_file(path) as handle:
        json.dump(finite(data), handle, indent=indent, allow_nan=False)
        handle.write("\n")
    return Path(path)


def atomic_dir(target: str | Path, build: Callable[[Path], Any], replace: bool = True) -> Path:
    """Run build(tmp_dir) and move the folder it fills (or the sub-folder it returns) to `target`.

    replace=True swaps out an existing target; replace=False keeps it (a cache: the first complete
    build wins, and a lost race with another process is not an error).
    """
    target = Path(target)
    if not replace and target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    old = None
    try:
        built = build(tmp)
        built = built if isinstance(built, Path) else tmp
        built.chmod(0o755)  # mkdtemp makes it private
        if replace and target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
        try:
            os.rename(built, target)
        except OSError:
            if replace or not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def from_dict(cls: type[Record], data: Mapping[str, Any], **given: Any) -> Record:
    """The dataclass `cls` from JSON data: the keys that are its fields, then `given`.

    Other keys are ignored, so a record written by another loraplus version still loads.
    """
    names = {f.name for f in dataclasses.fields(cls)} - set(given)
    return cls(**{k: v for k, v in data.items() if k in names}, **given)
