"""The test phases in the process start clock, so a leaked process's start names its phase.

The clock notes, in ``CLOCK_BOOTTIME`` seconds on Linux (the clock of a
process's start tick), when each test's setup, call and teardown began and when
its protocol finished: one clock read and one list append each. The session's
``logstart`` and ``logfinish`` mark the start of setup and the end (direct
calls, and the lineage takes the same reading); two plain hooks mark the call
and the teardown. The spans
are built only when a leak needs them. A process whose start tick falls in no
test phase started in a session-scoped fixture, collection or another hook
(``session``).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import pytest

# The explanation's module loads only when a leak needs the spans.
if TYPE_CHECKING:
    from pytest_leanhost.core.explain import Phase, PhaseSpan

__all__ = ["PhaseClock", "start_clock"]


def start_clock() -> Callable[[], float]:
    """Now in the process start clock, in seconds (what a ``PhaseSpan`` holds).

    ``CLOCK_BOOTTIME`` on Linux, where start ticks count from boot; elsewhere the
    wall clock, as psutil's create times are.
    """
    if sys.platform.startswith("linux"):
        return functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
    return time.time


class PhaseClock:
    """Times every setup, call and teardown of this pytest process."""

    def __init__(self) -> None:
        self._now = start_clock()
        #: (node id, phase or "end", when), in the order they happened.
        self._marks: list[tuple[str, Phase | Literal["end"], float]] = []
        #: The test between ``begin`` and ``end`` (the hooks mark it without asking
        #: the item: a node id is a property there).
        self.running: str | None = None

    @property
    def spans(self) -> list[PhaseSpan]:
        """Every phase timed so far: each runs from its start to the next mark of its test."""
        from pytest_leanhost.core.explain import PhaseSpan

        spans: list[PhaseSpan] = []
        marks = self._marks
        for index, (nodeid, phase, start) in enumerate(marks):
            if phase == "end" or index + 1 >= len(marks):
                continue
            following = marks[index + 1]
            if following[0] == nodeid:
                spans.append(PhaseSpan(nodeid, phase, start, following[2]))
        return spans

    def begin(self, nodeid: str) -> float:
        """Setup begins (the session's ``logstart``, before any fixture); returns the time."""
        now = self._now()
        self._marks.append((nodeid, "setup", now))
        self.running = nodeid
        return now

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        """Setup ended, the call (the test body) begins."""
        self._marks.append((self.running or item.nodeid, "call", self._now()))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        """The call ended (or was skipped), teardown begins."""
        self._marks.append((self.running or item.nodeid, "teardown", self._now()))

    def end(self, nodeid: str) -> float:
        """The test's teardown ended (the session's ``logfinish``); returns the time."""
        now = self._now()
        self._marks.append((nodeid, "end", now))
        self.running = None
        return now
