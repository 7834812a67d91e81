"""Small helpers over psutil for processes this project started itself.

Every helper takes a :class:`psutil.Process` captured while the process was known to be
ours: psutil remembers its create time, so a PID that was reused by another process is
never mistaken for it, and psutil refuses to signal such a PID. Nothing here looks a
process up by name.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Literal

import psutil

__all__ = ["StopOutcome", "is_gone", "stop_exact", "wait_gone"]

#: How :func:`stop_exact` ended a process.
StopOutcome = Literal["gone", "terminated", "killed"]

_FIRST_DELAY = 0.001
_MAX_DELAY = 0.05


def is_gone(proc: psutil.Process) -> bool:
    """Whether ``proc`` no longer runs: exited, its PID reused, or a zombie.

    A zombie has exited; it only waits for its parent to reap it, and ``kill -0``
    would still succeed on it, so it counts as gone.
    """
    try:
        # is_running() compares the create time: False for a reused PID.
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:
        return False  # it exists, we just may not look at it


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for every process to be gone; return those still alive.

    Polls with a short backoff (1 ms growing to 50 ms) rather than sleeping idly, and
    treats a zombie as gone (``psutil.wait_procs`` would wait its full timeout for a
    zombie that is not the caller's own child).
    """
    alive = [proc for proc in procs if not is_gone(proc)]
    deadline = time.monotonic() + timeout
    delay = _FIRST_DELAY
    while alive:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_DELAY)
        alive = [proc for proc in alive if not is_gone(proc)]
    return alive


def stop_exact(proc: psutil.Process, timeout: float) -> StopOutcome:
    """Stop exactly ``proc``: SIGTERM, wait ``timeout``, then SIGKILL and wait again.

    Returns ``"gone"`` when it was already gone (no signal sent), ``"terminated"`` when
    SIGTERM ended it, ``"killed"`` when SIGKILL was needed. psutil checks the create
    time before each signal, so a reused PID is never signalled.
    """
    if is_gone(proc):
        return "gone"
    try:
        proc.terminate()
    except psutil.NoSuchProcess:
        return "gone"
    if not wait_gone([proc], timeout):
        return "terminated"
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        return "terminated"
    wait_gone([proc], max(timeout, 1.0))
    return "killed"
