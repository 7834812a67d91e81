"""Waiting for a condition with a short backoff, and the one shutdown ladder.

Standard library only: the reference server stops its own workers with the same
ladder that the fixtures, the session cleanup and the tests use. The ladder knows
nothing of PIDs; it works over :class:`Stoppable`, something that can be sent
SIGTERM and SIGKILL and asked whether it is gone. What stands behind it decides
how a signal is made safe: a ``Popen`` the caller holds (an unreaped child keeps
its PID) or a pinned process (create time checked before every signal).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol, TypeVar

__all__ = [
    "Backoff",
    "LadderRung",
    "SignalsByNumber",
    "Stoppable",
    "poll_until",
    "stop_ladder",
    "wait_for",
]

T = TypeVar("T")
S = TypeVar("S", bound="Stoppable")

#: Which step ended a process: it was ``gone`` before the ladder began, the optional
#: ``first`` rung (closing stdin, say) ended it, ``terminate`` (SIGTERM) or ``kill``
#: (SIGKILL) did, or it ``survived`` even SIGKILL for the whole kill timeout.
LadderRung = Literal["gone", "first", "terminate", "kill", "survived"]

_FIRST_DELAY = 0.001
_GROWTH = 1.1
_MAX_DELAY = 0.05


class Backoff:
    """Sleeps 1 ms, then 10 % longer each time, up to 50 ms, never past a deadline.

    The gentle growth keeps the overshoot past the moment a condition came true
    under a tenth of the time waited so far (a doubling backoff could add nearly as
    much again), at the cost of a few more checks.
    """

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self._delay = _FIRST_DELAY

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() >= self.deadline

    def sleep(self) -> None:
        """Sleep the next delay (cut short at the deadline)."""
        time.sleep(max(0.0, min(self._delay, self.deadline - time.monotonic())))
        self._delay = min(self._delay * _GROWTH, _MAX_DELAY)


def poll_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Check ``condition`` with :class:`Backoff` until it holds (True) or ``timeout`` passes."""
    backoff = Backoff(timeout)
    while not condition():
        if backoff.expired():
            return False
        backoff.sleep()
    return True


def wait_for(items: Iterable[T], gone: Callable[[T], bool], timeout: float) -> list[T]:
    """Wait up to ``timeout`` seconds for ``gone`` to hold for every item; return the rest."""
    left = [item for item in items if not gone(item)]

    def all_gone() -> bool:
        left[:] = [item for item in left if not gone(item)]
        return not left

    poll_until(all_gone, timeout)
    return left


class Stoppable(Protocol):
    """Something the ladder can stop: each signal returns False when it was not sent."""

    def terminate(self) -> bool:
        """Send SIGTERM (False: not sent, because it is gone or no longer the same process)."""
        ...

    def kill(self) -> bool:
        """Send SIGKILL (False: not sent)."""
        ...

    def is_gone(self) -> bool:
        """Whether it no longer runs (exited, reaped, a zombie, or its PID reused)."""
        ...


class SignalsByNumber:
    """``terminate`` and ``kill`` for a class that defines how to send one signal safely."""

    def send_signal(self, signum: int) -> bool:
        """Send ``signum``; False when it was not sent (gone, or not the same process)."""
        raise NotImplementedError

    def terminate(self) -> bool:
        """SIGTERM, by :meth:`send_signal`."""
        return self.send_signal(signal.SIGTERM)

    def kill(self) -> bool:
        """SIGKILL, by :meth:`send_signal`."""
        return self.send_signal(signal.SIGKILL)


def stop_ladder(
    procs: Sequence[S],
    timeout: float,
    *,
    first: Callable[[], object] | None = None,
    kill_timeout: float = 5.0,
) -> list[LadderRung]:
    """Stop every process by the contract's ladder; return, per process, the rung that ended it.

    ``first`` (when given) runs once and the processes get ``timeout`` seconds to
    exit; then SIGTERM to those left, ``timeout`` seconds; then SIGKILL to those
    left, ``kill_timeout`` seconds. Each rung goes to all processes at once, so
    stopping many costs the waits of one.
    """
    rungs: dict[int, LadderRung] = {}
    alive = [index for index, proc in enumerate(procs) if not proc.is_gone()]
    steps: list[tuple[LadderRung, Callable[[], object], float]] = []
    if first is not None:
        steps.append(("first", first, timeout))
    steps.append(("terminate", lambda: [procs[index].terminate() for index in alive], timeout))
    steps.append(("kill", lambda: [procs[index].kill() for index in alive], kill_timeout))
    for rung, act, wait in steps:
        if not alive:
            break
        act()
        still = wait_for(alive, lambda index: procs[index].is_gone(), wait)
        rungs.update((index, rung) for index in alive if index not in still)
        alive = still
    rungs.update((index, "survived") for index in alive)
    return [rungs.get(index, "gone") for index in range(len(procs))]
