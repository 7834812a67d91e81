"""The parts of the plugin that every pytest process of a run has: one object per process.

In the order pytest calls them: session start (the session id and root, the
SIGTERM handler), each test (its node id and registry in the environment, put
back after it), the check (once, at the end of the test loop, or at session
finish when the loop did not complete), the verdict (exit status, terminal,
JUnit, JSON; not on an xdist worker, which hands its check to the controller),
unconfigure (the environment as it was).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
import types
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_leanhost.core.machine import this_machine
from pytest_leanhost.core.ownership import NODEID_ENV, SESSION_ENV, WORKER_ENV, new_session_id
from pytest_leanhost.plugin.leakcheck import LeakCheck, allowed_by_marker
from pytest_leanhost.plugin.phases import PhaseClock
from pytest_leanhost.plugin.settings import Settings
from pytest_leanhost.plugin.state import STATE_KEY, SessionState
from pytest_leanhost.record import REGISTRY_ENV, RegistryError, registry_dir

if TYPE_CHECKING:  # the check's modules (psutil among them) load at session end, not before
    from pytest_leanhost.core.finding import Finding
    from pytest_leanhost.core.lineage import Lineage, Span
    from pytest_leanhost.core.registry_snapshots import WatchedRegistries, WatchSnapshot
    from pytest_leanhost.plugin.earlier_sessions import EarlierRuns
    from pytest_leanhost.plugin.outcome import RunVerdict, WorkerReport
    from pytest_leanhost.plugin.xdist import XdistController, XdistWorker

__all__ = ["EachTest", "LeakStat", "LeanhostSession"]

#: The terminal summary's category for leaks that fail the run ("3 leaked").
LEAKED = "leaked"


class LeakStat:
    """A failing leak as an entry of ``terminalreporter.stats["leaked"]``."""

    when = "session"

    def __init__(self, finding: Finding) -> None:
        self.finding = finding
        self.nodeid = finding.nodeid or ""


class LeanhostSession:
    """One pytest process's isolation and check; the verdict too unless it is an xdist worker."""

    def __init__(
        self,
        config: pytest.Config,
        settings: Settings,
        worker: XdistWorker | None = None,
        controller: XdistController | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.worker = worker
        self.controller = controller
        self.workerid = worker.workerid if worker is not None else None
        self.state: SessionState | None = None
        self.verdict: RunVerdict | None = None
        #: The variables each test sets, as they were before the session (a nested
        #: pytest's are its outer test's).
        self._user_registry_env = os.environ.get(REGISTRY_ENV)
        self._outside_nodeid = os.environ.get(NODEID_ENV)
        self._saved_env: dict[str, str | None] = {}
        self._previous_sigterm: Any = None
        self._private_root: Path | None = None
        self._checked = False
        #: The controller's findings and those of workers on its machine (paths it may open).
        self._local_findings: list[Finding] = []
        self._each_test: EachTest | None = None
        #: Every test phase, timed, so that a leaked process's start names its phase.
        self.phases = PhaseClock()
        #: The session ledger and earlier runs' leftovers (the controller only).
        self.earlier: EarlierRuns | None = None
        #: The lineage recorder, when this process became a child subreaper.
        self.lineage: Lineage | None = None
        self._watched: tuple[WatchedRegistries, WatchSnapshot, int] | None = None
        #: A worker's spans file (a raw descriptor, appended to: one system call a test).
        self._spans_fd: int | None = None
        #: The one check pipeline and its ledger (``--leanhost-check=test`` runs it too).
        self.leak_check = LeakCheck(config, settings, self.phases)

    # -- session start -----------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Choose the session id and root, and mark the environment with them."""
        if self.worker is not None:
            # Rule: a worker on another machine adopts the session id, never a path.
            session_id = self.worker.session_id
            root = self.worker.shared_root or self._own_root(self.worker.workerid)
            if self.worker.remote:
                from pytest_leanhost.plugin.xdist import HostOnReports

                self.config.pluginmanager.register(
                    HostOnReports(self.worker.machine), "leanhost-host-on-reports"
                )
        else:
            session_id, root = new_session_id(), self._session_root()
            self._install_sigterm_handler()
            if self.controller is not None:
                self.controller.hand_out(session_id, root)
            from pytest_leanhost.plugin.earlier_sessions import EarlierRuns

            self.earlier = EarlierRuns(
                self.settings.earlier_sessions,  # type: ignore[arg-type]
                self.settings.shutdown_timeout,
            )
            self.earlier.start(session_id)
        self.state = SessionState(session_id, root, self.workerid)
        self.config.stash[STATE_KEY] = self.state
        if self.workerid is not None:
            self.state.register_worker(self.workerid, os.getpid())
            self._setenv(WORKER_ENV, self.workerid)
        else:
            # Rule: a nested pytest (pytester under an xdist worker) is no worker: what its
            # tests start must not carry the outer run's worker name.
            self._setenv(WORKER_ENV, None)
        self._setenv(SESSION_ENV, session_id)
        self._start_lineage(root)
        self._start_watch()
        self.leak_check.start(self.state, self.workerid, self.lineage, self._watched)
        if not self.config.pluginmanager.has_plugin("dsession"):
            # Rule: an xdist controller relays its workers' logstart and logfinish
            # but runs no test: only a process that runs tests marks them.
            self._each_test = EachTest(self)
            self.config.pluginmanager.register(self._each_test, "leanhost-each-test")

    def _start_lineage(self, root: Path) -> None:
        """Become a child subreaper (ini ``leanhost_subreaper``) and note what is already below.

        Where the OS has no subreapers, or with ``false``, nothing is recorded:
        the check finds the run's processes by their markers only.
        """
        if not self.settings.subreaper:
            return
        from pytest_leanhost.core.interpreter import ChildWaiters, interpreter_helpers
        from pytest_leanhost.core.lineage import Lineage, become_subreaper

        if not become_subreaper():
            return
        self.lineage = Lineage(helpers=interpreter_helpers, waiters=ChildWaiters.of_interpreter())
        self.lineage.boundary()
        if self.worker is not None and not self.worker.remote:
            # A worker's spans also go to the session root, line by line, so the
            # controller can still name the tests of a worker that died.
            self._spans_fd = os.open(
                root / f"spans-{self.workerid}.txt",
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )

    def _start_watch(self) -> None:
        """Snapshot the registries a server could reach without the variable."""
        from pytest_leanhost.core.registry_snapshots import WatchedRegistries, default_registries

        environ = dict(os.environ)
        if self._user_registry_env is not None:
            environ.pop(REGISTRY_ENV, None)
        watched = WatchedRegistries(default_registries(self.settings.watch_registries, environ))
        self._watched = (watched, watched.snapshot(), int(time.time() * 1000))

    def _session_root(self) -> Path:
        """The private directory of the session's registries (mode 0700).

        Under pytest's base temporary directory when its tmpdir plugin is on;
        pytest offers no public accessor to the factory outside a fixture, hence
        the attribute. With ``-p no:tmpdir`` a private directory of our own,
        removed at unconfigure.
        """
        factory: pytest.TempPathFactory | None = getattr(self.config, "_tmp_path_factory", None)
        if factory is None:
            self._private_root = Path(tempfile.mkdtemp(prefix="leanhost-"))
            return self._private_root
        root = factory.getbasetemp() / "leanhost"
        root.mkdir(mode=0o700, exist_ok=True)
        root.chmod(0o700)
        return root

    def _own_root(self, workerid: str) -> Path:
        """A worker on another machine: a private directory of its own machine (mode 0700).

        Not its base temporary directory, whose path xdist derives from the
        controller's; removed at unconfigure unless a record is left in it.
        """
        self._private_root = Path(tempfile.mkdtemp(prefix=f"leanhost-{workerid}-"))
        return self._private_root

    # -- each test (:class:`EachTest`) -------------------------------------------

    def _end_tests(self) -> None:
        """Close a span left open by a loop that stopped inside a test; put the variables back."""
        if self._each_test is not None:
            if self.phases.running is not None:
                self._each_test.pytest_runtest_logfinish(self.phases.running)
            self._each_test.close_spans()
        _restore(NODEID_ENV, self._outside_nodeid)
        if self.settings.isolate:
            _restore(REGISTRY_ENV, self._user_registry_env)

    # -- the check ---------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        """Check as soon as the test loop completed, before any ``pytest_sessionfinish``.

        Then every fixture is torn down (the last test's teardown ends the
        session's), what a test still holds open is still held, xdist's workers
        have reported and are not shut down yet, and pytest's JUnit file is not
        written yet, so the leaks can still go into it. A loop that did not
        complete (interrupt, ``-x``, collection errors) leaves fixtures up: then
        the check waits for session finish, after pytest tore them down.
        """
        try:
            result = yield
        finally:
            self._end_tests()
        self._check(session, junit=True)
        return result

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Check now if the test loop did not complete; then set the verdict and write it out.

        trylast: pytest has torn down every fixture by then, while what a test
        still holds open, such as a server's stdin, is still held.
        """
        if self.state is None:
            return
        # pytest's JUnit file is written by now: it has no way to add to it afterwards.
        self._check(session, junit=False)
        if self.earlier is not None:
            self.earlier.end()
        verdict = self.verdict
        if verdict is None:
            return  # an xdist worker: the controller decides
        earlier_fails = self.earlier is not None and self.earlier.fails_run
        if (verdict.fails_run or earlier_fails) and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.settings.report_path is not None:
            from pytest_leanhost.plugin.report import write_json_report

            write_json_report(
                self.settings.report_path,
                session_id=self.state.session_id,
                interrupted=int(exitstatus) == int(pytest.ExitCode.INTERRUPTED),
                registries_checked=verdict.counts.registries_checked,
                records_checked=verdict.counts.records_checked,
                check_seconds=verdict.counts.seconds,
                findings=verdict.findings,
                earlier_sessions=self.earlier.leftovers if self.earlier is not None else (),
                watched_registries=_watched_registries(),
            )
        self._count_in_summary(verdict)

    def _check(self, session: pytest.Session, *, junit: bool) -> None:
        """Check once: a worker sends its report, the controller merges and decides."""
        if self.state is None or self._checked:
            return
        self._checked = True
        own = self._check_here(session)
        if self.worker is not None:
            self.worker.deliver(own)
            return
        from pytest_leanhost.plugin.outcome import RunVerdict

        workers = self.controller.reports if self.controller is not None else []
        problems = self.controller.all_problems(self.state) if self.controller is not None else []
        self.verdict = RunVerdict.merge(own, workers, problems)
        local = self.controller.local_reports if self.controller is not None else []
        self._local_findings = [*own.findings, *(f for r in local for f in r.findings)]
        if junit and self.verdict.failing:
            from pytest_leanhost.plugin.report import add_junit_leaks

            add_junit_leaks(self.config, self.verdict.failing)

    def _check_here(self, session: pytest.Session) -> WorkerReport:
        """This process's session-end check through the one pipeline; its whole ledger reported."""
        from pytest_leanhost.plugin.outcome import CheckCounts, WorkerReport

        state = self.state
        assert state is not None
        if self.worker is not None:
            registries = state.own_registries()
        else:
            reported = self.controller.reported_registries() if self.controller else set()
            registries = {
                path: nodeid
                for path, nodeid in state.all_registries().items()
                if path not in reported
            }
            if self.lineage is not None and self.controller is not None:
                # Orphans of dead workers: seen as adopted, named by the spans they wrote.
                self.lineage.add_spans(_worker_spans(state.root, self.controller.reported_workers))
                self.lineage.boundary()
        known_pids = self.controller.known_pids() if self.controller else set()
        known_records = self.controller.known_records() if self.controller else set()
        items = {item.nodeid: item for item in session.items}

        def keep(finding: Finding) -> bool:
            # Rule: what a worker already reported is not the controller's to report again.
            if finding.kind == "leaked_process" and finding.pid in known_pids:
                return False
            return finding.record is None or finding.record not in known_records

        checked = self.leak_check.run(
            "session_end",
            registries,
            keep=keep,
            allowed=lambda finding: allowed_by_marker(items.get(finding.nodeid or ""), finding),
            doctor=self.settings.doctor,
        )
        check = self.leak_check
        # Every finding names this machine: its PID and paths mean something only here.
        machine = this_machine()
        return WorkerReport(
            findings=tuple(finding._replace(host=machine) for finding in check.ledger),
            registries=tuple(sorted(registries)),
            counts=CheckCounts(
                registries_checked=checked.registries_checked,
                records_checked=checked.records_checked,
                seconds=check.seconds,
                tests=self.phases.tests,
                processes_seen=check.processes_seen(),
            ),
            doctor=tuple(checked.doctor),
            notes=tuple(check.notes),
        )

    # -- terminal summary --------------------------------------------------------

    def _count_in_summary(self, verdict: RunVerdict) -> None:
        """Count failing leaks in the final line (``9 passed, 3 leaked in 4.53s``), in red.

        Filled in ``pytest_sessionfinish``: pytest's terminal reporter prints
        that line after every ``pytest_sessionfinish`` and ``pytest_terminal_summary``.
        """
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or not verdict.failing:
            return
        stats: dict[str, list[Any]] = reporter.stats
        stats.setdefault(LEAKED, []).extend(LeakStat(f) for f in verdict.failing)
        # pytest has no public way to colour a category of its own: it colours
        # the line red when a "failed" key is present (an empty list counts no
        # test), and the category's words by its private table.
        stats.setdefault("failed", [])
        with contextlib.suppress(ImportError, AttributeError):
            from _pytest import terminal

            terminal._color_for_type.setdefault(LEAKED, "red")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """The ``leanhost`` section (one line per leak) and, if asked, ``leanhost doctor``."""
        verdict, state = self.verdict, self.state
        if verdict is None or state is None:
            return
        from pytest_leanhost.plugin.report import github_annotation, grouped_lines, summary_line

        tr = terminalreporter
        failing = verdict.failing
        if os.environ.get("GITHUB_STEP_SUMMARY"):  # GitHub Actions: the verdict as Markdown
            from pytest_leanhost.plugin.report import append_run_step_summary

            if (problem := append_run_step_summary(verdict, state.session_id)) is not None:
                tr.line(problem, yellow=True)
        self._earlier_section(tr)
        if verdict.findings or verdict.problems:
            tr.section("leanhost", sep="=", red=verdict.fails_run, bold=True)
            for problem in verdict.problems:
                tr.line(problem, red=True)
            for line, red in grouped_lines(verdict.findings):
                tr.line(line, red=red)
            for note in verdict.notes:
                tr.line(note)
            tr.line(summary_line(verdict, state.session_id))
            if os.environ.get("GITHUB_ACTIONS") == "true":
                for finding in failing:
                    tr.line(github_annotation(finding))
        elif tr.verbosity >= 0:
            for note in verdict.notes:
                tr.line(note)
            tr.line(summary_line(verdict, state.session_id))
        if self.settings.doctor:
            tr.section("leanhost doctor", sep="=")
            for line in [*verdict.doctor, *self._default_registry_lines()]:
                tr.line(line)

    def _earlier_section(self, tr: pytest.TerminalReporter) -> None:
        """``leanhost: left by an earlier run``: each leftover and the command that stops it."""
        earlier = self.earlier
        if earlier is None or not (earlier.leftovers or earlier.problems):
            return
        tr.section("leanhost: left by an earlier run", sep="=", red=earlier.fails_run, bold=True)
        for problem in earlier.problems:
            tr.line(problem, yellow=True)
        for line in earlier.lines():
            tr.line(line, red=earlier.fails_run)

    def _default_registry_lines(self) -> list[str]:
        """The user's default registry, then the other watched ones, each as the doctor sees it."""
        environ = dict(os.environ)
        environ.pop(REGISTRY_ENV, None)
        if self._user_registry_env is not None:
            environ[REGISTRY_ENV] = self._user_registry_env
        default: Path | None = None
        try:
            default = registry_dir(environ)
        except RegistryError as exc:
            lines = [f"default registry: {exc}"]
        else:
            lines = _registry_lines("default registry", default)
        watched = self._watched[0].directories if self._watched is not None else ()
        for registry in watched:
            if registry != default:
                lines.extend(_registry_lines("watched registry", registry))
        return lines

    # -- unconfigure -------------------------------------------------------------

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Put back the environment and the SIGTERM handler; remove a private root."""
        if self.earlier is not None:
            self.earlier.end()  # a run that never reached session finish
        if self._spans_fd is not None:
            os.close(self._spans_fd)
            self._spans_fd = None
        if self.lineage is not None:
            self.lineage.close()
        for name, value in self._saved_env.items():
            _restore(name, value)
        self._saved_env.clear()
        if self._previous_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        if self._private_root is not None and not self._records_left():
            shutil.rmtree(self._private_root, ignore_errors=True)

    def _records_left(self) -> bool:
        """Whether a record in the private root is still in place (kept, or its server alive).

        Rule: only this machine's findings are looked at (a path from another
        machine's report is never opened), and only records in the private root.
        """
        root = self._private_root
        inside = str(root) + os.sep if root is not None else None
        findings = self._local_findings if self.worker is None else self.leak_check.ledger
        return inside is not None and any(
            f.record is not None and f.record.startswith(inside) and os.path.lexists(f.record)
            for f in findings
        )

    # -- helpers -----------------------------------------------------------------

    def _setenv(self, name: str, value: str | None) -> None:
        """Set (or, with None, unset) a variable; unconfigure puts the old value back."""
        self._saved_env.setdefault(name, os.environ.get(name))
        _restore(name, value)

    def _install_sigterm_handler(self) -> None:
        """Turn SIGTERM into KeyboardInterrupt, so teardown and the cleanup still run.

        pytest has no SIGTERM handler and would die at once, leaving every
        server of the run behind. A second SIGTERM is ignored while cleaning up.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # someone else handles SIGTERM; leave theirs alone
        self._previous_sigterm = signal.SIG_DFL
        signal.signal(signal.SIGTERM, _sigterm_to_keyboard_interrupt)


class EachTest:
    """Each test of this process: its node id and registry in the environment, its span timed.

    ``logstart`` comes before anything of the test runs, fixtures included: a
    process a module or session fixture starts belongs to the test whose setup
    ran it. Every process the test starts, by any means and at any depth,
    inherits both variables. The registry directory itself is left for the first
    server to create.

    Rule: between two tests the variables stay as they are, since the next
    test's start overwrites them at once (nothing in pytest's loop starts a
    process in between: two ``os.environ`` writes per test); when the loop ends,
    however it ends, the values from before the session are back
    (:meth:`LeanhostSession._end_tests`), so nothing outside a test (session
    finish included) is named after one.
    """

    def __init__(self, session: LeanhostSession) -> None:
        assert session.state is not None
        self._phases = session.phases
        self._lineage = session.lineage
        #: Start ticks per second: a phase mark's time, as the lineage's tick.
        self._ticks = 100
        if self._lineage is not None:
            from pytest_leanhost.core.lineage import clock_ticks_per_second

            self._ticks = clock_ticks_per_second()
        self._spans_fd = session._spans_fd
        #: The last span's end line, written with the next begin (or at the loop's end).
        self._span_end = ""
        self._registry_path = session.state.registry_path if session.settings.isolate else None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        """A test begins: name its node id and registry in the environment, open its span."""
        now = self._phases.begin(nodeid)
        lineage = self._lineage
        if lineage is not None:
            lineage.begin(nodeid, int(now * self._ticks))
            if self._spans_fd is not None:
                self._write_spans(f"B {lineage.last_tick} {nodeid}\n")
        environ = os.environ
        environ[NODEID_ENV] = nodeid
        if self._registry_path is not None:
            environ[REGISTRY_ENV] = self._registry_path(nodeid)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        """The test's teardown is over: close its span (its variables stay until the next test)."""
        now = self._phases.end(nodeid)
        lineage = self._lineage
        if lineage is not None:
            lineage.end(nodeid, int(now * self._ticks))
            if self._spans_fd is not None:
                self._span_end = f"E {lineage.last_tick} {nodeid}\n"

    def _write_spans(self, begin: str = "") -> None:
        """Write the last span's end (``E``) and a new span's begin (``B``), for the controller.

        Rule: a worker's span lines reach the file when the next test begins, in
        one write, or when its loop ends. A worker killed in between loses only the
        last end, nothing of a test having run since: that span stays open, and
        still names its test for what it started.
        """
        assert self._spans_fd is not None
        os.write(self._spans_fd, (self._span_end + begin).encode())
        self._span_end = ""

    def close_spans(self) -> None:
        """The test loop ended: write the last span's end."""
        if self._spans_fd is not None and self._span_end:
            self._write_spans()


def _sigterm_to_keyboard_interrupt(signum: int, frame: types.FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt("SIGTERM")


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _worker_spans(root: Path, reported: set[str]) -> list[Span]:
    """The spans that workers which sent no report wrote to the session root.

    A worker that finished normally handled its own processes; a dead one's
    orphans are now the controller's, and its spans name their tests by start tick.
    """
    from pytest_leanhost.core.lineage import Span

    spans: list[Span] = []
    for path in sorted(root.glob("spans-*.txt")):
        if path.stem[len("spans-") :] in reported:
            continue
        opened: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in path.read_text(encoding="utf-8").splitlines():
                mark, _, rest = line.partition(" ")
                tick, _, nodeid = rest.partition(" ")
                if not tick.isdigit() or not nodeid:
                    continue
                if mark == "B":
                    opened[nodeid] = int(tick)
                elif mark == "E" and nodeid in opened:
                    spans.append(Span(nodeid, opened.pop(nodeid), int(tick)))
        spans.extend(Span(nodeid, tick) for nodeid, tick in opened.items())  # died during it
    return spans


def _watched_registries() -> list[str]:
    """The default registries a server that lost the registry variable writes into."""
    from pytest_leanhost.core.registry_snapshots import default_registries

    return [str(path) for path in default_registries()]


def _registry_lines(label: str, registry: Path) -> list[str]:
    """One registry outside the session's, as ``leanhost doctor processes`` shows it."""
    from pytest_leanhost.core.doctor import inspect_registry, render_text
    from pytest_leanhost.core.registry import RegistryUnreadableError

    try:
        text = render_text(inspect_registry(registry))
    except RegistryUnreadableError as exc:
        return [f"{label} {registry}: {exc}"]
    return [f"{label} {registry}:", *(text.splitlines() or ["  (no records)"])]
