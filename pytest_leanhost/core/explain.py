"""What a leaked process is, in a finding: the facts a person needs to act on it.

:func:`explain_findings` takes the findings of a check and gives each finding
about a live process a :class:`ProcessDetail`: its command line, working
directory and age, the test phase it started in (by its start tick against the
phases the plugin timed), its known ancestors up to the pytest process, its
descendants (so a server and its workers read as one leak), and the ways it
escaped (:func:`pytest_leanhost.core.describe.escape_words`). Record-only
findings (a stale or corrupt record) keep ``process=None``. Nothing here
signals a process; a PID whose create time no longer matches is not described.

The data classes are plain (no psutil), so a finding with its detail travels
from an xdist worker to the controller as JSON.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from pytest_leanhost.core.escapes import ESCAPE_WORDS

if TYPE_CHECKING:
    from pytest_leanhost.core.check import CleanupTarget, Finding, ProcessOrigin
    from pytest_leanhost.core.probe import ProcessTable

__all__ = [
    "PHASES",
    "AncestorDetail",
    "DetailShapeError",
    "Phase",
    "PhaseSpan",
    "ProcessDetail",
    "RelativeDetail",
    "explain_findings",
    "phase_of",
]

#: Where a process started: a phase of a test, or outside every test (``session``).
Phase = Literal["setup", "call", "teardown", "session"]
PHASES: tuple[Phase, ...] = ("setup", "call", "teardown", "session")


class DetailShapeError(ValueError):
    """A process detail's JSON form that is not the shape :meth:`ProcessDetail.to_json` writes."""


@dataclasses.dataclass(frozen=True)
class PhaseSpan:
    """One phase of one test, in seconds of the process start clock (``CLOCK_BOOTTIME``)."""

    nodeid: str
    phase: Phase
    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class AncestorDetail:
    """One known ancestor: PID, command line (empty when unknown), whether it is alive."""

    pid: int
    cmdline: tuple[str, ...]
    alive: bool

    def to_json(self) -> dict[str, object]:
        """The report's object for this ancestor."""
        return {"pid": self.pid, "cmdline": list(self.cmdline), "alive": self.alive}


@dataclasses.dataclass(frozen=True)
class RelativeDetail:
    """A live descendant of a leaked process: PID, its parent, command line."""

    pid: int
    ppid: int
    cmdline: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        """The report's object for this descendant."""
        return {"pid": self.pid, "ppid": self.ppid, "cmdline": list(self.cmdline)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcessDetail:
    """What a leaked process is, as the report's ``process`` object tells it."""

    cmdline: tuple[str, ...]
    cwd: str | None
    started_unix: float
    age_seconds: float
    phase: Phase
    started_in: str | None
    ancestry: tuple[AncestorDetail, ...] = ()
    escaped: tuple[str, ...] = ()
    descendants: tuple[RelativeDetail, ...] = ()

    def to_json(self) -> dict[str, object]:
        """The report's ``process`` object (schema version 2)."""
        return {
            "cmdline": list(self.cmdline),
            "cwd": self.cwd,
            "started_unix": self.started_unix,
            "age_seconds": round(self.age_seconds, 3),
            "phase": self.phase,
            "started_in": self.started_in,
            "ancestry": [a.to_json() for a in self.ancestry],
            "escaped": list(self.escaped),
            "descendants": [d.to_json() for d in self.descendants],
        }

    @classmethod
    def from_json(cls, data: object) -> ProcessDetail:
        """Rebuild a detail; :class:`DetailShapeError` saying what is wrong if it is not one."""
        try:
            return cls._from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise DetailShapeError(f"malformed process detail: {exc}") from None

    @classmethod
    def _from_json(cls, data: object) -> ProcessDetail:
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object, not {type(data).__name__}")
        phase = data["phase"]
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        escaped = _strings(data["escaped"])
        if not set(escaped) <= set(ESCAPE_WORDS):
            raise ValueError(f"unknown escape words in {escaped}")
        cwd, started_in = data["cwd"], data["started_in"]
        if cwd is not None and not isinstance(cwd, str):
            raise TypeError("cwd is not a string")
        if started_in is not None and not isinstance(started_in, str):
            raise TypeError("started_in is not a string")
        return cls(
            cmdline=_strings(data["cmdline"]),
            cwd=cwd,
            started_unix=_number(data["started_unix"]),
            age_seconds=_number(data["age_seconds"]),
            phase=phase,
            started_in=started_in,
            ancestry=tuple(
                AncestorDetail(_int(a["pid"]), _strings(a["cmdline"]), bool(a["alive"]))
                for a in _list(data["ancestry"])
            ),
            escaped=escaped,
            descendants=tuple(
                RelativeDetail(_int(d["pid"]), _int(d["ppid"]), _strings(d["cmdline"]))
                for d in _list(data.get("descendants", []))
            ),
        )


def _list(value: object) -> list[dict[str, object]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TypeError("expected a list of objects")
    return value


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


def phase_of(
    start_tick: int,
    ticks_per_second: int,
    spans: Sequence[PhaseSpan],
    prefer: str | None = None,
    named: tuple[str, str] | None = None,
) -> tuple[Phase, str | None]:
    """The phase (and test) a process that started at ``start_tick`` started in.

    A start tick covers ``[tick, tick + 1)`` / ``ticks_per_second`` seconds, so
    several short phases may overlap it. The phase ``named`` by the process's
    starting environment (pytest's ``PYTEST_CURRENT_TEST``, as ``(node id,
    phase)``) wins when it overlaps the tick: the clock confirms what the
    environment says. Then a phase of ``prefer`` (the test the finding already
    names, by its registry or marker) wins over other tests' phases; among the
    rest, the one that overlaps most of the interval (the later one on a tie).
    ``spans`` must be sorted by start. No overlap: ``session`` (a session-scoped
    fixture, collection, another hook), no test.
    """
    low = start_tick / ticks_per_second
    high = (start_tick + 1) / ticks_per_second
    starts = [span.start for span in spans]
    index = bisect.bisect_right(starts, high)
    best: PhaseSpan | None = None
    best_overlap = 0.0
    # Phases do not overlap each other, so only the few before ``index`` can reach the interval.
    best_rank = (False, False)
    for span in reversed(spans[max(0, index - 8) : index]):
        overlap = min(high, span.end) - max(low, span.start)
        if overlap <= 0:
            continue
        rank = (named == (span.nodeid, span.phase), prefer is not None and span.nodeid == prefer)
        if (*rank, overlap) > (*best_rank, best_overlap):
            best, best_overlap, best_rank = span, overlap, rank
    if best is None:
        return "session", None
    return best.phase, best.nodeid


def explain_findings(
    findings: Sequence[Finding],
    targets: Mapping[Finding, CleanupTarget],
    *,
    root_pid: int,
    spans: Sequence[PhaseSpan],
    origin: Callable[[int], ProcessOrigin | None] | None = None,
    table: ProcessTable | None = None,
) -> tuple[list[Finding], dict[Finding, CleanupTarget]]:
    """Each finding about a live process with its :class:`ProcessDetail`; targets re-keyed.

    ``root_pid`` is the pytest process (ancestry ends there); ``spans`` the
    timed test phases; ``origin`` what lineage knows of a PID, if the caller has
    lineage. A finding whose process is gone (or whose PID now names a younger
    process) keeps ``process=None``.
    """
    live = [f for f in findings if f.pid is not None and f.kind != "stale_record"]
    if not live:
        return list(findings), dict(targets)
    from pytest_leanhost.core.probe import ProcessTable

    snapshot = ProcessTable.snapshot() if table is None else table
    ordered = sorted(spans, key=lambda span: span.start)
    explained: list[Finding] = []
    rekeyed: dict[Finding, CleanupTarget] = {}
    for finding in findings:
        new = finding
        if finding in live:
            detail = _detail(finding, targets, snapshot, root_pid, ordered, origin)
            if detail is not None:
                new = finding._replace(process=detail)
        explained.append(new)
        if finding in targets:
            rekeyed[new] = targets[finding]
    return explained, rekeyed


def _detail(
    finding: Finding,
    targets: Mapping[Finding, CleanupTarget],
    table: ProcessTable,
    root_pid: int,
    spans: Sequence[PhaseSpan],
    origin: Callable[[int], ProcessOrigin | None] | None,
) -> ProcessDetail | None:
    from pytest_leanhost.core.describe import ancestry, describe_process, escape_words
    from pytest_leanhost.core.lineage import clock_ticks_per_second, start_tick
    from pytest_leanhost.core.ownership import pytest_phase_at_start

    assert finding.pid is not None
    pid = finding.pid
    info = table.get(pid)
    target = targets.get(finding)
    create_time = target.create_time if target is not None else None
    if create_time is None:
        if info is None or info.zombie:
            return None
        create_time = info.create_time
    facts = describe_process(pid, create_time)
    tick = start_tick(pid)
    if facts is None or tick is None:
        return None
    phase, started_in = phase_of(
        tick,
        clock_ticks_per_second(),
        spans,
        prefer=finding.nodeid,
        named=pytest_phase_at_start(pid),
    )
    seen = origin(pid) if origin is not None else None
    current_parent = info.ppid if info is not None else None
    first_parent = seen.first_parent if seen is not None else None
    escaped = escape_words(
        pid,
        pytest_pid=root_pid,
        marker_absent=seen is not None and seen.lineage_only,
        first_seen_parent=first_parent,
        current_parent=current_parent,
        recorded_parent=_recorded_parent(target.data if target is not None else None),
    )
    known = {pid: first_parent} if first_parent is not None else {}
    chain = ancestry(pid, known, table, root=root_pid)
    return ProcessDetail(
        cmdline=facts.cmdline,
        cwd=facts.cwd,
        started_unix=facts.started_unix,
        age_seconds=facts.age_seconds,
        phase=phase,
        started_in=started_in,
        ancestry=tuple(AncestorDetail(a.pid, a.cmdline, a.alive) for a in chain),
        escaped=escaped,
        descendants=_descendants(pid, table),
    )


def _recorded_parent(data: bytes | None) -> int | None:
    """``parent_pid_at_start`` of the judged record's bytes, when they parse."""
    if data is None:
        return None
    from pytest_leanhost.record import ProcessRecord

    try:
        return ProcessRecord.from_json_bytes(data).parent_pid_at_start
    except ValueError:  # RecordError among them: a corrupt record says nothing
        return None


def _descendants(pid: int, table: ProcessTable) -> tuple[RelativeDetail, ...]:
    import psutil

    from pytest_leanhost.core.identity import same_create_time

    found: list[RelativeDetail] = []
    for child in table.descendants(pid):
        info = table.get(child)
        if info is None or info.zombie:
            continue
        try:
            proc = psutil.Process(child)
            if not same_create_time(proc.create_time(), info.create_time):
                continue
            cmdline = tuple(proc.cmdline())
        except psutil.Error:
            continue
        found.append(RelativeDetail(child, info.ppid, cmdline))
    return tuple(found)
