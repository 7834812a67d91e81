"""Ownership markers: how the plugin proves a process belongs to its test run.

The plugin puts ``LEANHOST_SESSION=<id>`` into the pytest process's environment,
so every process the run starts, directly or not, inherits it; for the span
of each test it also sets ``LEANHOST_NODEID``. A process counts as the
session's own only if its environment *at start* (``/proc/PID/environ``)
carries the session id. Processes are never looked up by name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from pytest_leanhost.core.procfs import FORCE_PSUTIL

if TYPE_CHECKING:
    from pytest_leanhost.core.probe import ProcessTable

__all__ = [
    "NODEID_ENV",
    "SESSION_ENV",
    "WORKER_ENV",
    "MarkedProcess",
    "find_marked_processes",
    "has_entry",
    "new_session_id",
    "processes_carrying",
    "pytest_phase_at_start",
    "read_environ",
]

#: The session id every process of the test run inherits.
SESSION_ENV = "LEANHOST_SESSION"
#: The node id of the test that was running when a process started.
NODEID_ENV = "LEANHOST_NODEID"
#: The pytest-xdist worker (``gw0``...) that started a process.
WORKER_ENV = "LEANHOST_WORKER"


def new_session_id() -> str:
    """A fresh, unguessable session id."""
    return f"lh-{os.urandom(8).hex()}"


class MarkedProcess(NamedTuple):
    """A live process whose starting environment carries the session id.

    A named tuple, as psutil's per-process results are: made by the hundred.
    """

    pid: int
    create_time: float
    nodeid: str | None
    worker: str | None


def find_marked_processes(
    session_id: str, table: ProcessTable, *, exclude: Iterable[int] = ()
) -> dict[int, MarkedProcess]:
    """Every live, non-zombie process in ``table`` that carries ``session_id``."""
    return processes_carrying(SESSION_ENV, session_id, table, exclude=exclude)


def processes_carrying(
    name: str, value: str, table: ProcessTable, *, exclude: Iterable[int] = ()
) -> dict[int, MarkedProcess]:
    """Every live, non-zombie process in ``table`` whose starting environment has ``name=value``.

    Reads each process's starting environment once; processes that are gone or
    not ours to read are skipped (they cannot carry our marker: a process we
    started runs as our user).
    """
    excluded = set(exclude)
    marker = f"{name}={value}".encode()
    found: dict[int, MarkedProcess] = {}
    for info in table:
        if info.zombie or info.pid in excluded:
            continue
        environ = read_environ(info.pid)
        if environ is None or not has_entry(environ, marker):
            continue
        found[info.pid] = MarkedProcess(
            pid=info.pid,
            create_time=info.create_time,
            nodeid=_value(environ, NODEID_ENV),
            worker=_value(environ, WORKER_ENV),
        )
    return found


def pytest_phase_at_start(pid: int) -> tuple[str, str] | None:
    """The ``(node id, phase)`` pytest named in ``PYTEST_CURRENT_TEST`` when ``pid`` started.

    pytest sets ``PYTEST_CURRENT_TEST="<node id> (<setup|call|teardown>)"`` at the
    start of every phase, so a process that kept its starting environment says
    exactly which phase it started in. ``None`` when it did not keep it (a
    launcher dropped it), when it cannot be read, or when the value is not pytest's.
    """
    environ = read_environ(pid)
    value = _value(environ, "PYTEST_CURRENT_TEST") if environ is not None else None
    if value is None or not value.endswith(")"):
        return None
    nodeid, _, when = value[:-1].rpartition(" (")
    if not nodeid or when not in ("setup", "call", "teardown"):
        return None
    return nodeid, when


def read_environ(pid: int) -> bytes | None:
    """``pid``'s environment as it started: NUL-separated entries, with a NUL in front.

    ``None`` when it cannot be read (gone, or not ours). Linux reads
    ``/proc/PID/environ``; elsewhere (or with ``LEANHOST_FORCE_PSUTIL=1``) psutil.
    """
    if not FORCE_PSUTIL and sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                return b"\0" + handle.read()
        except OSError:
            return None
    import psutil

    try:
        env = psutil.Process(pid).environ()
    except psutil.Error:
        return None
    return b"\0" + b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0"


def has_entry(environ: bytes, entry: bytes) -> bool:
    """Whether ``environ`` (as :func:`read_environ` gives it) holds exactly ``entry``.

    Entries are NUL-separated: a whole entry matches, never a prefix of a longer id.
    """
    return b"\0" + entry + b"\0" in environ + b"\0"


def _value(environ: bytes, name: str) -> str | None:
    key = b"\0" + name.encode() + b"="
    start = environ.find(key)
    if start < 0:
        return None
    start += len(key)
    end = environ.find(b"\0", start)
    raw = environ[start:] if end < 0 else environ[start:end]
    return os.fsdecode(raw)
