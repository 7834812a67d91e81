"""Running an inner pytest with the plugin, and finding whatever it left behind.

Every process an inner run starts inherits a fresh marker variable, so a test
can prove nothing of that run survived, and its teardown can stop by exact PID
whatever a broken run left, pass or fail.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any

import pytest

from pytest_leanhost.core.ownership import find_marked_processes, processes_carrying
from pytest_leanhost.core.probe import ProcessTable
from pytest_leanhost.core.processes import PinnedProcess, wait_gone

#: Every process an inner run starts inherits this variable (a fresh value per test),
#: so the teardown can find and stop by exact PID whatever a broken run left behind.
INNER_MARKER_ENV = "LEANHOST_TESTS_INNER_RUN"


@dataclasses.dataclass(frozen=True)
class InnerRun:
    """One inner pytest run: its result and its ``--leanhost-report``."""

    result: pytest.RunResult
    report: dict[str, Any]

    @property
    def findings(self) -> list[tuple[str, str, str]]:
        """(kind, node id, action) of every session-end finding, sorted."""
        return sorted((f["kind"], f["nodeid"], f["action"]) for f in self.report["findings"])


class InnerPytest:
    """Runs inner suites with the plugin; finds what they left by an inherited marker."""

    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pytester = pytester
        self.marker = f"{INNER_MARKER_ENV}={secrets.token_hex(8)}"
        name, _, value = self.marker.partition("=")
        monkeypatch.setenv(name, value)
        # Only the plugins a run names load: a start-up of a fraction of a second.
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")

    def run(self, *args: str) -> InnerRun:
        """Run pytest with the plugin, a short grace and a JSON report, plus ``args``."""
        report = self.pytester.path / "leanhost-report.json"
        report.unlink(missing_ok=True)
        result = self.pytester.runpytest_subprocess(
            "-p",
            "leanhost",
            "-o",
            "leanhost_grace=0.3",
            "--leanhost-report",
            str(report),
            *args,
            timeout=120,
        )
        assert report.exists(), result.stdout.str() + result.stderr.str()
        return InnerRun(result, json.loads(report.read_text()))

    def leftovers(self) -> list[PinnedProcess]:
        """Live processes (not zombies) that an inner run of this test started."""
        name, _, value = self.marker.partition("=")
        found = []
        for pid, marked in processes_carrying(name, value, ProcessTable.snapshot()).items():
            proc = PinnedProcess(pid, marked.create_time)
            if not proc.is_gone():  # still the one we found
                found.append(proc)
        return found

    def assert_nothing_left(self, run: InnerRun) -> None:
        """No process carrying the run's session id (or started by it at all) is alive."""
        assert find_marked_processes(run.report["session_id"], ProcessTable.snapshot()) == {}
        assert [proc.pid for proc in self.leftovers()] == []

    def kill_leftovers(self) -> None:
        """SIGKILL each leftover by exact PID (its create time checked) and wait until it is gone.

        Never reaped here: a leftover's parent, or the subreaper it was reparented to,
        waits for it; a zombie counts as gone.
        """
        procs = [proc for proc in self.leftovers() if proc.kill()]
        wait_gone(procs, 5)
