"""Per-quantum time limits (``execute_graph(timeout=...)``, ``pipetask run --timeout``).

The limit is a ``SIGALRM`` timer in the process that runs the quantum: when it expires, the signal
handler raises `QuantumTimeoutError` inside the task, which then fails like any task error (with its
log and the reason).  A task that catches and ignores the error is interrupted again every second.
Python delivers signals between bytecodes of the main thread, so native code that never returns
to Python (or a task that blocks ``SIGALRM``) cannot be stopped this way: the process-pool executor
then kills the worker (`KILL_GRACE` seconds after the limit) and replaces it; the serial executor
cannot, so use ``-j N`` for tasks that may hang in native code.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import QuantumTimeoutError

__all__ = ["KILL_GRACE", "check_timeout", "time_limit"]

#: Seconds after its time limit a quantum's pool worker is killed if the quantum has not stopped.
KILL_GRACE = 2.0
# Seconds between repeated interruptions of a quantum that ignored the first one.
_REPEAT = 1.0


def check_timeout(timeout: float | None, *, in_this_thread: bool) -> None:
    """Check a time limit before an execution starts.

    Parameters
    ----------
    timeout : `float` or `None`
        Seconds a quantum may run; `None` for no limit.
    in_this_thread : `bool`
        Whether quanta will run in the calling thread (the serial executor), which must then be the
        main thread: only it receives signals.

    Raises
    ------
    ValueError
        If ``timeout`` is not a positive finite number, or quanta would run with a limit outside the
        main thread.
    """
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}.")
    if in_this_thread and threading.current_thread() is not threading.main_thread():
        raise ValueError(
            "a per-quantum timeout needs the serial executor to run in the main thread (it uses SIGALRM); "
            "call execute_graph from the main thread, or use the pool executor (jobs > 1)."
        )


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise `QuantumTimeoutError` in the block if it runs longer than ``seconds`` (main thread only).

    Parameters
    ----------
    seconds : `float` or `None`
        The limit; `None` for none (the block runs as is).
    what : `str`
        The quantum, for the message (``"quantum addOne {visit: 1, ...}"``).
    """
    if seconds is None:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise QuantumTimeoutError(
            f"{what} ran longer than its time limit of {seconds:g} s and was stopped; raise the limit "
            "(--timeout) if it needs more time."
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, _REPEAT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
