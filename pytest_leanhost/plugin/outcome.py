"""What one pytest process's check found, and the run's verdict merged from every process.

Plain frozen data, no pytest: a pytest-xdist worker sends its
:class:`WorkerReport` through ``config.workeroutput`` as JSON, the controller
rebuilds it with :meth:`WorkerReport.from_json` (which checks the shape, so a
malformed report is one clear line, never an INTERNALERROR), and
:meth:`RunVerdict.merge` is the one place where counts are summed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from pytest_leanhost.core.finding import Finding, FindingShapeError

__all__ = ["CheckCounts", "ReportShapeError", "RunVerdict", "WorkerReport"]


class ReportShapeError(ValueError):
    """A worker report whose JSON form is not the shape :meth:`WorkerReport.to_json` writes."""


class CheckCounts(NamedTuple):
    """How much one check looked at, and how long it took."""

    registries_checked: int = 0
    records_checked: int = 0
    #: Time spent checking, at teardowns and at session end.
    seconds: float = 0.0
    #: Tests run, and the run's processes seen, by this pytest process.
    tests: int = 0
    processes_seen: int = 0

    @classmethod
    def of_run(cls, own: CheckCounts, workers: Iterable[CheckCounts]) -> CheckCounts:
        """The whole run's counts: every process's summed; time is the slowest worker's plus ours.

        Workers check in parallel, the controller after them, so their times do not add up.
        """
        workers = list(workers)
        return cls(
            registries_checked=own.registries_checked + sum(w.registries_checked for w in workers),
            records_checked=own.records_checked + sum(w.records_checked for w in workers),
            seconds=max((w.seconds for w in workers), default=0.0) + own.seconds,
            tests=own.tests + sum(w.tests for w in workers),
            processes_seen=own.processes_seen + sum(w.processes_seen for w in workers),
        )


class WorkerReport(NamedTuple):
    """One pytest process's check: its findings (cleaned up, allowed marked) and what it saw."""

    findings: tuple[Finding, ...] = ()
    registries: tuple[str, ...] = ()
    counts: CheckCounts = CheckCounts()
    doctor: tuple[str, ...] = ()
    #: What waited for a wider fixture's scope, one line each.
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """The JSON-ready form a worker puts into ``config.workeroutput``."""
        return {
            "findings": [finding.to_json() for finding in self.findings],
            "registries": list(self.registries),
            "registries_checked": self.counts.registries_checked,
            "records_checked": self.counts.records_checked,
            "seconds": self.counts.seconds,
            "tests": self.counts.tests,
            "processes_seen": self.counts.processes_seen,
            "doctor": list(self.doctor),
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: object) -> WorkerReport:
        """Rebuild a report; :class:`ReportShapeError` saying what is wrong if it is not one."""
        if not isinstance(data, dict):
            raise ReportShapeError(f"expected a JSON object, got {type(data).__name__}")
        findings, registries, doctor, notes = (
            _list_of(data, key) for key in ("findings", "registries", "doctor", "notes")
        )
        if not all(isinstance(item, str) for item in [*registries, *doctor, *notes]):
            raise ReportShapeError("registries, doctor and notes must be lists of strings")
        counts = {
            key: data.get(key)
            for key in ("registries_checked", "records_checked", "tests", "processes_seen")
        }
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
            raise ReportShapeError(f"counts must be integers, got {counts}")
        seconds = data.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            raise ReportShapeError(f"seconds must be a number, got {seconds!r}")
        try:
            parsed = tuple(Finding.from_json(item) for item in findings)
        except FindingShapeError as exc:
            raise ReportShapeError(f"malformed finding: {exc}") from None
        return cls(
            findings=parsed,
            registries=tuple(str(item) for item in registries),
            counts=CheckCounts(
                registries_checked=int(data["registries_checked"]),
                records_checked=int(data["records_checked"]),
                seconds=float(seconds),
                tests=int(data["tests"]),
                processes_seen=int(data["processes_seen"]),
            ),
            doctor=tuple(str(item) for item in doctor),
            notes=tuple(str(item) for item in notes),
        )


def _list_of(data: dict[object, object], key: str) -> list[object]:
    value = data.get(key)
    if not isinstance(value, list):
        raise ReportShapeError(f"{key} must be a list, got {type(value).__name__}")
    return value


class RunVerdict(NamedTuple):
    """The run's verdict: every process's findings and counts; reports that were unreadable."""

    findings: tuple[Finding, ...] = ()
    counts: CheckCounts = CheckCounts()
    doctor: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @classmethod
    def merge(
        cls, own: WorkerReport, workers: Sequence[WorkerReport], problems: Sequence[str] = ()
    ) -> RunVerdict:
        """The controller's (or the only process's) check together with its workers' reports."""
        findings = [*(f for report in workers for f in report.findings), *own.findings]
        return cls(
            findings=tuple(sorted(findings, key=lambda f: (f.nodeid or "", f.kind, f.pid or 0))),
            counts=CheckCounts.of_run(own.counts, (report.counts for report in workers)),
            doctor=(*(line for report in workers for line in report.doctor), *own.doctor),
            problems=tuple(problems),
            notes=(*(line for report in workers for line in report.notes), *own.notes),
        )

    @property
    def failing(self) -> tuple[Finding, ...]:
        """The findings that fail the run (not allowed by the test's marker)."""
        return tuple(finding for finding in self.findings if not finding.allowed)

    @property
    def found_at_teardown(self) -> tuple[Finding, ...]:
        """The failing findings each test's own teardown already reported."""
        return tuple(finding for finding in self.failing if finding.found_at == "teardown")

    @property
    def fails_run(self) -> bool:
        """A leak that was not allowed, or a worker whose report was lost in transit."""
        return bool(self.failing or self.problems)
