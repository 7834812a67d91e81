"""Reporting findings: summary lines, the JSON report, CI annotations and JUnit XML.

Every function here only formats or writes what the check found; none of them
judges or acts. The pure formatting lives in :mod:`pytest_leanhost.core.summary`
(no pytest, for ``leanhost report merge``) and is re-exported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from pytest_leanhost.core.summary import (
    REPORT_SCHEMA_VERSION,
    finding_details,
    finding_line,
    github_annotation,
    grouped_lines,
)
from pytest_leanhost.files import write_atomically

if TYPE_CHECKING:
    import pytest

    from pytest_leanhost.core.finding import Finding
    from pytest_leanhost.plugin.earlier_sessions import EarlierLeftover
    from pytest_leanhost.plugin.outcome import RunVerdict

__all__ = [
    "JUNIT_CASE_NAME",
    "REPORT_SCHEMA_VERSION",
    "add_junit_leaks",
    "append_run_step_summary",
    "finding_details",
    "finding_line",
    "github_annotation",
    "grouped_lines",
    "summary_line",
    "write_json_report",
]

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


def append_run_step_summary(verdict: RunVerdict, session_id: str) -> str | None:
    """Append the run's verdict to the ``GITHUB_STEP_SUMMARY`` file, if one is named.

    Returns a line saying why it could not be written, else ``None``. A finding
    without a ``host`` of its own is this machine's.
    """
    import socket

    from pytest_leanhost.core.step_summary import (
        STEP_SUMMARY_ENV,
        append_step_summary,
        render_step_summary,
    )

    markdown = render_step_summary(
        [finding.to_json() for finding in verdict.findings],
        sessions=[session_id],
        registries_checked=verdict.counts.registries_checked,
        problems=verdict.problems,
        default_host=socket.gethostname(),
    )
    try:
        append_step_summary(markdown)
    except OSError as exc:
        return f"leanhost: cannot append to {STEP_SUMMARY_ENV}: {exc}"
    return None
