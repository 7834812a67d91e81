"""The test phases in the process start clock, so a leaked process's start names its phase.

Each test's span costs one clock read at each end; the phases inside it come from
pytest's own reported durations, read only when a leak needs them. See
docs/how-it-works/attribution.md ("The phase").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

import pytest

from pytest_leanhost.core.procfs import boot_clock

# The explanation's module loads only when a leak needs the spans.
if TYPE_CHECKING:
    from pytest_leanhost.core.detail import Phase, PhaseSpan

__all__ = ["PhaseClock", "PhaseHooks", "reported_durations", "start_clock"]

#: Each test's phase durations as pytest reported them: node id -> phase -> seconds.
Durations = Mapping[str, Mapping[str, float]]

_PHASES = ("setup", "call", "teardown")


def start_clock() -> Callable[[], float]:
    """Now in the process start clock, in seconds (what a ``PhaseSpan`` holds).

    :data:`~pytest_leanhost.core.procfs.boot_clock`: ``CLOCK_BOOTTIME`` on Linux,
    where start ticks count from boot; elsewhere the wall clock, as psutil's create
    times are.
    """
    return boot_clock


def reported_durations(config: pytest.Config) -> dict[str, dict[str, float]]:
    """The duration of every test phase pytest reported so far, and when each ended.

    From the terminal reporter's ``stats``: ``{"setup": seconds, ...}`` and, where
    the report has its wall-clock ``stop`` (pytest 7.3 on), ``"setup_stop"`` in the
    process start clock. A test run again (a rerun plugin) keeps its last run's.
    """
    import time

    reporter = config.pluginmanager.get_plugin("terminalreporter")
    durations: dict[str, dict[str, float]] = {}
    # One offset from the wall clock to the start clock, read now: pytest stamps its
    # reports with the wall clock; a process's start tick counts in the boot clock.
    offset = boot_clock() - time.time()
    for reports in getattr(reporter, "stats", {}).values():
        for report in reports:
            when = getattr(report, "when", None)
            duration = getattr(report, "duration", None)
            if when in _PHASES and isinstance(duration, (int, float)):
                phases = durations.setdefault(report.nodeid, {})
                phases[when] = float(duration)
                stop = getattr(report, "stop", None)
                if isinstance(stop, (int, float)) and stop > 0:
                    phases[f"{when}_stop"] = float(stop) + offset
    return durations


class PhaseClock:
    """Times each test's span; the phases inside it are worked out when asked."""

    def __init__(self) -> None:
        self._now = start_clock()
        #: (node id, "setup", "call", "teardown" or "end", when), in the order they
        #: happened; "call" and "teardown" only when :class:`PhaseHooks` time them.
        self._marks: list[tuple[str, Phase | Literal["end"], float]] = []
        #: The test between ``begin`` and ``end`` (the hooks mark it without asking
        #: the item: a node id is a property there).
        self.running: str | None = None
        #: How many tests began.
        self.tests = 0
        #: When the running test's teardown began, where a hook saw it (the per-test check).
        self._teardown_at: tuple[str, float] | None = None

    def begin(self, nodeid: str) -> float:
        """A test begins (the session's ``logstart``, before any fixture); returns the time."""
        now = self._now()
        self._marks.append((nodeid, "setup", now))
        self.running = nodeid
        self.tests += 1
        return now

    def mark(self, phase: Phase) -> None:
        """The running test's ``phase`` begins now (:class:`PhaseHooks` only)."""
        if self.running is not None:
            self._marks.append((self.running, phase, self._now()))

    def teardown_begins(self, nodeid: str) -> None:
        """The running test's teardown begins now: its call ended before (per-test check)."""
        self._teardown_at = (nodeid, self._now())

    def end(self, nodeid: str) -> float:
        """The test's teardown ended (the session's ``logfinish``); returns the time."""
        now = self._now()
        self._marks.append((nodeid, "end", now))
        self.running = None
        return now

    def spans(self, durations: Durations, *, until: float | None = None) -> list[PhaseSpan]:
        """Every phase so far, sorted by start; the running test's up to ``until`` (else now).

        A test whose phases were timed by hooks keeps those times; the others are
        split by ``durations`` (:func:`reported_durations`).
        """
        from pytest_leanhost.core.detail import PhaseSpan

        spans: list[PhaseSpan] = []
        marks = self._marks
        for index, (nodeid, phase, start) in enumerate(marks):
            if phase == "end":
                continue
            following = marks[index + 1] if index + 1 < len(marks) else None
            if following is not None and following[0] == nodeid:
                stop, timed = following[2], following[1] != "end" or phase != "setup"
            elif nodeid == self.running:
                stop, timed = self._now() if until is None else until, phase != "setup"
            else:
                continue
            if timed:
                spans.append(PhaseSpan(nodeid, phase, start, stop))
            else:
                closed = following is not None
                teardown = self._teardown_at
                began = teardown[1] if teardown is not None and teardown[0] == nodeid else None
                spans.extend(_split(nodeid, start, stop, durations.get(nodeid, {}), closed, began))
        return spans


def _split(
    nodeid: str,
    begin: float,
    end: float,
    durations: Mapping[str, float],
    closed: bool,
    teardown_began: float | None = None,
) -> list[PhaseSpan]:
    """One test's span cut into its phases by the durations pytest reported.

    Setup runs from the span's start for its duration; teardown back from the
    span's end for its (a span still open, in its teardown, has no teardown
    report yet: the call ends after its duration); the call is what lies
    between. The gaps between phases (pytest making and logging the reports)
    fall to the call: microseconds, against a start tick of ten milliseconds.
    A phase pytest did not report leaves its time to the phase before it. A
    span still in its teardown ends its call where the teardown was seen to
    begin (``teardown_began``), so the gaps before it stay the call's however
    slow the machine. Where pytest stamped when a phase ended (``*_stop``), that
    is where it ends: on a loaded machine, the time from the span's start to the
    setup's own start is no longer taken from the setup's end.
    """
    from pytest_leanhost.core.detail import PhaseSpan

    if "setup_stop" in durations:  # where the setup ended, as pytest stamped it
        setup_end = min(end, max(begin, durations["setup_stop"]))
    else:
        setup_end = min(end, begin + durations.get("setup", end - begin))
    if "call" not in durations:
        return [PhaseSpan(nodeid, "setup", begin, setup_end), *_teardown(nodeid, setup_end, end)]
    if "call_stop" in durations:
        call_end = min(end, max(setup_end, durations["call_stop"]))
    elif closed and "teardown" in durations:
        call_end = max(setup_end, end - durations["teardown"])
    elif closed:
        call_end = end
    elif teardown_began is not None:
        call_end = min(end, max(setup_end, teardown_began))
    else:
        call_end = min(end, setup_end + durations["call"])
    return [
        PhaseSpan(nodeid, "setup", begin, setup_end),
        PhaseSpan(nodeid, "call", setup_end, call_end),
        *_teardown(nodeid, call_end, end),
    ]


def _teardown(nodeid: str, start: float, end: float) -> list[PhaseSpan]:
    from pytest_leanhost.core.detail import PhaseSpan

    return [PhaseSpan(nodeid, "teardown", start, end)] if end > start else []


class PhaseHooks:
    """Times the call and the teardown where no terminal reporter keeps pytest's reports."""

    def __init__(self, clock: PhaseClock) -> None:
        self._clock = clock

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        """Setup ended, the call (the test body) begins."""
        self._clock.mark("call")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        """The call ended (or was skipped), teardown begins."""
        self._clock.mark("teardown")
