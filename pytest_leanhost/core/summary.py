"""The report's words without pytest: a finding's lines, the grouped section, annotations.

Pure formatting of findings (no pytest, no psutil, nothing written; only this
machine's identity is read, once, to tell a finding of another machine), so that
both the plugin's terminal section and ``leanhost report merge`` print a leak the
same way. :mod:`pytest_leanhost.plugin.report` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pytest_leanhost.core.machine import this_machine

if TYPE_CHECKING:
    from pytest_leanhost.core.finding import Finding
    from pytest_leanhost.core.machine import Machine

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "finding_details",
    "finding_line",
    "github_annotation",
    "grouped_lines",
]

#: Version of the ``--leanhost-report`` document. 2 is additive over 1: each finding's
#: ``process``, and the top level's ``earlier_sessions`` and ``watched_registries``;
#: 3 over 2: each finding's ``found_at`` and ``host``.
REPORT_SCHEMA_VERSION = 3


def finding_line(finding: Finding, local: Machine | None = None) -> str:
    """A leak's first line, greppable: kind, test, PID, transport, what was done, flags.

    Long paths (the record) and the detail follow on indented lines
    (:func:`finding_details`), so the first line stays short. An ambiguous start
    tick names every candidate test, never one at random. ``host=`` is there
    when the finding's machine is not ``local`` (default: this process's), whose
    PID it is not.
    """
    tests = " | ".join(finding.nodeids) or finding.nodeid or "<session>"
    line = (
        f"{finding.kind} {tests} pid={_dash(finding.pid)}"
        f" transport={_dash(finding.transport)} action={finding.action}"
    )
    if finding.worker:
        line += f" worker={finding.worker}"
    if finding.host is not None:
        here = this_machine() if local is None else local
        if not finding.host.same_as(here):
            line += f" host={finding.host.label(here)}"
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
        lines.extend(
            _wrapped(
                f"{indent}{finding.pid} ",
                process.cmdline,
                f"  (age {_age(process.age_seconds)}, {started})",
            )
        )
        depth = {finding.pid: 0}
        for child in process.descendants:
            level = depth.get(child.ppid, 0) + 1
            depth[child.pid] = level
            prefix = f"{indent}{'   ' * (level - 1)}└─ {child.pid} "
            lines.extend(_wrapped(prefix, child.cmdline))
        if process.escaped:
            lines.append(f"{indent}escaped={','.join(process.escaped)}")
        for index, ancestor in enumerate(process.ancestry):
            # The launcher (the nearest ancestor) in full; the ones above it, on a line each.
            label = f"{indent}ancestry: " if index == 0 else f"{indent}       <- "
            dead = "" if ancestor.alive else " (dead)"
            if index == 0:
                lines.extend(_wrapped(f"{label}{ancestor.pid} ", ancestor.cmdline, dead))
            else:
                lines.append(f"{label}{ancestor.pid} {_command(ancestor.cmdline, 80)}{dead}")
        if process.cwd is not None:
            lines.append(f"{indent}cwd={process.cwd}")
    if finding.record is not None:
        lines.append(f"{indent}record={finding.record}")
    elif finding.registry is not None:
        lines.append(f"{indent}registry={finding.registry}")
    if finding.detail:
        lines.append(f"{indent}{finding.detail}")
    return lines


def grouped_lines(
    findings: Sequence[Finding], local: Machine | None = None
) -> list[tuple[str, bool]]:
    """The ``leanhost`` section: findings grouped by test, each with its details; red or not.

    A leaked process that descends from another leak of the same test is shown
    under it, so a server and the workers it left read as one leak. ``local`` as
    for :func:`finding_line`.
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
                _emit_tree(finding, "", under, lines, local)
    return lines


def _emit_tree(
    finding: Finding,
    indent: str,
    under: dict[int, list[Finding]],
    lines: list[tuple[str, bool]],
    local: Machine | None,
) -> None:
    red = not finding.allowed
    lines.append((indent + finding_line(finding, local), red))
    lines.extend((line, red) for line in finding_details(finding, " " * len(indent) + "  "))
    for child in under.get(finding.pid if finding.pid is not None else -1, []):
        _emit_tree(child, " " * len(indent) + "└─ ", under, lines, local)


def _command(cmdline: Sequence[str], width: int = 120) -> str:
    """A command line on one line, cut to ``width`` (for ancestors above the launcher)."""

    # One line per process: a newline inside an argument (a ``-c`` script) is shown escaped.
    text = " ".join(map(_quote, cmdline)).replace("\n", "\\n") if cmdline else "-"
    return text if len(text) <= width else text[: width - 3] + "..."


#: Where a leak's command line wraps, and how much of it is shown at most.
_WRAP_AT = 100
_SHOW_AT_MOST = 2000


def _quote(word: str) -> str:
    """A word as a shell would take it back: bare, in double quotes when that is plainer, or
    as ``shlex.quote`` writes it (a Python ``-c`` script full of ``'`` reads as written)."""
    import shlex

    quoted = shlex.quote(word)
    if quoted != word and "'" in word and not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return quoted


def _wrapped(prefix: str, cmdline: Sequence[str], suffix: str = "") -> list[str]:
    """A command line in full, wrapped between words under ``prefix``, ``suffix`` at its end.

    Rule: never cut before the arguments that tell one server from another
    (``--port 8766``); only a command line longer than ``_SHOW_AT_MOST``
    characters is cut, and the cut says how much was left out.
    """

    words = [_quote(word).replace("\n", "\\n") for word in cmdline] or ["-"]
    text_length = sum(len(word) + 1 for word in words)
    left_out = ""
    if text_length > _SHOW_AT_MOST:
        kept: list[str] = []
        total = 0
        for word in words:
            if total + len(word) + 1 > _SHOW_AT_MOST:
                break
            kept.append(word)
            total += len(word) + 1
        left_out = f" ...({text_length - total} more characters)"
        words = kept or [words[0][:_SHOW_AT_MOST]]
    room = max(40, _WRAP_AT - len(prefix))
    lines: list[str] = []
    current = ""
    for whole in words:
        word = whole
        while len(word) > room:  # one word longer than a line: split it
            if current:
                lines.append(current)
                current = ""
            cut = word.rfind(" ", 0, room) + 1  # inside a quoted script: at a space if near
            cut = cut if cut > room // 2 else room
            lines.append(word[:cut].rstrip())
            word = word[cut:]
        if current and len(current) + 1 + len(word) > room:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current + left_out)
    continuation = " " * len(prefix)
    out = [prefix + lines[0], *(continuation + line for line in lines[1:])]
    if suffix:
        if len(out[-1]) + len(suffix) <= _WRAP_AT + len(suffix) // 2:
            out[-1] += suffix
        else:
            out.append(continuation + suffix.strip())
    return out


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
