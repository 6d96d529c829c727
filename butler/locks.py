"""Writer locks of RUN collections: one process at a time writes the files of a run.

Executors write output files at paths rendered from the run name and *replace* files left by killed
attempts, so two processes executing into one run would overwrite (and, on a failed registration,
delete) each other's files.  `run_lock` makes the second one fail at once with `RunLockedError`.

A lock is an exclusive ``flock`` on ``<root>/.locks/run-<sha256 of the name>.lock`` (the file names the
holder, for the error message).  The kernel releases it when every process holding the open file
exits -- killed ones included, so a lock is never stale; forked worker processes inherit it and keep
the run locked until they too are gone.  Lock files are left in place (deleting one would race with a
process about to lock it); they are not datasets (`Butler.verify` skips ``.locks/``).  On NFS, Linux
emulates ``flock`` with NFS byte-range locks, which work across hosts.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import RunLockedError

__all__ = ["LOCK_DIRECTORY", "busy_runs", "run_lock"]

#: Directory of the lock files, relative to the repository root.
LOCK_DIRECTORY = ".locks"
# Seconds `run_lock` retries before giving up: outlasts `busy_runs` probing the lock.
_PATIENCE = 0.5


def _lock_path(root: Path, run: str) -> Path:
    return root / LOCK_DIRECTORY / f"run-{hashlib.sha256(run.encode()).hexdigest()[:32]}.lock"


def _holder(fd: int) -> dict[str, object]:
    """What the holder wrote into a lock file (empty if unreadable)."""
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "another process"
    return f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"


@contextlib.contextmanager
def run_lock(root: str | Path, run: str) -> Iterator[None]:
    """Hold the writer lock of a RUN collection for the duration of a block.

    Parameters
    ----------
    root : `str` or `pathlib.Path`
        The repository root.
    run : `str`
        The RUN collection's name.

    Raises
    ------
    RunLockedError
        If another process holds the lock (it is waited for half a second only).
    """
    path = _lock_path(Path(root), run)
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + _PATIENCE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunLockedError(
                        f"run {run!r} is being written by {_describe(_holder(fd))}. Wait for it to finish, or write "
                        "to another output run; the lock goes when that process (and its workers) exit, even if "
                        "killed."
                    ) from None
                time.sleep(0.05)
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"run": run, "pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def busy_runs(root: str | Path) -> list[str]:
    """Descriptions of the runs whose lock some process holds now (``"'run' by process 12 on host..."``).

    Parameters
    ----------
    root : `str` or `pathlib.Path`
        The repository root.
    """
    busy = []
    directory = Path(root) / LOCK_DIRECTORY
    for path in sorted(directory.glob("run-*.lock")) if directory.is_dir() else []:
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                busy.append(f"{holder.get('run', path.name)!r} by {_describe(holder)}")
        finally:
            os.close(fd)
    return busy
