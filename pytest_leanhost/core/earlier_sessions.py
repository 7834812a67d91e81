"""The session ledger: what a run killed outright (SIGKILL, OOM, CI timeout) left behind.

An entry whose pytest is gone proves its session died; the live processes carrying
that session's marker are what it left. See docs/guides/earlier-runs.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pytest_leanhost.core.identity import same_create_time
from pytest_leanhost.core.ownership import SESSION_ENV, has_entry, read_environ
from pytest_leanhost.core.probe import ProcessTable
from pytest_leanhost.core.session_ledger import (
    LEDGER_SCHEMA_VERSION,
    SESSIONS_ENV,
    SessionsDirError,
    is_session_id,
    ledger_bytes,
    ledger_names,
    remove_ledger,
    sessions_dir,
    write_ledger,
)
from pytest_leanhost.stopping import LadderRung, stop_ladder

# psutil loads only to describe or stop a leftover: writing the ledger and a scan that
# finds no earlier session (every normal run's session start) do without it.
if TYPE_CHECKING:
    from pytest_leanhost.core.processes import PinnedProcess

__all__ = [
    "LEDGER_SCHEMA_VERSION",
    "SESSIONS_ENV",
    "EarlierSessions",
    "LedgerEntry",
    "LedgerProblem",
    "Leftover",
    "LeftoverStop",
    "SessionsDirError",
    "find_earlier_sessions",
    "leftover_lines",
    "remove_ledger",
    "scan_earlier_sessions",
    "sessions_dir",
    "terminate_leftovers",
    "write_ledger",
]


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """One session's ledger entry: enough to prove later whether its pytest is gone."""

    session_id: str
    pytest_pid: int
    pytest_create_time: float
    started_unix: float
    cwd: str
    argv: tuple[str, ...]
    path: str = ""

    def to_json_bytes(self) -> bytes:
        """The entry as the file holds it (two-space indented JSON)."""
        return ledger_bytes(
            self.session_id,
            self.pytest_pid,
            self.pytest_create_time,
            self.started_unix,
            self.cwd,
            self.argv,
        )

    @classmethod
    def from_json_bytes(cls, data: bytes, path: str) -> LedgerEntry:
        """Parse a ledger file; raises ``ValueError`` saying what is wrong."""
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        session_id = _field(obj, "session_id", str)
        if not is_session_id(session_id):
            raise ValueError(f"session_id {session_id!r} is not a session id")
        pid = _field(obj, "pytest_pid", int)
        if pid <= 0:
            raise ValueError(f"pytest_pid {pid} is not a PID")
        argv = _field(obj, "argv", list)
        if not all(isinstance(arg, str) for arg in argv):
            raise ValueError("argv is not a list of strings")
        return cls(
            session_id=session_id,
            pytest_pid=pid,
            pytest_create_time=float(_field(obj, "pytest_create_time", (int, float))),
            started_unix=float(_field(obj, "started_unix", (int, float))),
            cwd=_field(obj, "cwd", str),
            argv=tuple(argv),
            path=path,
        )


def _field(obj: Mapping[str, Any], name: str, kind: Any) -> Any:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"field {name!r} is missing or has the wrong type")
    return value


@dataclasses.dataclass(frozen=True)
class LedgerProblem:
    """A file in the sessions directory that is not a valid ledger entry; it is left in place."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Leftover:
    """A live process that a session killed outright left behind (it carries that session's id)."""

    session_id: str
    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    age_seconds: float


@dataclasses.dataclass(frozen=True)
class EarlierSessions:
    """What one scan of the ledger found: the dead sessions, their leftovers, bad files."""

    #: Ledger entries whose pytest is gone and that left live processes.
    sessions: tuple[LedgerEntry, ...]
    leftovers: tuple[Leftover, ...]
    problems: tuple[LedgerProblem, ...]
    #: Ledger files removed: their pytest was gone and they left nothing.
    removed: tuple[str, ...]


#: What :func:`terminate_leftovers` did to one leftover.
StopAction = Literal["terminated", "killed", "gone", "refused", "failed"]


@dataclasses.dataclass(frozen=True)
class LeftoverStop:
    """One leftover and what stopping it came to; ``reason`` says why when refused or failed."""

    leftover: Leftover
    action: StopAction
    reason: str = ""


def read_ledger(directory: Path) -> tuple[list[LedgerEntry], list[LedgerProblem]]:
    """Every ledger entry in ``directory``, and every ``.json`` file that is not one.

    A missing directory holds nothing; one that exists but cannot be listed
    raises :class:`SessionsDirError`. Symlinks are not followed.
    """
    entries: list[LedgerEntry] = []
    problems: list[LedgerProblem] = []
    for name in ledger_names(directory):
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as handle:
                data = handle.read()
            entry = LedgerEntry.from_json_bytes(data, str(path))
        except FileNotFoundError:
            continue  # removed by its session's normal end meanwhile
        except OSError as exc:
            problems.append(LedgerProblem(str(path), f"cannot read: {exc.strerror or exc}"))
            continue
        except ValueError as exc:
            problems.append(LedgerProblem(str(path), str(exc)))
            continue
        if name != f"{entry.session_id}.json":
            problems.append(LedgerProblem(str(path), f"names session {entry.session_id}"))
            continue
        entries.append(entry)
    return entries, problems


def _pytest_gone(entry: LedgerEntry, table: ProcessTable) -> bool:
    info = table.get(entry.pytest_pid)
    return (
        info is None
        or info.zombie
        or not same_create_time(info.create_time, entry.pytest_create_time)
    )


def scan_earlier_sessions(
    current_session_id: str | None,
    *,
    directory: Path | None = None,
    table: ProcessTable | None = None,
    now: float | None = None,
) -> EarlierSessions:
    """Find what sessions killed outright left: one read of the ledger, one of the process table.

    An entry whose pytest is alive (same PID and create time) is a running
    session and is skipped, as is ``current_session_id``. For the others, every
    live, non-zombie process whose starting environment holds the exact entry
    ``LEANHOST_SESSION=<id>`` is a leftover. An entry whose pytest is gone and
    that left nothing is removed: it is our own file and proves nothing more.
    """
    target = sessions_dir() if directory is None else directory
    entries, problems = read_ledger(target)
    if not entries:
        return EarlierSessions(sessions=(), leftovers=(), problems=tuple(problems), removed=())
    snapshot = ProcessTable.snapshot() if table is None else table
    dead = {
        entry.session_id: entry
        for entry in entries
        if entry.session_id != current_session_id and _pytest_gone(entry, snapshot)
    }
    leftovers = _marked_leftovers(dead, snapshot, time.time() if now is None else now)
    with_leftovers = {leftover.session_id for leftover in leftovers}
    removed: list[str] = []
    for session_id, entry in dead.items():
        if session_id not in with_leftovers:
            with contextlib.suppress(FileNotFoundError):
                Path(entry.path).unlink()
                removed.append(entry.path)
    return EarlierSessions(
        sessions=tuple(dead[sid] for sid in sorted(with_leftovers)),
        leftovers=tuple(leftovers),
        problems=tuple(problems),
        removed=tuple(removed),
    )


def find_earlier_sessions(
    current_session_id: str | None,
    *,
    directory: Path | None = None,
    table: ProcessTable | None = None,
) -> list[Leftover]:
    """The live processes that sessions killed outright left (see :func:`scan_earlier_sessions`)."""
    scan = scan_earlier_sessions(current_session_id, directory=directory, table=table)
    return list(scan.leftovers)


def _marked_leftovers(
    dead: Mapping[str, LedgerEntry], table: ProcessTable, now: float
) -> list[Leftover]:
    if not dead:
        return []
    markers = {sid: f"{SESSION_ENV}={sid}".encode() for sid in dead}
    own = os.getpid()
    found: list[Leftover] = []
    for info in table:
        if info.zombie or info.pid == own:
            continue
        environ = read_environ(info.pid)
        if environ is None:
            continue
        for session_id, marker in markers.items():
            if has_entry(environ, marker):
                found.append(
                    Leftover(
                        session_id=session_id,
                        pid=info.pid,
                        create_time=info.create_time,
                        cmdline=_cmdline(info.pid, info.create_time),
                        age_seconds=max(0.0, now - info.create_time),
                    )
                )
                break
    found.sort(key=lambda leftover: (leftover.session_id, leftover.pid))
    return found


def _cmdline(pid: int, create_time: float) -> tuple[str, ...]:
    import psutil

    from pytest_leanhost.core.processes import PinnedProcess

    proc = PinnedProcess(pid, create_time).process()
    if proc is None:
        return ()  # gone, or its PID now names another process
    try:
        return tuple(proc.cmdline())
    except psutil.Error:
        return ()


def _still_marked(leftover: Leftover) -> tuple[PinnedProcess | None, str]:
    """The leftover, pinned, if it is still the same live process and still carries the marker."""
    from pytest_leanhost.core.processes import PinnedProcess

    pinned = PinnedProcess(leftover.pid, leftover.create_time)
    if pinned.is_gone():
        return None, "gone"  # exited, a zombie, or its PID now belongs to another process
    environ = read_environ(leftover.pid)
    marker = f"{SESSION_ENV}={leftover.session_id}".encode()
    if environ is None or not has_entry(environ, marker):
        return None, f"does not carry {SESSION_ENV}={leftover.session_id}"
    return pinned, ""


#: What the one ladder's rung that ended a leftover means to ``doctor sessions --terminate``.
_ACTIONS: dict[LadderRung, tuple[StopAction, str]] = {
    "gone": ("gone", ""),
    "first": ("terminated", ""),  # never taken: the ladder runs without a first rung here
    "terminate": ("terminated", ""),
    "kill": ("killed", ""),
    "survived": ("failed", "still alive after SIGKILL"),
}


def terminate_leftovers(leftovers: Iterable[Leftover], timeout: float) -> list[LeftoverStop]:
    """Stop exactly these processes by the one ladder: SIGTERM, wait ``timeout``, then SIGKILL.

    Right before the ladder, each PID must still have the leftover's create time
    and carry its session marker; a process that fails either check is never
    signalled. The ladder checks the create time again at each signal
    (:class:`~pytest_leanhost.core.processes.PinnedProcess`), counts a zombie as
    gone, and reaps nothing. After SIGKILL it waits ``timeout``, at least a second.
    """
    results: dict[int, LeftoverStop] = {}
    pinned: list[tuple[Leftover, PinnedProcess]] = []
    for leftover in leftovers:
        proc, why = _still_marked(leftover)
        if proc is None:
            action: StopAction = "gone" if why == "gone" else "refused"
            results[leftover.pid] = LeftoverStop(leftover, action, "" if why == "gone" else why)
        else:
            pinned.append((leftover, proc))
    rungs = stop_ladder([proc for _, proc in pinned], timeout, kill_timeout=max(timeout, 1.0))
    for (leftover, _), rung in zip(pinned, rungs, strict=True):
        results[leftover.pid] = LeftoverStop(leftover, *_ACTIONS[rung])
    return [results[pid] for pid in sorted(results)]


def leftover_lines(leftovers: Iterable[Leftover]) -> list[str]:
    """Each leftover as a line a person can act on, then the exact command that stops it."""
    lines: list[str] = []
    for leftover in leftovers:
        lines.append(
            f"session={leftover.session_id} pid={leftover.pid} "
            f"age={int(leftover.age_seconds)}s cmdline={shlex.join(leftover.cmdline) or '-'}"
        )
        lines.append(f"  exact_terminate=kill -TERM {leftover.pid}")
    return lines
