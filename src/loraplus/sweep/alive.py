"""Is the worker of a RUNNING trial still alive? A lock file answers at once on the same machine.

Each worker process holds an exclusive `flock` on its own file in <out_dir>/.workers for as long as
it lives (the kernel drops the lock when the process dies, however it dies). A trial records the
file (user attr "lock"); a process that can take that lock knows the worker is gone. Trials of
other machines (no such file here) are left to Optuna's heartbeat.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path
from typing import IO

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: only the heartbeat finds dead workers
    fcntl = None  # type: ignore[assignment]


class WorkerLock:
    """This process's lock file, taken on first use and held until the process ends."""

    def __init__(self, out_dir: Path) -> None:
        self.folder = out_dir / ".workers"
        self._handle: IO[bytes] | None = None
        self.path: Path | None = None

    def hold(self) -> str | None:
        """Take the lock (once); its path, None where file locks are not available."""
        if fcntl is None:
            return None
        if self._handle is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            taking = self.folder / f"{name}.new"  # locked before it is visible as *.lock
            self._handle = taking.open("wb")
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.path = taking.rename(self.folder / f"{name}.lock")
        return str(self.path)


def _gone(path: Path) -> bool:
    """True when the lock file exists here and nobody holds it (its worker died); removes it."""
    if fcntl is None or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
    except OSError:  # held: the worker is alive
        return False
    return True


def fail_dead_workers(study: optuna.Study, out_dir: Path) -> list[int]:
    """Mark RUNNING trials whose worker on this machine is gone as failed (status crashed);
    remove lock files of finished workers. Return the numbers of the trials failed."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lock = t.user_attrs.get("lock")
        if isinstance(lock, str) and _gone(Path(lock)):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError):  # another process got there first
                continue
            log.warning("Trial %d: its worker is gone; its cell will be re-run.", t.number)
            failed.append(t.number)
    folder = out_dir / ".workers"
    if folder.is_dir():
        for path in folder.glob("*.lock"):
            _gone(path)
    return failed
