"""The GitHub Actions step summary: a Markdown section with the run's leaks, or one line if none.

GitHub shows the Markdown that a job step appends to the file named by
``GITHUB_STEP_SUMMARY`` on the run's page. :func:`render_step_summary` is pure
(findings in their report JSON form in, Markdown out), so the plugin and
``leanhost report merge`` write the same section; :func:`append_step_summary`
is the one write. No pytest, standard library only.

Every cell that carries free text (a test id, a host, a command line) is a code
span: nothing in it is read as Markdown or HTML. A ``|`` inside is escaped as
``\\|`` (GitHub's table rule, which holds inside code spans too), a newline is
shown as ``\\n``, and a backtick lengthens the span's fence, so no value can
break a row or the table.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence

__all__ = [
    "MAX_ROWS",
    "STEP_SUMMARY_ENV",
    "append_step_summary",
    "host_name",
    "render_step_summary",
]

#: The variable GitHub Actions sets to the step's summary file.
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"

#: At most this many rows: GitHub takes up to 1 MiB of summary per step.
MAX_ROWS = 200

#: A command cell longer than this is cut (the JSON report keeps the whole line).
_COMMAND_WIDTH = 200


def render_step_summary(
    findings: Sequence[Mapping[str, object]],
    *,
    sessions: Sequence[str],
    registries_checked: int,
    reports: int = 0,
    problems: Sequence[str] = (),
    default_host: str = "-",
) -> str:
    """The Markdown section for one verdict: a heading, then a table of leaks or one line.

    ``findings`` are report objects (``Finding.to_json()`` or a report file's
    entries; keys a finding does not have are shown as ``-``). ``reports`` is how
    many report files were merged (0: one session's own run). ``problems`` are
    lines that failed the run without a finding (a worker's lost report).
    ``default_host`` stands for a finding that carries no ``host``.
    """
    failing = sum(1 for finding in findings if not finding.get("allowed"))
    allowed = len(findings) - failing
    if failing:
        heading = f"{failing} leak(s) failed the run" + (f", {allowed} allowed" if allowed else "")
    elif allowed:
        heading = f"no leak failed the run, {allowed} allowed"
    elif problems:
        heading = "the leak check is incomplete"
    else:
        heading = "no leaks"
    lines = [f"### leanhost: {heading}", ""]
    if findings:
        lines.append("| Test | Kind | PID | Host | Command |")
        lines.append("| --- | --- | ---: | --- | --- |")
        lines.extend(_row(finding, default_host) for finding in findings[:MAX_ROWS])
        lines.append("")
        if len(findings) > MAX_ROWS:
            lines.append(f"... and {len(findings) - MAX_ROWS} more: see the JSON report.")
            lines.append("")
    for problem in problems:
        lines.append(f"- {_code(problem)}")
    if problems:
        lines.append("")
    where = ", ".join(_code(session) for session in sessions) or "-"
    scope = f"{reports} report(s) merged, session(s) {where}" if reports else f"session {where}"
    if findings:
        lines.append(f"{scope}; {registries_checked} registries checked.")
    else:
        lines.append(f"Nothing leaked: {registries_checked} registries checked, {scope}.")
    return "\n" + "\n".join(lines) + "\n"


def append_step_summary(markdown: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Append ``markdown`` to the step summary file; its path, or ``None`` when none is set.

    An ``OSError`` (a path that cannot be written) is the caller's to report.
    """
    path = (os.environ if environ is None else environ).get(STEP_SUMMARY_ENV)
    if not path:
        return None
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(markdown)
    return path


def host_name(host: object, default: str = "-") -> str:
    """A finding's ``host`` as one word: the string itself, or a host object's ``hostname``."""
    if isinstance(host, Mapping):
        host = host.get("hostname", host.get("name"))
    if isinstance(host, str) and host:
        return host
    return default


def _row(finding: Mapping[str, object], default_host: str) -> str:
    nodeids = finding.get("nodeids")
    if isinstance(nodeids, list) and nodeids:
        test = " | ".join(str(nodeid) for nodeid in nodeids)
    else:
        test = str(finding.get("nodeid") or "<session>")
    kind = str(finding.get("kind", "-")) + (" (allowed)" if finding.get("allowed") else "")
    pid = finding.get("pid")
    process = finding.get("process")
    cmdline = process.get("cmdline") if isinstance(process, Mapping) else None
    command = shlex.join(str(arg) for arg in cmdline) if isinstance(cmdline, list) else ""
    if len(command) > _COMMAND_WIDTH:
        command = command[: _COMMAND_WIDTH - 3] + "..."
    host = host_name(finding.get("host"), default_host)
    cells = [
        _code(test),
        _code(kind),
        str(pid) if isinstance(pid, int) else "-",
        _code(host) if host != "-" else "-",
        _code(command) if command else "-",
    ]
    return "| " + " | ".join(cells) + " |"


def _code(text: str) -> str:
    """``text`` as a Markdown code span that stays on its line and inside its table cell."""
    text = text.replace("\r\n", "\n").replace("\n", "\\n").replace("\r", "\\r")
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`"):
        text = f" {text} "
    return fence + text.replace("|", "\\|") + fence
