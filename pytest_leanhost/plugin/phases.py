"""The test phases in the process start clock, so a leaked process's start names its phase.

Three hook wrappers (setup, call, teardown) note when each phase began and
ended in ``CLOCK_BOOTTIME`` seconds on Linux, the clock of a process's start
tick; that is two clock reads per phase. A process whose start tick falls in
no test phase started in a session-scoped fixture, collection or another hook
(``session``).
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from pytest_leanhost.core.explain import Phase, PhaseSpan, start_clock

__all__ = ["PhaseClock"]


class PhaseClock:
    """Times every setup, call and teardown of this pytest process."""

    def __init__(self) -> None:
        self._now = start_clock()
        self._spans: list[PhaseSpan] = []

    @property
    def spans(self) -> list[PhaseSpan]:
        """Every phase timed so far, in the order they ran."""
        return list(self._spans)

    def _timed(self, item: pytest.Item, phase: Phase) -> Generator[None, object, object]:
        start = self._now()
        try:
            return (yield)
        finally:
            self._spans.append(PhaseSpan(item.nodeid, phase, start, self._now()))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, object, object]:
        """Time the setup phase (fixtures being set up)."""
        return (yield from self._timed(item, "setup"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        """Time the call phase (the test body)."""
        return (yield from self._timed(item, "call"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        """Time the teardown phase (fixtures being torn down)."""
        return (yield from self._timed(item, "teardown"))
