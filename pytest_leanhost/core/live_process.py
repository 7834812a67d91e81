"""A live process read now, pinned by its create time: its facts, ancestry and escape words.

A leak report that a person can act on says, for every process it names, what
the process runs (command line, working directory), how old it is, which of
the run's processes it descends from, and which of the usual ways out it took
(a dropped environment, a new session or process group, a dead parent, a
detached daemon). Every answer here is read from the live process, pinned by
its create time, so a reused PID is never described as the process that leaked.
Nothing here signals a process or starts a subprocess.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import psutil

from pytest_leanhost.core.detail import AncestorDetail
from pytest_leanhost.core.escapes import ESCAPE_WORDS, EscapeWord, reparented
from pytest_leanhost.core.identity import same_create_time
from pytest_leanhost.core.procfs import stat_fields

if TYPE_CHECKING:
    from pytest_leanhost.core.probe import ProcessInfo, ProcessTable

__all__ = [
    "ProcessFacts",
    "ancestry",
    "describe_process",
    "escape_words",
]

_PROC = "/proc"
_DEV_NULL = "/dev/null"


@dataclasses.dataclass(frozen=True)
class ProcessFacts:
    """What a live process is: the facts a leak finding carries about it."""

    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    #: ``None`` when the system does not let us read it.
    cwd: str | None
    #: Wall clock when the process started, in seconds (its create time).
    started_unix: float
    age_seconds: float


def _pinned(pid: int, create_time: float) -> psutil.Process | None:
    """The live, non-zombie process ``pid`` if it is still the one created at ``create_time``."""
    try:
        proc = psutil.Process(pid)
        if not same_create_time(proc.create_time(), create_time):
            return None  # the PID now belongs to another process
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None  # it has exited; only its exit status waits to be reaped
    except psutil.Error:
        return None
    return proc


def describe_process(
    pid: int, create_time: float, *, now: float | None = None
) -> ProcessFacts | None:
    """The facts of process ``pid`` created at ``create_time``, or ``None`` when it is gone.

    Gone means: no such PID, the PID now has another create time (reused), or a
    zombie. A working directory we may not read is ``None``, not an error.
    """
    proc = _pinned(pid, create_time)
    if proc is None:
        return None
    try:
        cmdline = tuple(proc.cmdline())
    except psutil.AccessDenied:
        cmdline = ()
    except psutil.Error:
        return None
    try:
        cwd: str | None = proc.cwd()
    except psutil.AccessDenied:
        cwd = None
    except psutil.Error:
        return None
    clock = time.time() if now is None else now
    return ProcessFacts(
        pid=pid,
        create_time=create_time,
        cmdline=cmdline,
        cwd=cwd,
        started_unix=create_time,
        age_seconds=max(0.0, clock - create_time),
    )


def escape_words(
    pid: int,
    *,
    pytest_pid: int,
    marker_absent: bool,
    first_seen_parent: int | None,
    current_parent: int | None,
    recorded_parent: int | None = None,
) -> tuple[EscapeWord, ...]:
    """How process ``pid`` escaped the run, as escape words in their fixed order.

    The words and their order are :data:`~pytest_leanhost.core.escapes.ESCAPE_WORDS`.
    Each word is claimed only when the facts show it; a fact that cannot be read
    (the process is gone, the system hides it) claims nothing.

    - ``environment_dropped``: ``marker_absent`` (the caller found it by lineage,
      its starting environment lacks the session marker).
    - ``new_session``: ``os.getsid`` of the process differs from the pytest process's.
    - ``new_process_group``: ``os.getpgid`` differs from the pytest process's.
    - ``reparented``: :func:`~pytest_leanhost.core.escapes.reparented` holds for
      its parent now (``current_parent``, from the process table), its parent at
      first sight (``first_seen_parent``, from the caller's lineage data) and the
      parent its record names (``recorded_parent``), with pytest as the root.
    - ``daemonized`` (Linux): it has no controlling terminal (``tty_nr`` in
      ``/proc/PID/stat`` is 0) and each of its file descriptors 0, 1 and 2 is
      closed or opens ``/dev/null``. The rule is deliberately narrow: stdio
      redirected to a pipe, a terminal or a file (pytest's capture file, a log)
      is not called detached, so the word never claims more than it shows.
    """
    words: set[EscapeWord] = set()
    if marker_absent:
        words.add("environment_dropped")
    if _differs("getsid", pid, pytest_pid):
        words.add("new_session")
    if _differs("getpgid", pid, pytest_pid):
        words.add("new_process_group")
    if reparented(
        current_parent=current_parent,
        first_seen_parent=first_seen_parent,
        recorded_parent=recorded_parent,
        root_pid=pytest_pid,
    ):
        words.add("reparented")
    if _daemonized(pid):
        words.add("daemonized")
    return tuple(word for word in ESCAPE_WORDS if word in words)


def _differs(name: str, pid: int, pytest_pid: int) -> bool:
    lookup: Callable[[int], int] | None = getattr(os, name, None)  # POSIX only
    if lookup is None:
        return False
    try:
        return lookup(pid) != lookup(pytest_pid)
    except OSError:
        return False  # one of them is gone, or the system will not say: claim nothing


def _daemonized(pid: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    fields = stat_fields(pid)
    if fields is None:
        return False
    try:
        tty_nr = int(fields[4])
    except (IndexError, ValueError):
        return False
    if tty_nr != 0:
        return False
    for fd in (0, 1, 2):
        try:
            target = os.readlink(f"{_PROC}/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed: detached
        except OSError:
            return False  # not ours to read: claim nothing
        if target != _DEV_NULL:
            return False
    return True


def ancestry(
    pid: int,
    known_parents: Mapping[int, int],
    table: ProcessTable,
    *,
    root: int,
    known_create_times: Mapping[int, float] | None = None,
    known_cmdlines: Mapping[int, tuple[str, ...]] | None = None,
) -> tuple[AncestorDetail, ...]:
    """The known ancestors of ``pid``, nearest first, ending at ``root`` when the chain reaches it.

    Each step follows the parent the caller saw first (``known_parents``: PID to
    parent PID, as the plugin observed them), else the parent in ``table``. The
    first-seen parent wins because a reparented process's current parent is only
    its adopter. A PID whose create time differs from ``known_create_times`` has
    been reused: that ancestor is dead, and its table entry is not followed. The
    chain stops at ``root``, at PID 1 or 0, at an unknown parent, or at a PID it
    has already visited (it never loops). A dead ancestor's command line is what
    ``known_cmdlines`` says, else empty.
    """
    created = known_create_times or {}
    cmdlines = known_cmdlines or {}
    chain: list[AncestorDetail] = []
    seen = {pid}
    current = pid
    while current != root:
        parent = _parent_of(current, known_parents, table, created)
        if parent is None or parent in seen or (parent <= 1 and parent != root):
            break
        seen.add(parent)
        info = _live_info(parent, table, created)
        cmdline = cmdlines.get(parent, ())
        if info is not None:
            cmdline = _cmdline(parent, info.create_time) or cmdline
        chain.append(AncestorDetail(pid=parent, cmdline=cmdline, alive=info is not None))
        current = parent
    return tuple(chain)


def _live_info(pid: int, table: ProcessTable, created: Mapping[int, float]) -> ProcessInfo | None:
    info = table.get(pid)
    if info is None or info.zombie:
        return None
    expected = created.get(pid)
    if expected is not None and not same_create_time(expected, info.create_time):
        return None  # the PID was reused: the ancestor we knew is gone
    return info


def _parent_of(
    pid: int,
    known_parents: Mapping[int, int],
    table: ProcessTable,
    created: Mapping[int, float],
) -> int | None:
    if pid in known_parents:
        return known_parents[pid]
    info = _live_info(pid, table, created)
    return None if info is None else info.ppid


def _cmdline(pid: int, create_time: float) -> tuple[str, ...]:
    proc = _pinned(pid, create_time)
    if proc is None:
        return ()
    try:
        return tuple(proc.cmdline())
    except psutil.Error:
        return ()
