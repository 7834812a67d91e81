"""What a leaked process is, in a finding: the facts a person needs to act on it.

:func:`explain_findings` gives each finding about a live process its command line, age,
phase, ancestry, descendants and escape words; it signals nothing. See
docs/how-it-works/attribution.md and docs/reference/leak-kinds.md.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from pytest_leanhost.core.detail import (
    Phase,
    PhaseSpan,
    ProcessDetail,
    RelativeDetail,
)

if TYPE_CHECKING:
    from pytest_leanhost.core.finding import CleanupTarget, Finding, Pair, ProcessOrigin
    from pytest_leanhost.core.probe import ProcessTable

__all__ = ["explain_findings", "phase_of"]


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
    names, by its registry or marker) wins over other tests' phases; then any
    phase over a teardown; among the rest, the one that overlaps most of the
    interval (the later one on a tie). Rule: a teardown takes a tick only when
    no other phase shares it. A body that starts a process and returns at once
    ends a millisecond into a ten-millisecond tick, and the teardown after it
    (the per-test check's grace among it) covers the rest, yet teardowns stop
    processes far more often than they start them.
    ``spans`` must be sorted by start. No overlap: ``session`` (a session-scoped
    fixture, collection, another hook), no test.
    """
    low = start_tick / ticks_per_second
    high = (start_tick + 1) / ticks_per_second
    starts = [span.start for span in spans]
    index = bisect.bisect_right(starts, high)
    best: PhaseSpan | None = None
    best_rank: tuple[bool, bool, bool, float] = (False, False, False, 0.0)
    # Phases do not overlap each other, so only the few before ``index`` can reach the interval.
    for span in reversed(spans[max(0, index - 8) : index]):
        overlap = min(high, span.end) - max(low, span.start)
        if overlap <= 0:
            continue
        rank = (
            named == (span.nodeid, span.phase),
            prefer is not None and span.nodeid == prefer,
            span.phase != "teardown",
            overlap,
        )
        if rank > best_rank:
            best, best_rank = span, rank
    if best is None:
        return "session", None
    return best.phase, best.nodeid


def explain_findings(
    pairs: Sequence[Pair],
    *,
    root_pid: int,
    spans: Sequence[PhaseSpan],
    origin: Callable[[int], ProcessOrigin | None] | None = None,
    table: ProcessTable | None = None,
    inherited_environment: Collection[int] = (),
) -> list[Pair]:
    """Each finding about a live process with its :class:`ProcessDetail`, beside its target.

    ``root_pid`` is the pytest process (ancestry ends there); ``spans`` the
    timed test phases; ``origin`` what lineage knows of a PID, if the caller has
    lineage; ``inherited_environment`` the PIDs whose starting environment says
    nothing of when they started (a fork server's children carry the one it was
    started with). A finding whose process is gone (or whose PID now names a younger
    process) keeps ``process=None``.
    """
    if not any(f.pid is not None and f.kind != "stale_record" for f, _ in pairs):
        return list(pairs)
    from pytest_leanhost.core.probe import ProcessTable

    snapshot = ProcessTable.snapshot() if table is None else table
    ordered = sorted(spans, key=lambda span: span.start)
    explained: list[Pair] = []
    for finding, target in pairs:
        detail = None
        if finding.pid is not None and finding.kind != "stale_record":
            trust = finding.pid not in inherited_environment
            detail = _detail(finding, target, snapshot, root_pid, ordered, origin, trust)
        explained.append((finding if detail is None else finding._replace(process=detail), target))
    return explained


def _detail(
    finding: Finding,
    target: CleanupTarget,
    table: ProcessTable,
    root_pid: int,
    spans: Sequence[PhaseSpan],
    origin: Callable[[int], ProcessOrigin | None] | None,
    environment_says_when: bool = True,
) -> ProcessDetail | None:
    from pytest_leanhost.core.lineage import clock_ticks_per_second, start_tick
    from pytest_leanhost.core.live_process import ancestry, describe_process, escape_words
    from pytest_leanhost.core.ownership import pytest_phase_at_start

    assert finding.pid is not None
    pid = finding.pid
    info = table.get(pid)
    create_time = target.create_time
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
        named=pytest_phase_at_start(pid) if environment_says_when else None,
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
        recorded_parent=_recorded_parent(target.data),
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
        ancestry=chain,
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
