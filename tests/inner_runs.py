"""Running an inner pytest with the plugin, and finding whatever it left behind.

Every Python process an inner run starts writes down its PID and start time
(:mod:`tests.pidlog`), so a test can prove with its own eyes, never the plugin's
marker reader, that nothing of that run survived, and its teardown can stop by
exact PID whatever a broken run left, pass or fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.pidlog import PID_LOG_ENV, SITE_DIR, WrittenPid, kill_survivors, read_log, survivors
from tests.report_schema import validate_report


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
    """Runs inner suites with the plugin; every Python process they start writes its PID down."""

    def __init__(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pid_log: Path
    ) -> None:
        self.pytester = pytester
        self.pid_log = pid_log
        monkeypatch.setenv(PID_LOG_ENV, str(pid_log))
        # Each test's inner runs have their own session ledger, never the user's.
        self.sessions_dir = pid_log.parent / "sessions"
        monkeypatch.setenv("LEANHOST_SESSIONS_DIR", str(self.sessions_dir))
        pythonpath = os.environ.get("PYTHONPATH")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SITE_DIR), pythonpath])))
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
        document = json.loads(report.read_text())
        validate_report(document)  # every inner run's report, against the shipped schema
        return InnerRun(result, document)

    def written_down(self) -> list[WrittenPid]:
        """Every process the inner runs of this test wrote down (pytest itself included)."""
        return read_log(self.pid_log)

    def leftovers(self) -> list[WrittenPid]:
        """Written-down processes that are still the same process, alive and not zombies."""
        return survivors(self.pid_log)

    def assert_nothing_left(self, run: InnerRun | None = None) -> None:
        """Every process the inner runs started has exited (checked in /proc, by start time)."""
        assert self.written_down(), "no process wrote its PID down: the check would see nothing"
        assert self.leftovers() == []

    def kill_leftovers(self) -> None:
        """SIGKILL each leftover by exact PID (start time checked) and wait until it is gone."""
        kill_survivors(self.pid_log)
