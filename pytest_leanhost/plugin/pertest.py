"""``--leanhost-check=test``: each test's leaks as an error at its own teardown.

Right after a test's teardown, its own registry and the processes it started
get the grace to go away; what is left turns the teardown report into a failed
one, so ``--lf``, ``-x``, ``--maxfail`` and JUnit see it under that test. The
findings are explained and cleaned up as at session end (``explain_findings``
with the lineage's origins, the check's own ``clean_up``: exact PIDs, create
time checked; the session's reaping rule for adopted processes it stopped) and
not reported again at session end; what appears only later is still caught there.

The processes it started, and what a test that starts nothing pays:

- with lineage (Linux, pytest a child subreaper), every process the test
  started is below pytest however it was launched (``Popen(env=...)``, ``env
  -i``, the MCP SDKs' stdio clients, a ``setsid`` double fork): they are those
  the lineage recorder gave to the test. Its walk runs only when the kernel's
  PID counter (5th field of ``/proc/loadavg``) moved since the last one, so a
  test that starts nothing costs one read of it and one look at its registry;
- without lineage, those whose starting environment carries the session id
  and ``LEANHOST_NODEID`` of the test. Only the PIDs handed out since the
  test's start (the same counter, read before setup) are read; where there is
  no counter, the whole table is, after every test.

Only when one of them is the test's, or the registry holds something, are the
process table and psutil touched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

from pytest_leanhost.core.ownership import NODEID_ENV, SESSION_ENV
from pytest_leanhost.core.procfs import LastPid, pids_between

if TYPE_CHECKING:
    from pytest_leanhost.core.check import Finding, LineageView
    from pytest_leanhost.plugin.session import LeanhostSession

__all__ = ["PerTestCheck", "ReportedKey", "reported_key"]

#: What identifies a finding between the teardown check and the session-end check.
ReportedKey = tuple[str, int | None, str | None]


class PerTestCheck:
    """The teardown check of every test of this pytest process (``--leanhost-check=test``)."""

    def __init__(self, session: LeanhostSession) -> None:
        self.session = session
        self._wider_fixture = False
        #: The PID counter at each test's start, kept only where no lineage walks the tree.
        self._pids: PidsSinceStart | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Without lineage (no subreaper), note the PID counter at each test's start.

        trylast: the session decided on lineage in its own (tryfirst) session start.
        With lineage, its walk, gated by the same counter, finds the test's processes.
        """
        if self.session.lineage is None:
            self._pids = PidsSinceStart()
            session.config.pluginmanager.register(self._pids, "leanhost-pertest-pids")

    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[object]) -> None:
        """Note a class, module, package or session fixture set up within this test."""
        if fixturedef.scope != "function":
            self._wider_fixture = True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        """After teardown: what the test left makes its teardown fail, as a fixture's would.

        A failed teardown is what pytest itself makes of a fixture whose teardown
        raised: "ERROR at teardown of ...", an error in the counts, in ``--lf``'s
        cache, for ``-x`` and ``--maxfail``, and an ``<error>`` in the test's own
        JUnit ``<testcase>``. One wrapper per test (around teardown only), not one
        per phase: the check runs once, when every fixture of the test is torn down.
        """
        # Setup is over: whether it set up a wider fixture is known, and the next test
        # starts with none set up by it.
        wider, self._wider_fixture = self._wider_fixture, False
        try:
            yield
        except Exception:  # an interrupt (KeyboardInterrupt, pytest.exit) is not checked here
            failing = self._check(item, wider)
            if failing:  # keep the teardown's own error, and add ours beside it
                item.add_report_section("teardown", "leanhost", _leak_text(item.nodeid, failing))
            raise
        failing = self._check(item, wider)
        if failing:
            pytest.fail(_leak_text(item.nodeid, failing), pytrace=False)

    def _check(self, item: pytest.Item, wider_fixture: bool) -> list[Finding]:
        """The failing findings of ``item``, cleaned up (unless ``--leanhost-keep-leaks``)."""
        state = self.session.state
        if state is None or wider_fixture:
            # Rule: what a wider fixture started lives until its scope ends, past this
            # test's teardown; such a test is judged at session end, like without the option.
            return []
        nodeid = item.nodeid
        registry = state.registry_path(nodeid) if self.session.settings.isolate else None
        holds = registry is not None and _holds_something(registry)
        lineage = self.session.lineage
        if lineage is not None:
            # Rule: pytest is a subreaper, so every process the test started, marked or
            # not, is below it; the walk (skipped when no PID was handed out) sees them.
            lineage.boundary()
            suspects = lineage.alive_owned_by(nodeid)
        elif self._pids is not None and (since := self._pids.handed_out()) is not None:
            # Rule: only a PID handed out during the test can be a process born in it.
            suspects = _marked(since, state.session_id, nodeid)
        else:
            suspects = self._marked_in_table(state.session_id, nodeid)
        if not holds and not suspects:
            return []
        return self._judge(item, registry, suspects)

    def _marked_in_table(self, session_id: str, nodeid: str) -> set[int]:
        from pytest_leanhost.core.ownership import find_marked_processes
        from pytest_leanhost.core.probe import ProcessTable

        marked = find_marked_processes(session_id, ProcessTable.snapshot(), exclude=[os.getpid()])
        return {pid for pid, proc in marked.items() if proc.nodeid == nodeid}

    def _judge(self, item: pytest.Item, registry: str | None, suspects: set[int]) -> list[Finding]:
        """Give the suspects the grace (polled), then judge and clean up what is left."""
        from pytest_leanhost.core.check import check_session, clean_up
        from pytest_leanhost.core.explain import explain_findings
        from pytest_leanhost.plugin.phases import reported_durations
        from pytest_leanhost.stopping import poll_until

        session, settings, state = self.session, self.session.settings, self.session.state
        assert state is not None
        nodeid = item.nodeid
        if settings.grace > 0:
            poll_until(lambda: not _alive(suspects | _record_pids(registry)), settings.grace)
        registries: dict[str, str | None] = {}
        if registry is not None and os.path.lexists(registry):
            registries[registry] = nodeid
        worker_pids = state.worker_pids()
        checked = check_session(
            registries,
            state.session_id,
            exclude_pids=worker_pids,
            grace=0.0,
            worker=session.workerid,
            only_worker=session.workerid,
            lineage=self._lineage_view(worker_pids),
        )
        # Rule: only this test's own leftovers; another test's are for its teardown or the end.
        # A process lineage cannot pin on one test names them all: each of them may claim it.
        findings = [
            f
            for f in checked.findings
            if (registry is not None and f.registry == registry)
            or (f.kind == "leaked_process" and nodeid in (f.nodeid, *f.nodeids))
        ]
        findings = [f for f in findings if not _allowed(item, f)]
        if not findings:
            return []  # an allowed leak is left for the session end, which reports it as allowed
        targets = {f: checked.targets[f] for f in findings}
        findings, targets = explain_findings(
            findings,
            targets,
            root_pid=os.getpid(),
            spans=session.phases.spans(reported_durations(session.config)),
            origin=checked.origins.get,
        )
        if not settings.keep_leaks:
            findings = clean_up(findings, targets, settings.shutdown_timeout)
            # The session's own rule: reap only the adopted processes cleanup just stopped.
            session._reap(findings, checked)
        session.reported_at_teardown.update(reported_key(f) for f in findings)
        return findings

    def _lineage_view(self, worker_pids: set[int]) -> LineageView | None:
        """The session's lineage as its check sees it (no test's xdist worker, nothing older).

        The session's own view (``LeanhostSession._lineage_view``) also takes dead
        workers' spans, which only the controller has and which no test runs on.
        """
        lineage = self.session.lineage
        if lineage is None:
            return None
        from pytest_leanhost.core.check import LineageView

        return LineageView(
            lineage=lineage,
            exclude_trees=frozenset(worker_pids),
            before=self.session._lineage_before,
        )


def reported_key(finding: Finding) -> ReportedKey:
    """What names a finding in both checks (the action and the explanation may differ)."""
    return (finding.kind, finding.pid, finding.record)


def _leak_text(nodeid: str, failing: list[Finding]) -> str:
    """The error a leaking test's teardown reports: a header line, then each finding's lines."""
    from pytest_leanhost.plugin.report import grouped_lines

    lines = [f"leanhost: {nodeid} leaked (checked at its teardown):"]
    lines.extend(line for line, _ in grouped_lines(failing))
    return "\n".join(lines)


def _holds_something(registry: str) -> bool:
    """Whether anything stands in the registry (one ``scandir``; a non-directory counts)."""
    if not os.access(registry, os.F_OK, follow_symlinks=False):
        return False  # the common case, answered without raising
    try:
        with os.scandir(registry) as entries:
            return next(entries, None) is not None
    except OSError:
        return os.path.lexists(registry)


def _marked(pids: list[int], session_id: str, nodeid: str) -> set[int]:
    """Those of ``pids`` whose starting environment carries the session id and ``nodeid``."""
    session = f"\0{SESSION_ENV}={session_id}\0".encode()
    test = f"\0{NODEID_ENV}={nodeid}\0".encode()
    own = os.getpid()
    found: set[int] = set()
    for pid in pids:
        if pid == own:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = b"\0" + handle.read() + b"\0"
        except OSError:
            continue  # gone, or not ours to read (so not started by this run)
        if session in environ and test in environ:
            found.add(pid)
    return found


def _record_pids(registry: str | None) -> set[int]:
    """The PIDs that the record names in ``registry`` stand for (by file name)."""
    if registry is None:
        return set()
    pids: set[int] = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir(registry):
            stem = entry.name[: -len(".json")] if entry.name.endswith(".json") else ""
            if stem.isdigit():
                pids.add(int(stem))
    return pids


def _alive(pids: set[int]) -> bool:
    """Whether any of ``pids`` is a live process that is not a zombie."""
    if not pids:
        return False
    from pytest_leanhost.core.probe import ProcessTable

    table = ProcessTable.snapshot()
    return any((info := table.get(pid)) is not None and not info.zombie for pid in pids)


def _allowed(item: pytest.Item, finding: Finding) -> bool:
    return any(
        not marker.args or finding.kind in marker.args
        for marker in item.iter_markers(name="leanhost_allow")
    )


class PidsSinceStart:
    """The PIDs handed out since the running test started (Linux: the kernel's PID counter).

    Used where no lineage walks the tree: only those PIDs can be the test's own
    processes, and only their starting environments are read.
    """

    def __init__(self) -> None:
        self._counter = LastPid()
        self._at_start: int | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        """Before setup: note the last PID handed out."""
        self._at_start = self._counter.read()

    def handed_out(self) -> list[int] | None:
        """The live PIDs handed out since; ``None`` where the kernel keeps no counter."""
        before, after = self._at_start, self._counter.read()
        if before is None or after is None:
            return None
        return pids_between(before, after)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Close the kernel's PID counter."""
        self._counter.close()
