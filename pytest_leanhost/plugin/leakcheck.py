"""The one leak check of a pytest process, and the ledger of everything it found.

One pipeline, two moments: at a test's teardown (``--leanhost-check=test``) and
at session end. Each run gathers the suspects, gives them the grace, judges,
explains, cleans up and records; every output of the run (the terminal
section, the summary and final lines, JSON, JUnit, GitHub annotations) is
written from the one ledger, so all of them name the same leaks.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

from pytest_leanhost.plugin.phases import PhaseClock, reported_durations
from pytest_leanhost.plugin.settings import Settings

if TYPE_CHECKING:
    from pytest_leanhost.core.check import LineageView, SessionCheck, WatchedView
    from pytest_leanhost.core.finding import Finding, Pair
    from pytest_leanhost.core.kinds import FoundAt
    from pytest_leanhost.core.lineage import Lineage
    from pytest_leanhost.core.registry_snapshots import WatchedRegistries, WatchSnapshot
    from pytest_leanhost.plugin.state import SessionState

__all__ = ["CheckResult", "LeakCheck", "allowed_by_marker", "finding_key"]

#: What names a finding in both moments (the action and the explanation may differ).
FindingKey = tuple[str, int | None, str | None]


def finding_key(finding: Finding) -> FindingKey:
    """What makes two findings the same leak, whatever was done about it."""
    return (finding.kind, finding.pid, finding.record)


class CheckResult(NamedTuple):
    """What one run of the pipeline added to the ledger, and the doctor's lines if asked."""

    findings: list[Finding]
    doctor: list[str]
    registries_checked: int = 0
    records_checked: int = 0


class LeakCheck:
    """Gather, grace, judge, explain, clean up, record: at a teardown or at session end.

    Made with the session object; :meth:`start` hands it what session start
    decided (the state, the lineage, the watched registries).
    """

    def __init__(self, config: pytest.Config, settings: Settings, phases: PhaseClock) -> None:
        self.config = config
        self.settings = settings
        self.phases = phases
        #: Every finding of this process, in the order found (each with its ``found_at``).
        self.ledger: list[Finding] = []
        self._keys: set[FindingKey] = set()
        #: One line for each wider fixture whose processes wait for its scope's end.
        self.notes: list[str] = []
        #: Time spent in the pipeline, both moments.
        self.seconds = 0.0
        #: How many of the run's processes the checks looked at (without lineage).
        self.processes_looked_at = 0
        self.state: SessionState | None = None
        self.workerid: str | None = None
        self.lineage: Lineage | None = None
        self.lineage_before: frozenset[tuple[int, int]] = frozenset()
        self.watched: tuple[WatchedRegistries, WatchSnapshot, int] | None = None
        #: Without lineage: processes a wider fixture started, by PID, with their create time.
        self._deferred_pids: dict[int, tuple[float, str]] = {}

    def start(
        self,
        state: SessionState,
        workerid: str | None,
        lineage: Lineage | None,
        watched: tuple[WatchedRegistries, WatchSnapshot, int] | None,
    ) -> None:
        """What session start decided; what is below pytest already is never blamed."""
        self.state = state
        self.workerid = workerid
        self.lineage = lineage
        self.watched = watched
        if lineage is not None:
            self.lineage_before = lineage.identities()

    # -- wider fixtures ----------------------------------------------------------

    def defer(self, pids: Mapping[int, float], why: str) -> None:
        """Judge these processes (PID to create time) when ``why``'s scope ends (no lineage)."""
        for pid, create_time in pids.items():
            self._deferred_pids[pid] = (create_time, why)
        self.note_deferred(len(pids), why)

    def note_deferred(self, count: int, why: str) -> None:
        """One line saying what waits for a wider fixture's scope, and why."""
        if count:
            self.notes.append(
                f"leanhost: {count} process(es) started while setting up {why}"
                " are judged when that fixture's scope ends, not at that test's teardown"
            )

    def _deferred(self, finding: Finding, origin_tick: int | None) -> bool:
        pid = finding.pid
        if pid is None:
            return False
        lineage = self.lineage
        if lineage is not None and origin_tick is not None and lineage.deferred(pid, origin_tick):
            return True
        deferred = self._deferred_pids.get(pid)
        if deferred is None:
            return False
        from pytest_leanhost.core.identity import same_create_time
        from pytest_leanhost.core.probe import create_time_of

        with contextlib.suppress(Exception):
            return same_create_time(create_time_of(pid), deferred[0])
        return False

    # -- the pipeline ------------------------------------------------------------

    def run(
        self,
        moment: FoundAt,
        registries: Mapping[str, str | None],
        *,
        keep: Callable[[Finding], bool],
        allowed: Callable[[Finding], bool],
        suspects: Collection[int] | None = None,
        doctor: bool = False,
    ) -> CheckResult:
        """One check: what it found goes into the ledger, cleaned up; returns what it added.

        ``keep`` says which findings are this moment's (a test's own, at its
        teardown); ``allowed`` which ones the test's ``leanhost_allow`` marker lets
        pass. At a teardown the grace goes to ``suspects`` alone, an allowed leak is
        left for the session end to report, and a wider fixture's process waits
        for its scope's end; at session end every allowed leak is reported as such.
        """
        from pytest_leanhost.core.check import check_session
        from pytest_leanhost.core.interpreter import interpreter_helpers

        started = time.perf_counter()
        state = self.state
        assert state is not None
        grace = self.settings.grace
        if suspects is not None:
            if grace > 0 and suspects:
                from pytest_leanhost.stopping import poll_until

                poll_until(lambda: not _alive(set(suspects)), grace)
            grace = 0.0
        worker_pids = state.worker_pids()
        checked = check_session(
            registries,
            state.session_id,
            exclude_pids=worker_pids,
            helpers=interpreter_helpers().keys(),
            grace=grace,
            worker=self.workerid,
            only_worker=self.workerid,
            lineage=self.lineage_view(worker_pids),
            watched=self._watched_view(worker_pids) if moment == "session_end" else None,
        )
        if self.lineage is None:
            self.processes_looked_at += checked.processes_looked_at
        pairs: list[Pair] = []
        for finding, target in checked.pairs:
            if not keep(finding) or finding_key(finding) in self._keys:
                continue
            origin = checked.origins.get(finding.pid) if finding.pid is not None else None
            if moment == "teardown" and self._deferred(finding, origin and origin.start_tick):
                continue
            is_allowed = allowed(finding)
            if is_allowed and moment == "teardown":
                continue  # left alive for the session end, which reports it as allowed
            pairs.append((finding._replace(allowed=is_allowed, found_at=moment), target))
        lines = [*_doctor_lines(checked), *_helper_lines()] if doctor else []
        if any(finding.pid is not None for finding, _ in pairs):
            from pytest_leanhost.core.explain import explain_findings

            pairs = explain_findings(
                pairs,
                root_pid=os.getpid(),
                spans=self.phases.spans(reported_durations(self.config)),
                origin=checked.origins.get,
                inherited_environment=checked.helper_children,
            )
        pairs = _spare_daemons(pairs)
        if self.settings.keep_leaks:
            findings = [finding for finding, _ in pairs]
        else:
            from pytest_leanhost.core.check import clean_up

            findings = clean_up(pairs, self.settings.shutdown_timeout)
        if self.lineage is not None:
            self.lineage.reap_exited()  # what cleanup just stopped, and any other exited orphan
        for finding in findings:
            self.ledger.append(finding)
            self._keys.add(finding_key(finding))
        self.seconds += time.perf_counter() - started
        return CheckResult(findings, lines, checked.registries_checked, checked.records_checked)

    def lineage_view(self, worker_pids: Collection[int]) -> LineageView | None:
        """The lineage as a check sees it: no xdist worker's tree, nothing from before."""
        if self.lineage is None:
            return None
        from pytest_leanhost.core.check import LineageView

        return LineageView(
            lineage=self.lineage, exclude_trees=frozenset(worker_pids), before=self.lineage_before
        )

    def _watched_view(self, worker_pids: Collection[int]) -> WatchedView | None:
        """The watched registries as snapshotted; a record naming a pytest of the run is ours."""
        if self.watched is None:
            return None
        from pytest_leanhost.core.check import WatchedView

        registries, before, started = self.watched
        pytest_pids = {os.getpid()}
        if self.workerid is None:
            pytest_pids |= set(worker_pids)  # a dead worker's records are the controller's
        return WatchedView(registries, before, frozenset(pytest_pids), started)

    # -- what the run saw ----------------------------------------------------------

    def processes_seen(self) -> int:
        """How many of the run's processes this pytest process saw (by lineage, or checked)."""
        if self.lineage is not None:
            return len(self.lineage.identities() - self.lineage_before)
        return self.processes_looked_at


def _spare_daemons(pairs: list[Pair]) -> list[Pair]:
    """Each daemonic multiprocessing child of this interpreter reported, its signal taken away."""
    from pytest_leanhost.core.interpreter import DAEMON_NOT_SIGNALLED, multiprocessing_daemons

    daemons = multiprocessing_daemons() if pairs else set()
    if not daemons:
        return pairs
    spared: list[Pair] = []
    for finding, target in pairs:
        if finding.pid not in daemons:
            spared.append((finding, target))
            continue
        detail = "; ".join(filter(None, [finding.detail, DAEMON_NOT_SIGNALLED]))
        spared.append((finding._replace(detail=detail), target._replace(create_time=None)))
    return spared


def allowed_by_marker(item: pytest.Item | None, finding: Finding) -> bool:
    """Whether the test's ``leanhost_allow`` marker lets this kind of leak pass."""
    return item is not None and any(
        not marker.args or finding.kind in marker.args
        for marker in item.iter_markers(name="leanhost_allow")
    )


def _alive(pids: set[int]) -> bool:
    """Whether any of ``pids`` is a live process that is not a zombie."""
    if not pids:
        return False
    from pytest_leanhost.core.probe import ProcessTable

    table = ProcessTable.snapshot()
    return any((info := table.get(pid)) is not None and not info.zombie for pid in pids)


def _helper_lines() -> list[str]:
    """The interpreter's lifetime helpers, once each, as what they are (never leaks)."""
    from pytest_leanhost.core.interpreter import interpreter_helpers

    return [
        f"pid={pid} {what}: kept by pytest's interpreter until it exits (not a leak)"
        for pid, what in sorted(interpreter_helpers().items())
    ]


def _doctor_lines(checked: SessionCheck) -> list[str]:
    """The doctor lines of each registry that held a record, before any cleanup.

    Rule: a registry that held nothing gets no lines of its own, only a count,
    so the section of a 5,000-test run is as long as what it found.
    """
    from pytest_leanhost.core.doctor import render_text

    lines: list[str] = []
    empty = 0
    for registry, judged in sorted(checked.judged.items()):
        if not judged:
            empty += 1
            continue
        nodeid = checked.nodeids.get(registry)
        lines.append(f"{nodeid or Path(registry).name} (registry {registry}):")
        lines.extend(render_text(judged).splitlines())
    if empty:
        lines.append(f"({empty} other registries of the session held no record)")
    return lines
