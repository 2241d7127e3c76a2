"""One run per output folder: an exclusive lock, taken before the run writes anything.

The lock is `fcntl.flock` on `<output_dir>/.loraplus.lock`, which holds the holder's pid, host and
start time. The kernel drops the lock when its process dies, however it dies, so a second run
into a folder in use stops at once (naming the holder), while a folder whose run was killed is
taken over (saying whose lock it was). Only the main process of a distributed run takes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run per folder is then up to the user
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".loraplus.lock"
_HELD: set[Path] = set()  # the lock files this process holds
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")  # set by torchrun / accelerate / MPI


def is_main_launch() -> bool:
    """True unless the launcher made this process a rank other than 0."""
    return all(os.environ.get(k, "0") in ("0", "") for k in _RANK_VARS)


def _holder(fd: int) -> str:
    """What the lock file says about its holder ("" when empty)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace").strip()


def holder(output_dir: Path) -> str | None:
    """Who holds `output_dir`'s lock now (None: nobody), without taking it."""
    path = output_dir / LOCK_FILE
    if fcntl is None or not path.is_file() or path.resolve() in _HELD:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd) or "a process that has not written its name yet"
    else:
        return None
    finally:
        os.close(fd)


def in_use(output_dir: Path, holder: str) -> ValueError:
    """The error for a folder another run holds."""
    return ValueError(
        f"--output-dir {output_dir} is in use by another run ({holder}): wait for it to end, or "
        "pass another --output-dir."
    )


def _flock(fd: int, tries: int = 5) -> bool:
    """Take the exclusive lock on `fd` without waiting for a holder; a few quick tries, since
    `holder()` in another process may hold a shared lock for an instant while it looks."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < tries - 1:
                time.sleep(0.05)
    return False


def _open_locked(output_dir: Path, path: Path) -> int:
    """An fd of `path` holding its flock. The lock file is unlinked on release, so a lock taken
    on a file that was unlinked meanwhile is dropped and taken again on the new file."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(
                f"--output-dir {output_dir}: cannot write its lock file ({err.strerror}); pass a "
                "folder you can write to."
            ) from None
        if not _flock(fd):
            name = _holder(fd) or "a process that has not written its name yet"
            os.close(fd)
            raise in_use(output_dir, name)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


def _created(output_dir: Path) -> list[Path]:
    """The folders that making `output_dir` would create, deepest first."""
    missing = []
    for folder in (output_dir, *output_dir.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


@contextlib.contextmanager
def run_lock(output_dir: Path, *, take: bool = True) -> Iterator[None]:
    """Hold `output_dir`'s lock for the block; ValueError naming the holder when another live
    process has it. `take=False` (a non-main process of a distributed run) holds nothing.
    Released cleanly, the lock file is removed, and so are the folders it made if still empty:
    a run refused for bad input leaves nothing behind."""
    if not take or fcntl is None:
        yield
        return
    path = output_dir / LOCK_FILE
    created = _created(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--output-dir {output_dir}: cannot create it ({err.strerror}); pass a folder you "
            "can write to."
        ) from None
    try:
        fd = _open_locked(output_dir, path)
    except ValueError:
        _remove_empty(created)
        raise
    try:
        try:
            stale = _holder(fd)
            if stale:
                log.warning("Took over %s: its holder (%s) is gone.", path, stale)
            os.ftruncate(fd, 0)
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            me = f"pid {os.getpid()} on {socket.gethostname()} since {started}\n"
            os.pwrite(fd, me.encode(), 0)
            _HELD.add(path.resolve())
            yield
        finally:
            _HELD.discard(path.resolve())
            path.unlink(missing_ok=True)  # released cleanly: nothing for the next run to take
            os.close(fd)  # closing drops the flock
    finally:
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove these folders, deepest first, where they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
