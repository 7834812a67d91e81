"""``--leanhost-check=test``: each test's leaks as an error at its own teardown.

The session's own pipeline (:class:`~pytest_leanhost.plugin.leakcheck.LeakCheck`), run for
one test: only what a wider fixture started while set up waits for its scope. A test that
starts nothing pays one PID-counter read and one look at its registry. See
docs/guides/per-test.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

from pytest_leanhost.core.ownership import NODEID_ENV, SESSION_ENV
from pytest_leanhost.core.procfs import LastPid, pids_between, stat_fields
from pytest_leanhost.plugin.leakcheck import allowed_by_marker

if TYPE_CHECKING:
    from pytest_leanhost.core.finding import Finding
    from pytest_leanhost.plugin.leakcheck import LeakCheck

__all__ = ["PerTestCheck"]


class PerTestCheck:
    """The teardown check of every test of this pytest process (``--leanhost-check=test``)."""

    def __init__(self, check: LeakCheck) -> None:
        self.check = check
        #: The PID counter at each test's start, kept only where no lineage walks the tree.
        self._pids: PidsSinceStart | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Without lineage (no subreaper), note the PID counter at each test's start.

        trylast: the session decided on lineage in its own (tryfirst) session start.
        With lineage, its walk, gated by the same counter, finds the test's processes.
        """
        if self.check.lineage is None:
            self._pids = PidsSinceStart()
            session.config.pluginmanager.register(self._pids, "leanhost-pertest-pids")

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[object]
    ) -> Generator[None, object, object]:
        """What a class, module, package or session fixture starts waits for its scope's end.

        Rule: only the processes started while that fixture was set up are deferred
        (and, with lineage, what they start later); the test that set it up is
        still judged at its teardown for everything else its phases started.
        """
        check = self.check
        if fixturedef.scope == "function" or check.state is None:
            return (yield)
        why = (
            f"{fixturedef.scope}-scoped fixture {fixturedef.argname!r}"
            f" (set up by {check.phases.running or 'the session'})"
        )
        lineage = check.lineage
        if lineage is not None:
            lineage.boundary()
            mark = lineage.mark()
            try:
                return (yield)
            finally:
                lineage.boundary()
                check.note_deferred(len(lineage.defer_since(mark, why)), why)
        counter = LastPid()
        before = counter.read()
        try:
            return (yield)
        finally:
            after = counter.read()
            counter.close()
            if before is not None and after is not None:
                # Rule: of the PIDs handed out while the fixture was set up, those below
                # pytest, or carrying the session's marker, are deferred, create time pinned.
                # The parent is asked first: right after an exec the kernel may not show
                # the new environment yet, but a child of pytest is ours whatever it shows.
                started = pids_between(before, after)
                ours = {pid for pid in started if _ours(pid, check.state.session_id)}
                check.defer(_create_times(ours), why)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        """After teardown: what the test left makes its teardown fail, as a fixture's would.

        A failed teardown is what pytest itself makes of a fixture whose teardown
        raised: "ERROR at teardown of ...", an error in the counts, in ``--lf``'s
        cache, for ``-x`` and ``--maxfail``, and an ``<error>`` in the test's own
        JUnit ``<testcase>``. One wrapper per test (around teardown only), not one
        per phase: the check runs once, when every fixture of the test is torn down.
        """
        self.check.phases.teardown_begins(item.nodeid)
        try:
            yield
        except Exception:  # an interrupt (KeyboardInterrupt, pytest.exit) is not checked here
            failing = self._check(item)
            if failing:  # keep the teardown's own error, and add ours beside it
                item.add_report_section("teardown", "leanhost", _leak_text(item.nodeid, failing))
            raise
        failing = self._check(item)
        if failing:
            pytest.fail(_leak_text(item.nodeid, failing), pytrace=False)

    def _check(self, item: pytest.Item) -> list[Finding]:
        """The failing findings of ``item``, cleaned up (unless ``--leanhost-keep-leaks``)."""
        check = self.check
        state = check.state
        if state is None:
            return []
        nodeid = item.nodeid
        registry = state.registry_path(nodeid) if check.settings.isolate else None
        holds = registry is not None and _holds_something(registry)
        lineage = check.lineage
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
        registries: dict[str, str | None] = {}
        if registry is not None and os.path.lexists(registry):
            registries[registry] = nodeid

        def own(finding: Finding) -> bool:
            # Rule: only this test's own leftovers; another test's are for its teardown or
            # the end. A process lineage cannot pin on one test names them all: each may claim it.
            if registry is not None and finding.registry == registry:
                return True
            return finding.kind == "leaked_process" and nodeid in (finding.nodeid, *finding.nodeids)

        found = check.run(
            "teardown",
            registries,
            keep=own,
            allowed=lambda finding: allowed_by_marker(item, finding),
            suspects=suspects | _record_pids(registry),
        )
        return [finding for finding in found.findings if not finding.allowed]

    def _marked_in_table(self, session_id: str, nodeid: str) -> set[int]:
        from pytest_leanhost.core.ownership import find_marked_processes
        from pytest_leanhost.core.probe import ProcessTable

        marked = find_marked_processes(session_id, ProcessTable.snapshot(), exclude=[os.getpid()])
        return {pid for pid, proc in marked.items() if proc.nodeid == nodeid}


def _leak_text(nodeid: str, failing: list[Finding]) -> str:
    """The error a leaking test's teardown reports: a header line, then each finding's lines."""
    from pytest_leanhost.plugin.report import grouped_lines

    lines = [f"leanhost: {nodeid} leaked (checked at its teardown):"]
    lines.extend(line for line, _ in grouped_lines(failing))
    return "\n".join(lines)


def _ours(pid: int, session_id: str) -> bool:
    """Whether ``pid`` is below pytest (by its parents now) or carries the session's marker."""
    own, current = os.getpid(), pid
    for _ in range(32):  # a chain of parents, never a loop
        fields = stat_fields(current)
        if fields is None:
            break
        parent = int(fields[1])
        if parent == own:
            return True
        if parent <= 1:
            break
        current = parent
    return bool(_marked([pid], session_id, None))


def _create_times(pids: set[int]) -> dict[int, float]:
    """Each live PID's create time (the identity a deferral keeps)."""
    from pytest_leanhost.core.probe import create_time_of

    times: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(Exception):
            times[pid] = create_time_of(pid)
    return times


def _holds_something(registry: str) -> bool:
    """Whether anything stands in the registry (one ``scandir``; a non-directory counts)."""
    if not os.access(registry, os.F_OK, follow_symlinks=False):
        return False  # the common case, answered without raising
    try:
        with os.scandir(registry) as entries:
            return next(entries, None) is not None
    except OSError:
        return os.path.lexists(registry)


def _marked(pids: list[int], session_id: str, nodeid: str | None) -> set[int]:
    """Those of ``pids`` whose starting environment carries the session id (and ``nodeid``)."""
    session = f"\0{SESSION_ENV}={session_id}\0".encode()
    test = f"\0{NODEID_ENV}={nodeid}\0".encode() if nodeid is not None else b""
    own = os.getpid()
    found: set[int] = set()
    for pid in pids:
        if pid == own:
            continue
        environ = _environ_after_exec(pid)
        if environ is None:
            continue  # gone, or not ours to read (so not started by this run)
        if session in environ and test in environ:
            found.add(pid)
    return found


def _environ_after_exec(pid: int) -> bytes | None:
    """``pid``'s starting environment, NUL-framed; waits (a second at most) for an exec to show.

    Rule: a process read in the instant after its ``Popen`` returned may still show
    neither its new command line nor its new environment (the exec closed Popen's
    pipe first): an empty environment is read again once the command line shows.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            data = handle.read()
        if not data:
            from pytest_leanhost.stopping import poll_until

            poll_until(lambda: _cmdline_shows(pid), 1.0)
            with open(f"/proc/{pid}/environ", "rb") as handle:
                data = handle.read()
    except OSError:
        return None
    return b"\0" + data + b"\0"


def _cmdline_shows(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return bool(handle.read())
    except OSError:
        return True  # gone: nothing to wait for


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
