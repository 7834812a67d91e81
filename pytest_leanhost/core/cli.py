"""The ``leanhost`` command: ``doctor processes``, ``doctor sessions`` and ``report merge``.

Exit status 0 when the listing was produced (``report
merge``: when no finding fails the run), 1 when it could not be read or an action
failed (or, with ``--check``, a record is not clean; ``report merge``: a finding
fails the run), 2 for a usage error or a file that is not a leanhost report. See
docs/reference/cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_leanhost.core.doctor import (
    cleanup_stale_records,
    inspect_registry,
    render_json,
    render_text,
)
from pytest_leanhost.core.earlier_sessions import (
    EarlierSessions,
    LeftoverStop,
    SessionsDirError,
    leftover_lines,
    scan_earlier_sessions,
    sessions_dir,
    terminate_leftovers,
)
from pytest_leanhost.core.registry import RegistryUnreadableError
from pytest_leanhost.record import RegistryError, registry_dir

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command's parser; every option is described in ``--help``."""
    parser = argparse.ArgumentParser(
        prog="leanhost",
        description=(
            "Diagnostics for MCP servers registered in a lean-host-mcp process registry, "
            "and the reports of pytest-leanhost runs."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    doctor = commands.add_parser("doctor", help="inspect registered server processes")
    topics = doctor.add_subparsers(dest="topic", metavar="TOPIC", required=True)
    processes = topics.add_parser(
        "processes",
        help="list registry records and flag dead, reused, orphaned and corrupt ones",
        description=(
            "List the process records of a registry, one line each, as "
            "`lean-host-mcp doctor processes` does, judged against one snapshot "
            "of the process table. Never signals a process."
        ),
    )
    processes.add_argument(
        "--cleanup-stale-records",
        action="store_true",
        help="remove registry records whose PID is no longer alive (or was reused)",
    )
    processes.add_argument(
        "--json", action="store_true", help="print one JSON document instead of lines"
    )
    processes.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when any record is stale, orphaned, reused or corrupt",
    )
    processes.add_argument(
        "--registry",
        metavar="DIR",
        help="read this registry directory (default: $LEAN_HOST_MCP_PROCESS_REGISTRY_DIR, "
        "else <user cache dir>/lean-host-mcp/processes)",
    )
    sessions = topics.add_parser(
        "sessions",
        help="list (and stop) processes left alive by test runs that were killed outright",
        description=(
            "List live processes that carry the LEANHOST_SESSION of a run whose pytest "
            "process is gone (SIGKILL, OOM kill, CI timeout), as its session ledger "
            "proves. A leftover that carried no marker cannot be found once its pytest "
            "died."
        ),
    )
    sessions.add_argument(
        "--terminate",
        action="store_true",
        help="stop every listed process: exact PID, create time and marker checked "
        "right before SIGTERM, then SIGKILL",
    )
    sessions.add_argument(
        "--json", action="store_true", help="print one JSON document instead of lines"
    )
    sessions.add_argument(
        "--sessions-dir",
        metavar="DIR",
        help="read this ledger directory (default: $LEANHOST_SESSIONS_DIR, "
        "else <user cache dir>/pytest-leanhost/sessions)",
    )
    sessions.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long each of SIGTERM and SIGKILL may take (default 5)",
    )
    report = commands.add_parser("report", help="combine --leanhost-report files")
    actions = report.add_subparsers(dest="topic", metavar="ACTION", required=True)
    merge = actions.add_parser(
        "merge",
        help="one verdict and one report from the reports of several shards",
        description=(
            "Read the --leanhost-report files of several runs (the shards of a suite split "
            "across CI jobs), print one leanhost summary as a run prints it, and exit 1 when "
            "any leak fails the run, 0 when none does, 2 when a file is not a leanhost report "
            "or has an unknown schema_version. With GITHUB_STEP_SUMMARY set, also append the "
            "merged verdict there as Markdown. Reads only the reports: no process is looked "
            "at or signalled."
        ),
    )
    merge.add_argument("reports", nargs="+", metavar="REPORT", help="a --leanhost-report file")
    merge.add_argument(
        "--json",
        metavar="OUT",
        help="write the merged report to OUT (the same JSON Schema; each finding keeps "
        "its test and host and gains its shard's session_id; a shards list names the inputs)",
    )
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number of seconds")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "report":
        return _report_merge(args)
    if args.topic == "sessions":
        return _doctor_sessions(args)
    try:
        registry = args.registry if args.registry else str(registry_dir())
    except RegistryError as exc:
        print(f"leanhost: error: {exc}", file=sys.stderr)
        return 2
    try:
        judged = inspect_registry(registry)
    except RegistryUnreadableError as exc:
        print(f"leanhost: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(render_json(registry, judged), indent=2) + "\n")
    else:
        sys.stdout.write(render_text(judged))
    status = 0
    if args.cleanup_stale_records:
        result = cleanup_stale_records(judged, verbose=True)
        for path, reason in result.failed:
            print(f"leanhost: error: cannot remove stale record {path}: {reason}", file=sys.stderr)
            status = 1
    if args.check and any(item.is_problem for item in judged):
        status = 1
    return status


def _doctor_sessions(args: argparse.Namespace) -> int:
    """``leanhost doctor sessions``: list earlier runs' leftovers; ``--terminate`` stops them."""
    try:
        directory = Path(args.sessions_dir) if args.sessions_dir else sessions_dir()
    except SessionsDirError as exc:
        print(f"leanhost: error: {exc}", file=sys.stderr)
        return 2
    try:
        scan = scan_earlier_sessions(None, directory=directory)
    except SessionsDirError as exc:
        print(f"leanhost: error: {exc}", file=sys.stderr)
        return 1
    for problem in scan.problems:
        print(
            f"leanhost: warning: {problem.path} is not a session ledger entry "
            f"({problem.reason}); left in place",
            file=sys.stderr,
        )
    stopped: list[LeftoverStop] = []
    if args.terminate and scan.leftovers:
        stopped = terminate_leftovers(scan.leftovers, args.timeout)
        # Entries whose leftovers are all gone now prove nothing more: a rescan removes them.
        scan_earlier_sessions(None, directory=directory)
    failed = [result for result in stopped if result.action in ("refused", "failed")]
    for result in failed:
        print(
            f"leanhost: error: pid={result.leftover.pid} not stopped: {result.reason}",
            file=sys.stderr,
        )
    if args.json:
        document = _sessions_json(scan, stopped)
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(_sessions_text(scan, stopped))
    return 1 if failed else 0


def _sessions_text(scan: EarlierSessions, stopped: list[LeftoverStop]) -> str:
    actions = {result.leftover.pid: result for result in stopped}
    lines: list[str] = []
    for leftover in scan.leftovers:
        lines.extend(leftover_lines([leftover]))
        result = actions.get(leftover.pid)
        if result is not None:
            lines.append(f"  action={result.action}")
    count, sessions = len(scan.leftovers), len(scan.sessions)
    if not count:
        lines.append("leanhost: no process left by an earlier run")
    else:
        summary = (
            f"leanhost: {count} process{'es' if count != 1 else ''} left by "
            f"{sessions} earlier session{'s' if sessions != 1 else ''}"
        )
        if stopped:
            done = sum(result.action in ("terminated", "killed", "gone") for result in stopped)
            summary += f"; {done} stopped, {count - done} not"
        lines.append(summary)
    return "".join(line + "\n" for line in lines)


def _sessions_json(scan: EarlierSessions, stopped: list[LeftoverStop]) -> dict[str, Any]:
    actions = {result.leftover.pid: result for result in stopped}
    sessions = []
    for entry in scan.sessions:
        processes = []
        for leftover in scan.leftovers:
            if leftover.session_id != entry.session_id:
                continue
            result = actions.get(leftover.pid)
            processes.append(
                {
                    "pid": leftover.pid,
                    "create_time": leftover.create_time,
                    "cmdline": list(leftover.cmdline),
                    "age_seconds": round(leftover.age_seconds, 3),
                    "exact_terminate": f"kill -TERM {leftover.pid}",
                    "action": "none" if result is None else result.action,
                    "reason": "" if result is None else result.reason,
                }
            )
        sessions.append(
            {
                "session_id": entry.session_id,
                "pytest_pid": entry.pytest_pid,
                "started_unix": entry.started_unix,
                "cwd": entry.cwd,
                "argv": list(entry.argv),
                "ledger": entry.path,
                "processes": processes,
            }
        )
    return {
        "schema_version": 1,
        "sessions": sessions,
        "problems": [{"path": p.path, "reason": p.reason} for p in scan.problems],
    }


def _report_merge(args: argparse.Namespace) -> int:
    """``leanhost report merge``: read every report, print the merged summary, write, exit."""
    from pytest_leanhost.core.merge import ReportFileError, merge_reports, read_report

    shards, broken = [], False
    for path in args.reports:
        try:
            shards.append(read_report(path))
        except ReportFileError as exc:
            print(f"leanhost: error: {exc}", file=sys.stderr)
            broken = True
    if broken:
        return 2
    merged = merge_reports(shards)
    for warning in merged.warnings:
        print(f"leanhost: warning: {warning}", file=sys.stderr)
    from pytest_leanhost.core.merge import summary_lines

    lines = [_section("leanhost"), *(line for line, _ in summary_lines(merged))]
    sys.stdout.write("".join(line + "\n" for line in lines))
    status = 1 if merged.failing else 0
    if args.json:
        from pytest_leanhost.files import write_atomically

        text = json.dumps(merged.document, indent=2) + "\n"
        try:
            write_atomically(args.json, text.encode("utf-8"))
        except OSError as exc:
            print(f"leanhost: error: cannot write {args.json}: {exc}", file=sys.stderr)
            return 2
    from pytest_leanhost.core.step_summary import (
        STEP_SUMMARY_ENV,
        append_step_summary,
        render_step_summary,
    )

    if os.environ.get(STEP_SUMMARY_ENV):
        document = merged.document
        markdown = render_step_summary(
            document["findings"],
            sessions=[str(entry.get("session_id", "-")) for entry in document["shards"]],
            registries_checked=document["registries_checked"],
            reports=len(document["shards"]),
        )
        try:
            append_step_summary(markdown)
        except OSError as exc:
            print(f"leanhost: warning: cannot append to {STEP_SUMMARY_ENV}: {exc}", file=sys.stderr)
    return status


def _section(title: str, width: int = 80) -> str:
    """A title centred in a line of ``=``, as pytest draws a summary section's."""
    fill = max(width - len(title) - 2, 2)
    return f"{'=' * (fill // 2)} {title} {'=' * (fill - fill // 2)}"


if __name__ == "__main__":
    sys.exit(main())
