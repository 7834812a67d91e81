"""The pytest plugin ``leanhost``: isolated registries, server fixtures and the leak check.

Read top to bottom: options, then configure (settings validated, the session
object registered, the xdist hooks only when xdist is loaded), then the
session object's hooks in the order pytest calls them: session start (the
session id and root), each test (its registry and node id in the environment),
session finish (the check, then the cleanup), the terminal summary, unconfigure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_leanhost.core.kinds import LEAK_KINDS
from pytest_leanhost.core.ownership import NODEID_ENV, SESSION_ENV, WORKER_ENV, new_session_id
from pytest_leanhost.plugin.fixtures import (
    leanhost_doctor,
    leanhost_registry,
    leanhost_server,
    leanhost_server_command,
)
from pytest_leanhost.plugin.settings import SETTINGS_KEY, Settings, add_options, read_settings
from pytest_leanhost.plugin.state import STATE_KEY, SessionState
from pytest_leanhost.record import REGISTRY_ENV, RegistryError, registry_dir

if TYPE_CHECKING:  # the check's modules (psutil among them) load at session end, not before
    from pytest_leanhost.core.check import Finding, SessionScan

__all__ = [
    "leanhost_doctor",
    "leanhost_registry",
    "leanhost_server",
    "leanhost_server_command",
]

_ALLOW_MARKER = (
    "leanhost_allow(*kinds): let this test leave the named leak kinds ("
    + ", ".join(LEAK_KINDS)
    + "; none named: all kinds); they are still cleaned up and reported, but do not fail the run"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``leanhost`` option group and ini values."""
    add_options(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Validate the settings and register the session object (and its xdist hooks)."""
    config.addinivalue_line("markers", _ALLOW_MARKER)
    settings = read_settings(config)
    config.stash[SETTINGS_KEY] = settings
    plugin = LeanhostPlugin(config, settings)
    config.pluginmanager.register(plugin, "leanhost-session")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(plugin), "leanhost-xdist")


class LeanhostPlugin:
    """One test run's isolation, leak check and report (one per pytest process)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        self.worker: str | None = workerinput["workerid"] if workerinput else None
        self.state: SessionState | None = None
        self.scan: SessionScan | None = None
        self.findings: list[Finding] = []
        self.interrupted = False
        self.doctor_lines: list[str] = []
        self.worker_reports: list[dict[str, Any]] = []
        self._user_registry_env = os.environ.get(REGISTRY_ENV)
        self._saved_env: dict[str, str | None] = {}
        self._previous_sigterm: Any = None

    # -- session start -----------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Choose the session id and root, and mark the environment with them."""
        workerinput: dict[str, Any] | None = getattr(self.config, "workerinput", None)
        inherited = workerinput.get("leanhost") if workerinput else None
        if inherited is not None:
            # Only an xdist worker adopts the controller's session; a nested pytest never does.
            session_id, root = str(inherited["session_id"]), Path(inherited["root"])
        else:
            session_id = new_session_id()
            root = self.config._tmp_path_factory.getbasetemp() / "leanhost"  # type: ignore[attr-defined]
            root.mkdir(mode=0o700, exist_ok=True)
            root.chmod(0o700)
            self._install_sigterm_handler()
        self.state = SessionState(session_id, root, self.worker)
        self.config.stash[STATE_KEY] = self.state
        if self.worker is not None:
            self.state.register_worker(self.worker, os.getpid())
        self._setenv(SESSION_ENV, session_id)
        if self.worker is not None:
            self._setenv(WORKER_ENV, self.worker)
        # Saved once here, restored at unconfigure; each test then only sets them.
        self._saved_env.setdefault(NODEID_ENV, os.environ.get(NODEID_ENV))
        self._saved_env.setdefault(REGISTRY_ENV, os.environ.get(REGISTRY_ENV))

    # -- each test ---------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """From setup to teardown, name the test's registry and node id in the environment.

        Every process the test starts, by any means and at any depth, inherits
        both. The directory itself is left for the first server to create. The
        values stay until the next test replaces them; the originals come back
        at unconfigure (nothing runs between two tests' protocols).
        """
        assert self.state is not None
        environ = os.environ
        environ[NODEID_ENV] = item.nodeid
        if self.settings.isolate:
            environ[REGISTRY_ENV] = self.state.registry_path(item.nodeid)

    # -- session finish ----------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Check what the session left, clean up what is provably ours, set the verdict.

        trylast: session-scoped fixtures are torn down by then (their servers
        are stopped and are no leak), while what a test still holds open, such
        as a server's stdin, is still held, so such a leak is still visible.
        """
        state = self.state
        if state is None:
            return
        from pytest_leanhost.core.check import Finding, clean_up, scan_session

        self.interrupted = int(exitstatus) == int(pytest.ExitCode.INTERRUPTED)
        if self.worker is not None:
            registries = state.own_registries()
        else:
            reported = {path for report in self.worker_reports for path in report["registries"]}
            registries = {
                path: nodeid
                for path, nodeid in state.all_registries().items()
                if path not in reported
            }
        scan = scan_session(
            registries,
            state.session_id,
            exclude_pids=state.worker_pids(),
            grace=self.settings.grace,
            worker=self.worker,
            only_worker=self.worker,
        )
        known_pids = {
            finding["pid"] for report in self.worker_reports for finding in report["findings"]
        }
        findings = [
            finding
            for finding in scan.findings
            if not (finding.kind == "leaked_process" and finding.pid in known_pids)
        ]
        _mark_allowed(session, findings)
        if self.settings.doctor:
            self.doctor_lines = _doctor_lines(scan)
        if not self.settings.keep_leaks:
            clean_up(findings, self.settings.shutdown_timeout)
        if self.worker is not None:
            self.config.workeroutput["leanhost"] = {  # type: ignore[attr-defined]
                "findings": [finding.to_json() for finding in findings],
                "registries": sorted(registries),
                "registries_checked": scan.registries_checked,
                "records_checked": scan.records_checked,
                "seconds": scan.seconds,
                "doctor": self.doctor_lines,
            }
            return
        for report in self.worker_reports:
            findings = [*map(Finding.from_json, report["findings"]), *findings]
            self.doctor_lines = [*report["doctor"], *self.doctor_lines]
        self.findings = sorted(findings, key=lambda f: (f.nodeid or "", f.kind, f.pid or 0))
        self.scan = scan
        if any(not finding.allowed for finding in findings) and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self._write_outputs(state)

    def check_seconds(self) -> float:
        """Wall time of the session-end check: the slowest worker's, then the controller's."""
        assert self.scan is not None
        workers = [float(r.get("seconds", 0.0)) for r in self.worker_reports]
        return max(workers, default=0.0) + self.scan.seconds

    def checked(self, key: str) -> int:
        """A count of the whole run (``registries_checked``, ``records_checked``)."""
        assert self.scan is not None
        own = int(getattr(self.scan, key))
        return own + sum(int(report[key]) for report in self.worker_reports)

    def _write_outputs(self, state: SessionState) -> None:
        from pytest_leanhost.plugin.report import add_junit_failure, write_json_report

        if self.settings.report_path is not None:
            write_json_report(
                self.settings.report_path,
                session_id=state.session_id,
                interrupted=self.interrupted,
                registries_checked=self.checked("registries_checked"),
                records_checked=self.checked("records_checked"),
                check_seconds=self.check_seconds(),
                findings=self.findings,
            )
        xmlpath = getattr(self.config.option, "xmlpath", None)
        failing = [finding for finding in self.findings if not finding.allowed]
        if xmlpath and failing and os.path.exists(xmlpath):
            add_junit_failure(xmlpath, failing)

    # -- terminal summary --------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """The ``leanhost`` section (one line per leak) and, if asked, ``leanhost doctor``."""
        if self.worker is not None or self.state is None or self.scan is None:
            return
        from pytest_leanhost.plugin.report import finding_line, github_annotation

        tr = terminalreporter
        failing = [finding for finding in self.findings if not finding.allowed]
        registries = self.checked("registries_checked")
        if self.findings:
            tr.section("leanhost", sep="=", red=bool(failing), bold=True)
            for finding in self.findings:
                tr.line(finding_line(finding), red=not finding.allowed)
            tr.line(
                f"leanhost: {len(failing)} leak(s) failed the run, "
                f"{len(self.findings) - len(failing)} allowed; session {self.state.session_id}"
            )
            if os.environ.get("GITHUB_ACTIONS") == "true":
                for finding in failing:
                    tr.line(github_annotation(finding))
        elif tr.verbosity >= 0:
            tr.line(
                f"leanhost: no leaks ({registries} registries checked"
                f" in {self.check_seconds() * 1000:.0f} ms)"
            )
        if self.settings.doctor:
            tr.section("leanhost doctor", sep="=")
            for line in [*self.doctor_lines, *self._default_registry_lines()]:
                tr.line(line)

    def _default_registry_lines(self) -> list[str]:
        environ = dict(os.environ)
        environ.pop(REGISTRY_ENV, None)
        if self._user_registry_env is not None:
            environ[REGISTRY_ENV] = self._user_registry_env
        try:
            registry = registry_dir(environ)
        except RegistryError as exc:
            return [f"default registry: {exc}"]
        from pytest_leanhost.core.doctor import inspect_registry, render_text
        from pytest_leanhost.core.registry import RegistryUnreadableError

        try:
            text = render_text(inspect_registry(registry))
        except RegistryUnreadableError as exc:
            return [f"default registry {registry}: {exc}"]
        return [f"default registry {registry}:", *(text.splitlines() or ["  (no records)"])]

    # -- unconfigure -------------------------------------------------------------

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Put back the environment and the SIGTERM handler as they were."""
        for name, value in self._saved_env.items():
            _restore(name, value)
        self._saved_env.clear()
        if self._previous_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    # -- helpers -----------------------------------------------------------------

    def _setenv(self, name: str, value: str) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

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


def _sigterm_to_keyboard_interrupt(signum: int, frame: types.FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt("SIGTERM")


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _mark_allowed(session: pytest.Session, findings: list[Finding]) -> None:
    """Mark findings of tests that allow their kind with ``@pytest.mark.leanhost_allow``."""
    if not findings:
        return
    items = {item.nodeid: item for item in session.items}
    for finding in findings:
        item = items.get(finding.nodeid) if finding.nodeid else None
        if item is None:
            continue
        for marker in item.iter_markers(name="leanhost_allow"):
            if not marker.args or finding.kind in marker.args:
                finding.allowed = True


def _doctor_lines(scan: SessionScan) -> list[str]:
    """The doctor lines of every registry the session used, by test, before any cleanup."""
    from pytest_leanhost.core.doctor import render_text

    lines: list[str] = []
    for registry, judged in sorted(scan.judged.items()):
        nodeid = scan.nodeids.get(registry)
        lines.append(f"{nodeid or Path(registry).name} (registry {registry}):")
        lines.extend(render_text(judged).splitlines() or ["  (no records)"])
    return lines


class XdistHooks:
    """pytest-xdist hooks, registered only when xdist is loaded (as pytest-randomly does)."""

    def __init__(self, plugin: LeanhostPlugin) -> None:
        self.plugin = plugin

    def pytest_configure_node(self, node: Any) -> None:
        """Hand the controller's session id and root to each worker."""
        state = self.plugin.state
        if state is not None:
            node.workerinput["leanhost"] = {"session_id": state.session_id, "root": str(state.root)}

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """Collect a worker's findings (they arrive only when it finished normally)."""
        report = getattr(node, "workeroutput", {}).get("leanhost")
        if report is not None:
            self.plugin.worker_reports.append(report)
