"""The doctor: judged records as lean-host-mcp's lines or as JSON, and stale-record cleanup.

The first line of each record is the original ``doctor processes`` line, field
for field. What this project knows beyond the original (a zombie, a reused PID,
a corrupt file, a record owned by another user) goes on further indented lines,
never into that first line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from pytest_leanhost.core.probe import JudgedRecord, ProcessTable, judge_entries, registry_trust
from pytest_leanhost.core.registry import scan_registry
from pytest_leanhost.files import remove_if_unchanged
from pytest_leanhost.record import ProcessRecord

__all__ = [
    "CLEANUP_HINT",
    "JSON_SCHEMA_VERSION",
    "CleanupResult",
    "cleanup_stale_records",
    "inspect_registry",
    "render_json",
    "render_lines",
    "render_text",
]

#: The hint the original prints under a dead record, kept to the letter.
CLEANUP_HINT = "lean-host-mcp doctor processes --cleanup-stale-records"

#: Version of the ``--json`` document; bumped on any incompatible change.
JSON_SCHEMA_VERSION = 1


def inspect_registry(
    directory: str | os.PathLike[str], table: ProcessTable | None = None
) -> list[JudgedRecord]:
    """Scan ``directory`` and judge every entry against one process-table snapshot.

    Raises :class:`~pytest_leanhost.core.registry.RegistryUnreadableError` when the
    registry exists but cannot be listed; a missing registry has no records.
    """
    entries = scan_registry(directory)
    return judge_entries(entries, table, registry_trust(directory) if entries else None)


_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def _text(value: object) -> str:
    """A value as one line: control characters escaped, so a record cannot forge lines.

    Identical to the original's output for every value without control characters,
    the only values on which the original's own lines hold together.
    """
    return str(value).translate(_CONTROL)


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _or_dash(value: object) -> str:
    return "-" if value is None else _text(value)


def render_lines(judged: JudgedRecord) -> list[str]:
    """The doctor lines of one judged record: the original's, then ours, indented."""
    record = judged.entry.record
    if record is None:
        lines = [f"record={_text(judged.path)}", f"  corrupt_record={_text(judged.entry.problem)}"]
        return lines + _foreign_lines(judged)
    lines = [
        f"pid={record.pid} alive={str(judged.alive).lower()}"
        f" executable_match={_yes_no(judged.executable_match)}"
        f" transport={_text(record.transport)} bind={_or_dash(record.bind)}"
        f" http_path={_or_dash(record.http_path)} cwd={_text(record.cwd)}"
        f" started_unix_millis={record.started_unix_millis}"
        f" parent_pid_at_start={_or_dash(record.parent_pid_at_start)}"
        f" current_parent_pid={_or_dash(judged.current_parent_pid)}"
        f" parent_alive_at_start={_yes_no(judged.parent_alive_at_start)}"
        f" process_group_id={_or_dash(record.process_group_id)}"
        f" current_process_group_id={_or_dash(judged.current_process_group_id)}"
        f" stale_client={str(judged.stale_client).lower()} record={_text(judged.path)}"
    ]
    if judged.child_pids:
        lines.append("  child_pids=" + ",".join(str(pid) for pid in judged.child_pids))
    if not judged.alive:
        lines.append(f"  stale_record_cleanup={CLEANUP_HINT}")
    elif judged.stale_client and not judged.foreign:
        # Never suggest a kill on the word of a record another user could have written.
        lines.append(f"  exact_terminate=kill -TERM {record.pid}")
    if judged.zombie:
        lines.append("  zombie=yes")
    if judged.pid_reused:
        lines.append("  pid_reused=yes")
    return lines + _foreign_lines(judged)


def _foreign_lines(judged: JudgedRecord) -> list[str]:
    lines = []
    if judged.foreign_owner_uid is not None:
        lines.append(f"  foreign_owner_uid={judged.foreign_owner_uid}")
    if judged.foreign_registry is not None:
        lines.append(f"  foreign_registry={judged.foreign_registry}")
    return lines


def render_text(judged: Iterable[JudgedRecord]) -> str:
    """The whole doctor listing, one record after another, with a final newline."""
    return "".join(line + "\n" for item in judged for line in render_lines(item))


def record_as_dict(judged: JudgedRecord) -> dict[str, Any]:
    """Every fact about one entry as JSON-ready values (``--json``'s record object)."""
    record = judged.entry.record
    fields: dict[str, Any] = (
        dataclasses.asdict(record)
        if record is not None
        else {field.name: None for field in dataclasses.fields(ProcessRecord)}
    )
    return {
        "record": judged.path,
        "verdict": judged.verdict,
        "reason": judged.entry.problem,
        **fields,
        "alive": judged.alive,
        "executable_match": judged.executable_match,
        "current_parent_pid": judged.current_parent_pid,
        "current_process_group_id": judged.current_process_group_id,
        "parent_alive_at_start": judged.parent_alive_at_start,
        "child_pids": list(judged.child_pids),
        "stale_client": judged.stale_client,
        "zombie": judged.zombie,
        "pid_reused": judged.pid_reused,
        "foreign_owner_uid": judged.foreign_owner_uid,
        "foreign_registry": judged.foreign_registry,
    }


def render_json(registry: str | os.PathLike[str], judged: Sequence[JudgedRecord]) -> dict[str, Any]:
    """The ``--json`` document: ``{"schema_version", "registry", "records"}``."""
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "registry": os.fspath(registry),
        "records": [record_as_dict(item) for item in judged],
    }


@dataclasses.dataclass(frozen=True)
class CleanupResult:
    """What a cleanup did: records removed, and records it could not remove (path, why)."""

    removed: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()


def cleanup_stale_records(
    judged: Iterable[JudgedRecord], *, verbose: bool = False
) -> CleanupResult:
    """Remove the records whose PID is dead or reused, and nothing else.

    Each record is read again right before removal and left alone if its bytes
    changed (a new server may have taken the PID and written a fresh record).
    A record already removed by someone else is not an error. Corrupt files,
    symlinks and records of live processes are never removed. With ``verbose``
    it prints ``removed stale process record PATH`` to stderr, as the original.
    """
    removed: list[str] = []
    failed: list[tuple[str, str]] = []
    for item in judged:
        data = item.entry.data
        if item.entry.record is None or item.verdict not in ("stale", "reused") or data is None:
            continue  # only a stale record whose judged bytes are known can be proven unchanged
        try:
            # Gone, rewritten since it was judged (a new server took the PID), or no
            # longer a regular file: not the record that was judged, so left alone.
            if not remove_if_unchanged(item.path, data):
                continue
        except OSError as exc:
            failed.append((item.path, exc.strerror or str(exc)))
            continue
        removed.append(item.path)
        if verbose:
            print(f"removed stale process record {item.path}", file=sys.stderr)
    return CleanupResult(tuple(removed), tuple(failed))
