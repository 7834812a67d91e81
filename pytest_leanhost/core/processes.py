"""The pinned process: a PID plus the create time it had when it was known to be ours.

Everything that asks "is this still the same process?" of a live process asks
:class:`PinnedProcess` (by :func:`~pytest_leanhost.core.identity.same_create_time`,
the one identity), and every signal the host side sends goes through it: the
create time is read again right before each signal, so a PID that now names a
younger process is never signalled. It is a :class:`~pytest_leanhost.stopping.Stoppable`,
so the one shutdown ladder stops it. Nothing here looks a process up by name, and
nothing here reaps: a child's ``Popen`` reaps its own, and a PID that someone else
may wait for is never waited on (no ``waitpid``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TypeVar

import psutil

from pytest_leanhost.core.identity import same_create_time
from pytest_leanhost.stopping import SignalsByNumber, wait_for

__all__ = [
    "PinnedProcess",
    "is_gone",
    "pin",
    "wait_gone",
]

P = TypeVar("P", "psutil.Process", "PinnedProcess")


@dataclasses.dataclass(frozen=True)
class PinnedProcess(SignalsByNumber):
    """A process named by PID and create time; every question and signal checks both."""

    pid: int
    create_time: float

    @classmethod
    def now(cls, pid: int) -> PinnedProcess:
        """Pin what runs as ``pid`` now (a child just started); ``psutil.NoSuchProcess`` if none."""
        return cls(pid, psutil.Process(pid).create_time())

    @classmethod
    def of(cls, proc: psutil.Process) -> PinnedProcess:
        """Pin the process a ``psutil.Process`` was made for (psutil remembers its create time)."""
        return cls(proc.pid, proc.create_time())

    def process(self) -> psutil.Process | None:
        """A psutil handle on this PID if it still names this process (a zombie too), else None."""
        try:
            proc = psutil.Process(self.pid)
            return proc if same_create_time(proc.create_time(), self.create_time) else None
        except psutil.NoSuchProcess:
            return None

    def is_gone(self) -> bool:
        """Whether it no longer runs: exited, its PID reused, or a zombie.

        A zombie has exited and only waits to be reaped (``kill -0`` still succeeds
        on it, and ``psutil.wait_procs`` never sees one that is not the caller's own
        child exit), so it counts as gone.
        """
        proc = self.process()
        if proc is None:
            return True
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied:
            return False  # it exists, we just may not look at it

    def send_signal(self, signum: int) -> bool:
        """Send ``signum`` if the PID still names this process; False when nothing was sent."""
        proc = self.process()  # the create time, checked right before the signal
        if proc is None:
            return False
        try:
            proc.send_signal(signum)
        except psutil.Error:
            return False
        return True

    def children(self, *, recursive: bool = False) -> list[PinnedProcess]:
        """Its live descendants (direct ones unless ``recursive``), each pinned now."""
        proc = self.process()
        if proc is None:
            return []
        try:
            found = proc.children(recursive=recursive)
        except psutil.NoSuchProcess:
            return []
        pinned = []
        for child in found:
            try:
                pinned.append(PinnedProcess.of(child))
            except psutil.NoSuchProcess:
                continue
        return [child for child in pinned if not child.is_gone()]


def pin(proc: psutil.Process | PinnedProcess) -> PinnedProcess | None:
    """``proc`` as a :class:`PinnedProcess`; None if it was gone before its create time was read."""
    if isinstance(proc, PinnedProcess):
        return proc
    try:
        return PinnedProcess.of(proc)
    except psutil.NoSuchProcess:
        return None


def is_gone(proc: psutil.Process | PinnedProcess) -> bool:
    """Whether ``proc`` no longer runs (see :meth:`PinnedProcess.is_gone`)."""
    pinned = pin(proc)
    return pinned is None or pinned.is_gone()


def wait_gone(procs: Iterable[P], timeout: float) -> list[P]:
    """Wait up to ``timeout`` seconds for every process to be gone; return those still alive.

    Polls with :class:`~pytest_leanhost.stopping.Backoff` and counts a zombie as gone.
    """
    return wait_for(procs, is_gone, timeout)
