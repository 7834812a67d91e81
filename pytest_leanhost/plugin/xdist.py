"""The plugin under pytest-xdist: the worker side and the controller side, kept apart.

As pytest-xdist keeps ``WorkerInteractor`` and ``DSession`` apart, a worker
judges its own tests' registries and hands a :class:`WorkerReport` over in
``config.workeroutput``; the controller hands the session id and root to each
worker in ``workerinput`` and collects the reports in ``pytest_testnodedown``.
They talk through those two dictionaries only. Nothing here imports xdist: the
controller's hooks are registered only when xdist is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_leanhost.plugin.outcome import ReportShapeError, WorkerReport

__all__ = ["XdistController", "XdistWorker"]

_KEY = "leanhost"


class XdistWorker:
    """The worker side: adopts the controller's session, sends its check back."""

    def __init__(self, config: pytest.Config, workerid: str, inherited: dict[str, Any]) -> None:
        self.config = config
        self.workerid = workerid
        self.session_id = str(inherited["session_id"])
        self.root = Path(inherited["root"])

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
        self.config.workeroutput[_KEY] = report.to_json()  # type: ignore[attr-defined]


class XdistController:
    """The controller side: session id and root out to workers, their reports back."""

    def __init__(self) -> None:
        self.handout: dict[str, str] | None = None  # set at session start
        self.reports: list[WorkerReport] = []
        self.problems: list[str] = []
        #: The workers whose report arrived (the others died, or their report was lost).
        self.reported_workers: set[str] = set()

    def pytest_configure_node(self, node: Any) -> None:
        """Hand the controller's session id and root to each worker."""
        if self.handout is not None:
            node.workerinput[_KEY] = dict(self.handout)

    def hand_out(self, session_id: str, root: Path) -> None:
        """What each worker adopts: the session id and root (called at session start)."""
        self.handout = {"session_id": session_id, "root": str(root)}

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """Collect a worker's report (it arrives only when the worker finished normally)."""
        output: dict[str, Any] = getattr(node, "workeroutput", None) or {}
        if _KEY not in output:
            return
        try:
            self.reports.append(WorkerReport.from_json(output[_KEY]))
            workerinput = getattr(node, "workerinput", None) or {}
            self.reported_workers.add(str(workerinput.get("workerid", "")))
        except ReportShapeError as exc:
            workerid = getattr(node, "gateway", None) and node.gateway.id
            self.problems.append(
                f"leanhost: worker {workerid or '?'} sent a malformed report ({exc});"
                " its leaks are unknown, so the run fails"
            )

    def reported_registries(self) -> set[str]:
        """The registries some worker already checked (the controller skips them)."""
        return {path for report in self.reports for path in report.registries}

    def known_records(self) -> set[str]:
        """The record paths some worker already reported."""
        return {f.record for report in self.reports for f in report.findings if f.record}

    def known_pids(self) -> set[int]:
        """The PIDs some worker already reported (the controller does not report them again)."""
        return {f.pid for report in self.reports for f in report.findings if f.pid is not None}
