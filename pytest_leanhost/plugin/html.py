"""pytest-html: the leaks in its report, where teams already read their test results.

The plugin registers :class:`LeanhostHtml` only when pytest-html is loaded and writes a
report (``--html``), so a run without it imports nothing of pytest-html nor this module.
Through pytest-html's documented hooks and extras it adds:

- a ``leanhost`` section to the report's summary (``pytest_html_results_summary``):
  each leak's test, kind, PID, action and command line in a table, then the lines of
  the terminal's ``leanhost`` section (the process tree, how it escaped, the record);
- with ``--leanhost-check=test``, the leak on the leaking test's own row: an HTML extra
  attached to its teardown report, which pytest-html shows on every row of that test.

The text is the terminal's (``report.grouped_lines``), never formatted anew here.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_leanhost.core.finding import Finding

__all__ = ["LeanhostHtml", "run_leaks", "teardown_leak"]

#: The section's own look, scoped to it: a bordered table, the status in red when leaks fail.
_STYLE = (
    "<style>"
    ".leanhost table{border-collapse:collapse;margin:0.5em 0}"
    ".leanhost th,.leanhost td{border:1px solid #e6e6e6;padding:3px 8px;text-align:left;"
    "vertical-align:top}"
    ".leanhost td:first-child,.leanhost td:last-child{font-family:monospace}"
    ".leanhost .leanhost-failed{color:#d00;font-weight:bold}"
    ".leanhost pre,pre.leanhost-leak{background:#f6f6f6;padding:6px;overflow-x:auto}"
    "</style>"
)

#: The first words of the error a leaking test's teardown reports (``plugin.pertest``).
_TEARDOWN_HEADER = "leanhost: "
_TEARDOWN_MARK = " leaked (checked at its teardown):"


def run_leaks(config: pytest.Config) -> tuple[Finding, ...] | None:
    """The leaks the run's check found, or None when no verdict was reached.

    The one place this module reads the plugin's findings: the session object
    (registered as ``leanhost-session``) keeps the run's verdict, which holds every leak
    of the one ledger, those a per-test check found at a teardown included.
    """
    session = config.pluginmanager.get_plugin("leanhost-session")
    verdict = getattr(session, "verdict", None)
    if verdict is None:
        return None
    return tuple(verdict.findings)


def teardown_leak(report: pytest.TestReport) -> str | None:
    """The leak text of a teardown that ``--leanhost-check=test`` failed, else None."""
    if report.when != "teardown" or not report.failed:
        return None
    text = report.longreprtext
    first = text.split("\n", 1)[0]
    if first.startswith(_TEARDOWN_HEADER) and first.endswith(_TEARDOWN_MARK):
        return text
    for title, content in report.sections:  # beside an error of the teardown's own
        if title == "Captured leanhost teardown":
            return content
    return None


class LeanhostHtml:
    """The hooks that put the leaks into pytest-html's report."""

    def __init__(self) -> None:
        #: Node id -> leak text of each test a per-test check failed at its teardown.
        self.at_teardown: dict[str, str] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """A teardown that the per-test check failed carries the leak as an HTML extra."""
        report = yield
        text = teardown_leak(report)
        if text is not None:
            from pytest_html import extras

            shown = extras.html(f'<pre class="leanhost-leak">{html.escape(text)}</pre>')
            report.extras = [*getattr(report, "extras", []), shown]  # type: ignore[attr-defined]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Note each per-test leak (under xdist too: the controller gets every report)."""
        text = teardown_leak(report)
        if text is not None:
            self.at_teardown[report.nodeid] = text

    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
    ) -> None:
        """The ``leanhost`` section of the report's summary."""
        postfix.append(summary_html(run_leaks(session.config), self.at_teardown))


def summary_html(findings: Sequence[Finding] | None, at_teardown: dict[str, str]) -> str:
    """The summary section: the terminal's status line, a table of the leaks, their lines.

    ``findings`` is the run's one ledger, leaks found at a teardown included, so the
    section tells what the terminal, JSON and JUnit tell; ``at_teardown`` (the text
    each leaking test's teardown reported) serves only a run that reached no verdict.
    """
    from pytest_leanhost.plugin.report import grouped_lines

    parts = [_STYLE, '<div class="leanhost" id="leanhost">', "<h2>leanhost</h2>"]
    if findings is None:
        parts.append("<p>No session-end verdict: the leak check did not run.</p>")
        parts.extend(
            f'<pre class="leanhost-lines">{html.escape(text)}</pre>'
            for text in at_teardown.values()
        )
        parts.append("</div>")
        return "\n".join(parts)
    failing = [f for f in findings if not f.allowed]
    if findings:
        status = "leanhost-status leanhost-failed" if failing else "leanhost-status"
        teardown = sum(1 for f in failing if f.found_at == "teardown")
        already = f" ({teardown} reported at teardown)" if teardown else ""
        parts.append(
            f'<p class="{status}">{len(failing)} leak(s) failed the run{already}, '
            f"{len(findings) - len(failing)} allowed.</p>"
        )
        parts.append(_table(findings))
        text = "\n".join(line for line, _ in grouped_lines(findings))
        parts.append(f'<pre class="leanhost-lines">{html.escape(text)}</pre>')
    else:
        parts.append('<p class="leanhost-status">No leaks.</p>')
    parts.append("</div>")
    return "\n".join(parts)


def _table(findings: Sequence[Finding]) -> str:
    rows = [
        "<tr><th>test</th><th>kind</th><th>PID</th><th>action</th><th>found at</th>"
        "<th>command line</th></tr>"
    ]
    for finding in findings:
        tests = " | ".join(finding.nodeids) or finding.nodeid or "<session>"
        # One line per process, as in the terminal: a newline in an argument shows as \n.
        command = shlex.join(finding.process.cmdline) if finding.process is not None else ""
        command = command.replace("\n", "\\n")
        cells = (
            tests,
            finding.kind + (" (allowed)" if finding.allowed else ""),
            "-" if finding.pid is None else str(finding.pid),
            finding.action,
            finding.found_at.replace("_", " "),
            command or "-",
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return '<table class="leanhost-leaks">' + "".join(rows) + "</table>"
