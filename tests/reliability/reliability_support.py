"""Helpers of the reliability tests: toy repositories, commands in forked processes, SIGKILL, counts.

Commands run in a *forked* copy of the test process (`fork_command`): a real, separate process that
can be killed with SIGKILL, which starts its work at once because everything is already imported
(a fresh interpreter would spend its first 1.5 s importing, and most random kills would land there).
The test process must hold no open database connection while it forks (SQLite forbids using one
across ``fork``), so tests open a `Butler` only between forks (`opened`).

Importing this module puts ``tests/graph`` on ``sys.path`` for the toy tasks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import psutil

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "graph") not in sys.path:
    sys.path.insert(0, str(TESTS / "graph"))

from test_execute import make_pipeline, make_repo  # noqa: E402

from butler import Butler  # noqa: E402
from butler.cli import cli as butler_cli  # noqa: E402
from butler.datastore import INLINE_PATH  # noqa: E402
from graph.cli import cli as pipetask_cli  # noqa: E402

__all__ = [
    "butler_cli",
    "count_outputs",
    "fork_command",
    "kill_after",
    "make_pipeline",
    "make_repo",
    "opened",
    "pipetask_cli",
    "run_files",
    "wait_dead",
    "wait_exit",
]


def fork_command(command: click.Command, args: Sequence[str], log: Path) -> int:
    """Run a click command (``pipetask run ...``) in a forked child process; return its pid.

    The child's standard output and error go to ``log``; its exit code is the command's (1 for a
    user error, 3 for an unexpected exception, whose traceback is logged).
    """
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child exits without closing
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        result = command.main(list(args), prog_name=command.name, standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait_exit(pid: int) -> int:
    """Wait for a child; return its exit code, or minus the signal that killed it."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def kill_after(pid: int, seconds: float) -> tuple[int, list[psutil.Process]]:
    """Sleep, then SIGKILL the process ``pid`` alone (not its worker processes).

    Returns its exit code (minus SIGKILL when it was still running) and its descendants at the time
    of the kill, which must then exit by themselves.
    """
    time.sleep(seconds)
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return wait_exit(pid), descendants


def wait_dead(processes: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until the processes have exited (zombies count: orphans are reaped by init, slowly);
    return those still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


@contextlib.contextmanager
def opened(root: Path, *, writeable: bool = False) -> Iterator[Butler]:
    """A Butler of ``root``, closed (no database connection left) at the end of the block."""
    butler = Butler(root, writeable=writeable)
    try:
        yield butler
    finally:
        butler.close()


def count_outputs(butler: Butler, run: str, names: Sequence[str]) -> dict[str, Counter]:
    """Dataset type -> Counter of the data IDs of its datasets in ``run`` (duplicates would count 2)."""
    return {
        name: Counter(ref.data_id for ref in butler.registry.query_datasets(name, [run], find_first=False, explain=False))
        for name in names
    }


def run_files(butler: Butler, run: str) -> tuple[set[str], set[str]]:
    """The files under a run's directory, and the paths the registry records for the run's datasets."""
    on_disk = {path for path in butler.datastore.walk_files() if path.startswith(f"{run}/")}
    refs = butler.registry.refs_in_runs([run])
    records = butler.registry.get_datastore_records([ref.id for ref in refs]).values()
    recorded = {record["path"] for record in records if record["path"] != INLINE_PATH}
    return on_disk, recorded
