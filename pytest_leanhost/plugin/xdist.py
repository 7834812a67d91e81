"""The plugin under pytest-xdist: the worker side and the controller side, kept apart.

As pytest-xdist keeps ``WorkerInteractor`` and ``DSession`` apart, a worker
judges its own tests' registries and hands a :class:`WorkerReport` over in
``config.workeroutput``; the controller hands the session id, its session root
and its :class:`~pytest_leanhost.core.machine.Machine` to each worker in
``workerinput`` and collects the reports in ``pytest_testnodedown``. Nothing
here imports xdist: the controller's hooks are registered only when xdist is
loaded.

A worker on the controller's machine shares the session root (its registries,
its PID file, its spans, for dead-worker recovery). A worker on another
machine (``--tx ssh=``, ``--tx socket=``, its own PID or mount namespace) stands
on its own: everything it writes is under a root of its own, it never opens a
path the controller named, and what it found reaches the controller through
``workeroutput`` only. It names its machine on every test report it sends
(xdist sends a report's attributes), so that the controller can say where a
worker died, and in which tests, when no ``workeroutput`` ever comes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_leanhost.core.machine import Machine, MachineShapeError, this_machine
from pytest_leanhost.plugin.outcome import ReportShapeError, WorkerReport
from pytest_leanhost.plugin.state import STATE_KEY, SessionState

__all__ = ["HOST_ATTR", "HostOnReports", "XdistController", "XdistWorker"]

_KEY = "leanhost"
#: The ``workeroutput`` key of the machine a worker's report was made on.
_MACHINE_KEY = "leanhost_machine"
#: The test report attribute by which a worker on another machine names that machine.
HOST_ATTR = "leanhost_host"


class XdistWorker:
    """The worker side: adopts the controller's session, and its root when on its machine."""

    def __init__(self, config: pytest.Config, workerid: str, inherited: dict[str, Any]) -> None:
        self.config = config
        self.workerid = workerid
        self.session_id = str(inherited["session_id"])
        self.machine = this_machine()
        #: The controller's root, when this worker is on its machine and can use it; else None.
        self.shared_root: Path | None = None
        if _on_machine_of(inherited, self.machine):
            # Rule: a path the controller handed out is looked at on its own machine only.
            handed = Path(str(inherited["root"]))
            if handed.is_dir():
                self.shared_root = handed

    @property
    def remote(self) -> bool:
        """Whether this worker stands on its own (another machine, or a root it cannot use)."""
        return self.shared_root is None

    @classmethod
    def of(cls, config: pytest.Config) -> XdistWorker | None:
        """The worker side when this process is an xdist worker of a leanhost controller."""
        workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        # Only an xdist worker adopts the controller's session; a nested pytest never does.
        if not workerinput or _KEY not in workerinput:
            return None
        return cls(config, str(workerinput["workerid"]), workerinput[_KEY])

    def deliver(self, report: WorkerReport) -> None:
        """Hand this worker's check to the controller (read in its ``pytest_testnodedown``)."""
        output: dict[str, Any] = self.config.workeroutput  # type: ignore[attr-defined]
        output[_KEY] = report.to_json()
        output[_MACHINE_KEY] = self.machine.to_json()


def _on_machine_of(inherited: dict[str, Any], machine: Machine) -> bool:
    """Whether the controller that handed ``inherited`` out is on ``machine``.

    A controller that names no machine is taken to be on this one (as before
    machines were named); one whose machine cannot be read is not.
    """
    if "machine" not in inherited:
        return True
    try:
        return Machine.from_json(inherited["machine"]).same_as(machine)
    except MachineShapeError:
        return False


class HostOnReports:
    """A worker on another machine: its machine on every test report the controller gets."""

    def __init__(self, machine: Machine) -> None:
        self._host = machine.to_json()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Before xdist serializes the report (its attributes travel with it)."""
        setattr(report, HOST_ATTR, self._host)


class XdistController:
    """The controller side: session id, root and machine out to workers, their reports back."""

    def __init__(self) -> None:
        self.machine = this_machine()
        self.handout: dict[str, Any] | None = None  # set at session start
        self.reports: list[WorkerReport] = []
        #: The reports of workers on this machine: only their PIDs and paths mean anything here.
        self.local_reports: list[WorkerReport] = []
        self.problems: list[str] = []
        #: The workers whose report arrived (the others died, or their report was lost).
        self.reported_workers: set[str] = set()
        #: Workers on other machines, by the machine their test reports named.
        self._hosts: dict[str, Machine] = {}
        #: What each worker on another machine is running: setup reported, teardown not yet.
        self._running: dict[str, dict[str, None]] = {}
        #: Workers that went down without a report, and whether they died (an error).
        self._down: dict[str, bool] = {}

    def pytest_configure_node(self, node: Any) -> None:
        """Hand the session id, root and machine to each worker; note its gateway process."""
        if self.handout is not None:
            node.workerinput[_KEY] = dict(self.handout)
        pid = _gateway_pid(node)
        state = node.config.stash.get(STATE_KEY, None)
        if pid is not None and isinstance(state, SessionState):
            state.add_gateway(pid)

    def hand_out(self, session_id: str, root: Path) -> None:
        """What each worker adopts: the session id, and the root on this machine (session start)."""
        self.handout = {
            "session_id": session_id,
            "root": str(root),
            "machine": self.machine.to_json(),
        }

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Learn a worker's machine, and what it is running, from the reports it sends."""
        workerid = _workerid(getattr(report, "node", None))
        if workerid is None:
            return
        host = getattr(report, HOST_ATTR, None)
        if host is not None and workerid not in self._hosts:
            with contextlib.suppress(MachineShapeError):
                self._hosts[workerid] = Machine.from_json(host)
        if workerid not in self._hosts and not self._unreported(workerid):
            return  # a worker on this machine: its spans say what it ran
        running = self._running.setdefault(workerid, {})
        if report.when == "teardown":
            running.pop(report.nodeid, None)
        else:  # setup, call, or xdist's report of the test a crashed worker was running
            running[report.nodeid] = None

    def _unreported(self, workerid: str) -> bool:
        """A worker that went down, its machine not known: a crash report may name its test."""
        return workerid in self._down

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """Collect a worker's report (it arrives only when the worker finished normally)."""
        output: dict[str, Any] = getattr(node, "workeroutput", None) or {}
        workerid = _workerid(node) or "?"
        if _KEY not in output:
            self._down[workerid] = error is not None
            return
        try:
            report = WorkerReport.from_json(output[_KEY])
        except ReportShapeError as exc:
            self.problems.append(
                f"leanhost: worker {workerid} sent a malformed report ({exc});"
                " its leaks are unknown, so the run fails"
            )
            return
        self.reports.append(report)
        self.reported_workers.add(workerid)
        if self._machine_of(output).same_as(self.machine):
            self.local_reports.append(report)

    def _machine_of(self, output: dict[str, Any]) -> Machine:
        """The machine a worker's report was made on; without one, this machine (as before)."""
        if _MACHINE_KEY not in output:
            return self.machine
        try:
            return Machine.from_json(output[_MACHINE_KEY])
        except MachineShapeError:
            return Machine(hostname="?", boot_id="unknown")  # another machine, never this one

    def all_problems(self, state: SessionState) -> list[str]:
        """The malformed reports, and each worker that died where this machine cannot look.

        A worker that died on this machine is no problem: its orphans are this
        machine's processes, found through the session root's spans and lineage.
        """
        problems = list(self.problems)
        for workerid, died in self._down.items():
            host = self._hosts.get(workerid)
            if host is None and (state.has_worker(workerid) or not self._running.get(workerid)):
                continue  # on this machine (its PID file), or it ran no test
            where = host.label(self.machine) if host is not None else "another machine"
            tests = ", ".join(self._running.get(workerid, {}))
            if not died:
                what = "sent no report"
            else:
                what = f"died while running {tests}" if tests else "died between tests"
            problems.append(
                f"leanhost: worker {workerid} on {where} {what}; its processes there"
                " cannot be checked from this machine, so its leaks are unknown"
            )
        return problems

    def reported_registries(self) -> set[str]:
        """The registries a worker on this machine already checked (the controller skips them)."""
        return {path for report in self.local_reports for path in report.registries}

    def known_records(self) -> set[str]:
        """The record paths a worker on this machine already reported."""
        return {f.record for report in self.local_reports for f in report.findings if f.record}

    def known_pids(self) -> set[int]:
        """The PIDs a worker on this machine already reported (not reported again).

        Rule: a PID from another machine names nothing here, so it filters nothing.
        """
        return {
            f.pid for report in self.local_reports for f in report.findings if f.pid is not None
        }


def _workerid(node: Any) -> str | None:
    """A worker's id (``gw0``) from its node, read defensively."""
    workerinput = getattr(node, "workerinput", None)
    if isinstance(workerinput, dict) and isinstance(workerinput.get("workerid"), str):
        return str(workerinput["workerid"])
    gateway_id = getattr(getattr(node, "gateway", None), "id", None)
    return gateway_id if isinstance(gateway_id, str) else None


def _gateway_pid(node: Any) -> int | None:
    """The process that execnet started for a worker's gateway (``popen``, ``ssh``), or None.

    That process and all below it (a wrapper such as ``unshare``, the worker,
    an ``ssh`` client) are the worker's, never leaks of the controller. execnet
    keeps its ``subprocess.Popen`` at ``gateway._io.popen``; a socket gateway
    has none.
    """
    io = getattr(getattr(node, "gateway", None), "_io", None)
    pid = getattr(getattr(io, "popen", None), "pid", None)
    if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and pid != os.getpid():
        return pid
    return None
