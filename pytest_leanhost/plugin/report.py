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
    from pytest_leanhost.core.check import Finding

__all__ = [
    "JUNIT_CASE_NAME",
    "REPORT_SCHEMA_VERSION",
    "add_junit_failure",
    "finding_line",
    "github_annotation",
    "write_json_report",
]

#: Version of the ``--leanhost-report`` document; bumped on any incompatible change.
REPORT_SCHEMA_VERSION = 1

#: The JUnit test case that carries the leak check's verdict.
JUNIT_CASE_NAME = "leanhost_session_leak_check"


def finding_line(finding: Finding) -> str:
    """One line per leak: kind, test, PID, transport, record, and what was done."""
    line = (
        f"{finding.kind} {finding.nodeid or '<session>'} pid={_dash(finding.pid)}"
        f" transport={_dash(finding.transport)} record={_dash(finding.record)}"
        f" action={finding.action}"
    )
    if finding.worker:
        line += f" worker={finding.worker}"
    if finding.detail:
        line += f" ({finding.detail})"
    if finding.allowed:
        line += " [allowed]"
    return line


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
    }
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def add_junit_failure(xml_path: str | os.PathLike[str], failing: Sequence[Finding]) -> None:
    """Append a failing test case for the leak check to a JUnit XML file pytest wrote.

    CI dashboards that read JUnit XML then show the leaks like any failed test.
    """
    import xml.etree.ElementTree as ET  # only when there is a JUnit file to amend

    tree = ET.parse(xml_path)
    root = tree.getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return
    case = ET.SubElement(suite, "testcase", classname="leanhost", name=JUNIT_CASE_NAME, time="0")
    failure = ET.SubElement(
        case, "failure", message=f"leanhost: {len(failing)} leak(s) found at session end"
    )
    failure.text = "\n".join(finding_line(finding) for finding in failing)
    for counter in ("tests", "failures"):
        suite.set(counter, str(int(suite.get(counter, "0")) + 1))
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
