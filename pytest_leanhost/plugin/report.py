"""Reporting findings: summary lines, the JSON report, CI annotations and JUnit XML.

Every function here only formats or writes what the check found; none of them
judges or acts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from pytest_leanhost.files import write_atomically

if TYPE_CHECKING:
    import pytest

    from pytest_leanhost.core.finding import Finding
    from pytest_leanhost.plugin.earlier import EarlierLeftover
    from pytest_leanhost.plugin.outcome import RunVerdict

__all__ = [
    "JUNIT_CASE_NAME",
    "REPORT_SCHEMA_VERSION",
    "add_junit_leaks",
    "finding_line",
    "github_annotation",
    "grouped_lines",
    "summary_line",
    "write_json_report",
]

#: Version of the ``--leanhost-report`` document. 2 is additive over 1: each finding's
#: ``process``, and the top level's ``earlier_sessions`` and ``watched_registries``.
REPORT_SCHEMA_VERSION = 2

#: The JUnit test case that carries the leak check's verdict.
JUNIT_CASE_NAME = "leanhost_session_leak_check"


def summary_line(verdict: RunVerdict, session_id: str) -> str:
    """The ``leanhost:`` line: every leak of the run, or, when clean, what was checked."""
    failing = verdict.failing
    if verdict.findings or verdict.problems:
        teardown = len(verdict.found_at_teardown)
        already = f" ({teardown} reported at teardown)" if teardown else ""
        return (
            f"leanhost: {len(failing)} leak(s) failed the run{already}, "
            f"{len(verdict.findings) - len(failing)} allowed; session {session_id}"
        )
    counts = verdict.counts
    return (
        f"leanhost: no leaks ({counts.tests} tests, {counts.processes_seen} processes seen,"
        f" {counts.registries_checked} registries, checked in {counts.seconds * 1000:.0f} ms)"
    )


def finding_line(finding: Finding) -> str:
    """A leak's first line, greppable: kind, test, PID, transport, what was done, flags.

    Long paths (the record) and the detail follow on indented lines
    (:func:`finding_details`), so the first line stays short. An ambiguous start
    tick names every candidate test, never one at random.
    """
    tests = " | ".join(finding.nodeids) or finding.nodeid or "<session>"
    line = (
        f"{finding.kind} {tests} pid={_dash(finding.pid)}"
        f" transport={_dash(finding.transport)} action={finding.action}"
    )
    if finding.worker:
        line += f" worker={finding.worker}"
    if finding.allowed:
        line += " [allowed]"
    return line


def finding_details(finding: Finding, indent: str = "  ") -> list[str]:
    """The indented lines under a leak's first line: the process tree, record, detail."""
    lines: list[str] = []
    process = finding.process
    if process is not None:
        started = f"started in {process.phase}"
        if process.started_in is not None and process.started_in != finding.nodeid:
            started += f" of {process.started_in}"
        lines.append(
            f"{indent}{finding.pid} {_command(process.cmdline)}"
            f"  (age {_age(process.age_seconds)}, {started})"
        )
        depth = {finding.pid: 0}
        for child in process.descendants:
            level = depth.get(child.ppid, 0) + 1
            depth[child.pid] = level
            lines.append(f"{indent}{'   ' * (level - 1)}└─ {child.pid} {_command(child.cmdline)}")
        if process.escaped:
            lines.append(f"{indent}escaped={','.join(process.escaped)}")
        if process.ancestry:
            chain = " <- ".join(
                f"{a.pid} {_command(a.cmdline, 60)}{'' if a.alive else ' (dead)'}"
                for a in process.ancestry
            )
            lines.append(f"{indent}ancestry: {chain}")
        if process.cwd is not None:
            lines.append(f"{indent}cwd={process.cwd}")
    if finding.record is not None:
        lines.append(f"{indent}record={finding.record}")
    elif finding.registry is not None:
        lines.append(f"{indent}registry={finding.registry}")
    if finding.detail:
        lines.append(f"{indent}{finding.detail}")
    return lines


def grouped_lines(findings: Sequence[Finding]) -> list[tuple[str, bool]]:
    """The ``leanhost`` section: findings grouped by test, each with its details; red or not.

    A leaked process that descends from another leak of the same test is shown
    under it, so a server and the workers it left read as one leak.
    """
    groups: dict[str, list[Finding]] = {}
    for finding in findings:
        groups.setdefault(finding.nodeid or "<session>", []).append(finding)
    lines: list[tuple[str, bool]] = []
    for nodeid, group in groups.items():
        lines.append((f"{nodeid}: {len(group)} leak(s)", False))
        pids = {f.pid for f in group if f.pid is not None}
        parent_of: dict[Finding, int] = {}
        for finding in group:
            if finding.process is None:
                continue
            for ancestor in finding.process.ancestry:
                if ancestor.pid in pids and ancestor.pid != finding.pid:
                    parent_of[finding] = ancestor.pid
                    break
        under: dict[int, list[Finding]] = {}
        for finding, pid in parent_of.items():
            under.setdefault(pid, []).append(finding)
        for finding in group:
            if finding not in parent_of:
                _emit_tree(finding, "", under, lines)
    return lines


def _emit_tree(
    finding: Finding, indent: str, under: dict[int, list[Finding]], lines: list[tuple[str, bool]]
) -> None:
    red = not finding.allowed
    lines.append((indent + finding_line(finding), red))
    lines.extend((line, red) for line in finding_details(finding, " " * len(indent) + "  "))
    for child in under.get(finding.pid if finding.pid is not None else -1, []):
        _emit_tree(child, " " * len(indent) + "└─ ", under, lines)


def _command(cmdline: Sequence[str], width: int = 120) -> str:
    import shlex

    # One line per process: a newline inside an argument (a ``-c`` script) is shown escaped.
    text = shlex.join(cmdline).replace("\n", "\\n") if cmdline else "-"
    return text if len(text) <= width else text[: width - 3] + "..."


def _age(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.0f}min"


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def github_annotation(finding: Finding) -> str:
    """A GitHub Actions ``::error`` workflow command naming the test that leaked."""
    title = _escape_property(f"leanhost {finding.kind}")
    message = _escape_data(
        f"{finding.nodeid or 'session'} leaked: {finding.kind} pid={_dash(finding.pid)}"
        f" record={_dash(finding.record)} action={finding.action}"
    )
    return f"::error title={title}::{message}"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def write_json_report(
    path: str | os.PathLike[str],
    *,
    session_id: str,
    interrupted: bool,
    registries_checked: int,
    records_checked: int,
    check_seconds: float,
    findings: Iterable[Finding],
    earlier_sessions: Iterable[EarlierLeftover] = (),
    watched_registries: Iterable[str] = (),
) -> None:
    """Write the report document atomically (temporary file, then rename)."""
    document = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "session_id": session_id,
        "interrupted": interrupted,
        "registries_checked": registries_checked,
        "records_checked": records_checked,
        "check_seconds": round(check_seconds, 6),
        "findings": [finding.to_json() for finding in findings],
        "earlier_sessions": [leftover.to_json() for leftover in earlier_sessions],
        "watched_registries": list(watched_registries),
    }
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def add_junit_leaks(config: pytest.Config, failing: Sequence[Finding]) -> bool:
    """Add the run's failing leaks to pytest's JUnit XML, before pytest writes the file.

    Through pytest's own ``LogXML`` object: a test case for the leak check with
    one ``leanhost_leak`` property per leak of the run, and one ``failure``
    (counted in the suite's failures, so CI dashboards show the leaks like any
    failed test) for those found at session end. A leak found at its test's
    teardown is already an ``<error>`` of that test's own ``<testcase>``: listed
    here too, it fails nothing twice. Returns whether there was a JUnit file.
    """
    # pytest has no public name for its LogXML object: this stash key and
    # ``node_reporter`` are how its own ``record_xml_attribute`` fixture reaches it.
    from _pytest.junitxml import xml_key

    log_xml = config.stash.get(xml_key, None)
    if log_xml is None:
        return False
    import xml.etree.ElementTree as ET  # only when there is a JUnit file to add to

    # A test's own <testcase> is closed (finalized) at its teardown report, so a
    # leak found at session end cannot go into it through pytest's API.
    case = log_xml.node_reporter(JUNIT_CASE_NAME)
    case.add_attribute("classname", "leanhost")
    case.add_attribute("name", JUNIT_CASE_NAME)
    for finding in failing:
        case.add_property("leanhost_leak", finding_line(finding))
    at_end = [finding for finding in failing if finding.found_at == "session_end"]
    if at_end:
        teardown = len(failing) - len(at_end)
        already = f"; {teardown} more reported at their tests' teardown" if teardown else ""
        failure = ET.Element(
            "failure", message=f"leanhost: {len(at_end)} leak(s) found at session end{already}"
        )
        failure.text = "\n".join(
            "\n".join([finding_line(finding), *finding_details(finding)]) for finding in at_end
        )
        case.append(failure)  # counts it among the suite's tests and failures
    return True
