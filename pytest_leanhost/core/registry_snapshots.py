"""Watched registries: where a server that lost the registry variable writes its record.

Snapshotted at session start; at the check only new or changed records that the
session's own processes wrote are returned, so what a registry held before is never
blamed or removed. See docs/how-it-works/watched-registries.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from pytest_leanhost.core.probe import WRITTEN_VS_CREATED_TOLERANCE
from pytest_leanhost.core.registry import RegistryEntry, RegistryUnreadableError, scan_registry
from pytest_leanhost.record import REGISTRY_ENV, ProcessRecord, RegistryError, registry_dir

__all__ = [
    "SESSION_SPAN_SLACK_MILLIS",
    "SessionFacts",
    "WatchSnapshot",
    "WatchedRegistries",
    "default_registries",
    "home_only_registry",
    "is_session_record",
    "run_default_registry",
]


def run_default_registry(environ: Mapping[str, str] | None = None) -> Path | None:
    """The default registry as the run computes it, ignoring the override variable."""
    env = dict(os.environ if environ is None else environ)
    env.pop(REGISTRY_ENV, None)
    try:
        return registry_dir(env)
    except (RegistryError, OSError):
        return None


def home_only_registry(environ: Mapping[str, str] | None = None) -> Path | None:
    """The default registry of a child that kept only ``HOME``.

    On Linux ``$HOME/.cache/lean-host-mcp/processes`` (no ``XDG_CACHE_HOME``
    reaches it); elsewhere platformdirs does not read ``XDG_*``, so it is the
    run's own default.
    """
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return run_default_registry(env)
    home = env.get("HOME") or os.path.expanduser("~")
    if not home or home == "~":
        return None
    return Path(home) / ".cache" / "lean-host-mcp" / "processes"


def default_registries(
    extra: Iterable[str | os.PathLike[str]] = (), environ: Mapping[str, str] | None = None
) -> list[Path]:
    """The run's default, the ``HOME``-only default, then ``extra``; each once, in that order."""
    found: dict[Path, None] = {}
    for candidate in (run_default_registry(environ), home_only_registry(environ), *extra):
        if candidate is not None:
            found.setdefault(Path(os.path.abspath(os.fspath(candidate))), None)
    return list(found)


#: How far outside the session's wall-clock span a record's written time may lie and
#: still be the session's. The span is the plugin's own reading of the wall clock, the
#: start taken only after the watched registries were snapshotted and the end when the
#: check runs; a record is the server's reading when it wrote it. So a record that a
#: process of the session wrote while the snapshot was being taken lies before the
#: span's start by up to the snapshot's duration. Not the record-time tolerance of the
#: probe (a create time against a record's time): this one is two wall-clock readings.
SESSION_SPAN_SLACK_MILLIS = 1000

#: What a snapshot keeps of one file: its bytes, or why it could not be read.
_Fingerprint = tuple[bytes | None, str | None]


class WatchSnapshot(NamedTuple):
    """The record files of each watched registry at session start, by name."""

    files: Mapping[Path, Mapping[str, _Fingerprint]]


class SessionFacts(NamedTuple):
    """What proves a record is the session's: its processes, its pytest PIDs, its wall span.

    ``process_starts`` holds ``(pid, create time in seconds)`` of every process
    the session saw (lineage identities turned to wall time, marked processes);
    ``pytest_pids`` the controller and every worker; the span is in Unix millis.
    """

    process_starts: frozenset[tuple[int, float]]
    pytest_pids: frozenset[int]
    started_unix_millis: int
    ended_unix_millis: int


def is_session_record(record: ProcessRecord, facts: SessionFacts) -> bool:
    """Whether one of the session's processes wrote ``record``.

    Written inside the session's span, and either its PID is one of the
    session's processes that had started by then, or ``parent_pid_at_start``
    names one of the session's pytest processes.
    """
    slack = SESSION_SPAN_SLACK_MILLIS
    written = record.started_unix_millis
    if not facts.started_unix_millis - slack <= written <= facts.ended_unix_millis + slack:
        return False
    written_s = written / 1000.0
    for pid, created in facts.process_starts:
        if pid == record.pid and created <= written_s + WRITTEN_VS_CREATED_TOLERANCE:
            return True
    return record.parent_pid_at_start is not None and record.parent_pid_at_start in (
        facts.pytest_pids
    )


class WatchedRegistries:
    """The registries a server could reach without the variable, watched over a session."""

    def __init__(self, directories: Iterable[str | os.PathLike[str]]) -> None:
        self.directories: tuple[Path, ...] = tuple(
            dict.fromkeys(Path(os.path.abspath(os.fspath(d))) for d in directories)
        )

    def snapshot(self) -> WatchSnapshot:
        """Names and contents of every record file now (a missing registry holds none)."""
        return WatchSnapshot({d: _fingerprints(_scan(d)) for d in self.directories})

    def changed_since(self, before: WatchSnapshot) -> list[RegistryEntry]:
        """Every record file that is new, or whose contents changed, since ``before``.

        Files present and unchanged at snapshot time are never returned. A
        registry that cannot be listed now yields nothing (its problem is the
        check's to report).
        """
        found: list[RegistryEntry] = []
        for directory in self.directories:
            old = before.files.get(directory, {})
            for entry in _scan(directory):
                name = os.path.basename(entry.path)
                if old.get(name) != _fingerprint(entry):
                    found.append(entry)
        return found

    def session_records(self, before: WatchSnapshot, facts: SessionFacts) -> list[RegistryEntry]:
        """The new or changed records that the session's own processes wrote."""
        return [
            entry
            for entry in self.changed_since(before)
            if entry.record is not None and is_session_record(entry.record, facts)
        ]


def _scan(directory: Path) -> list[RegistryEntry]:
    try:
        return scan_registry(directory)
    except RegistryUnreadableError:
        return []


def _fingerprint(entry: RegistryEntry) -> _Fingerprint:
    return (entry.data, entry.problem if entry.data is None else None)


def _fingerprints(entries: Iterable[RegistryEntry]) -> dict[str, _Fingerprint]:
    return {os.path.basename(entry.path): _fingerprint(entry) for entry in entries}
