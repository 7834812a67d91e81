"""The ``leanhost`` command: ``leanhost doctor processes [--cleanup-stale-records] [--json]``.

Exit status: 0 when the listing was produced, whatever it found; 1 when the
registry exists but cannot be read, or a stale record could not be removed;
with ``--check`` also 1 when any record is stale, orphaned, reused or corrupt;
2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pytest_leanhost.core.doctor import (
    cleanup_stale_records,
    inspect_registry,
    render_json,
    render_text,
)
from pytest_leanhost.core.registry import RegistryUnreadableError
from pytest_leanhost.record import RegistryError, registry_dir

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command's parser; every option is described in ``--help``."""
    parser = argparse.ArgumentParser(
        prog="leanhost",
        description="Diagnostics for MCP servers registered in a lean-host-mcp process registry.",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
