"""Linux's ``/proc``, read one way for every module that needs it.

Standard library only.

- :func:`stat_fields`: ``/proc/PID/stat``. The fields after the command name are
  returned as bytes, indexed from the state (``stat_fields(pid)[0]`` is field 3
  of proc(5)): the command name sits in parentheses and may itself hold ``") "``,
  so it is cut at the last one.
- :class:`LastPid`: the kernel's PID counter (``/proc/sys/kernel/ns_last_pid``, else
  the 5th field of ``/proc/loadavg``).
  Every process and thread created in the PID namespace, or in any namespace
  below it, moves it. Unchanged between two readings: nothing was created in
  between, so a walk of the process tree would find nothing new. (It could only
  come back to the same value after ``pid_max`` creations in between.)
- :class:`TaskChildren`: one process's direct children, from files kept open;
  :func:`read_children` the same, read once.
- :func:`boot_time`: the boot time in wall-clock seconds (``btime`` of ``/proc/stat``),
  from which every create time is computed.
- The clock of process start ticks: :func:`clock_ticks_per_second` (``SC_CLK_TCK``),
  :data:`boot_clock` (now, in seconds: ``CLOCK_BOOTTIME``, which counts as start
  ticks do, where start ticks are read from ``/proc``; else the wall clock, as
  psutil's create times are) and :func:`boottime_ticks` (now, in ticks).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable

__all__ = [
    "FORCE_PSUTIL",
    "LastPid",
    "ProcessFiles",
    "TaskChildren",
    "boot_clock",
    "boot_time",
    "boottime_ticks",
    "clock_ticks_per_second",
    "pids_between",
    "read_children",
    "stat_fields",
]

_NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
_LOADAVG = "/proc/loadavg"
_LINUX = sys.platform.startswith("linux")
#: Up to this many PIDs handed out since a reading are tried one by one; more,
#: and one listing of ``/proc`` is cheaper.
_TRY_EACH = 64
#: ``LEANHOST_FORCE_PSUTIL=1`` (read once, at import) makes the process table and the
#: environment reader use psutil also on Linux: the code other platforms (macOS) run, so
#: that CI runs it too.
FORCE_PSUTIL = os.environ.get("LEANHOST_FORCE_PSUTIL") == "1"
#: Whether start ticks are read from ``/proc`` (else psutil's wall-clock create times).
_PROC_TICKS = _LINUX and os.path.isdir("/proc")


def clock_ticks_per_second() -> int:
    """Clock ticks per second of process start times (``SC_CLK_TCK``; 100 when unknown)."""
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100


_TICKS = clock_ticks_per_second()

#: Now, in seconds of the clock that process start ticks count in (a C call, no Python
#: frame: the plugin reads it at every test boundary).
boot_clock: Callable[[], float] = (
    functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME) if _PROC_TICKS else time.time
)


def boottime_ticks() -> int:
    """Now, in the clock of process start ticks (Linux: ``CLOCK_BOOTTIME`` ticks)."""
    return int(boot_clock() * _TICKS)


def boot_time() -> float:
    """The boot time in wall-clock seconds (``btime`` of ``/proc/stat``; 0.0 when absent).

    Read at every call, as psutil reads it: a create time is start ticks / ``SC_CLK_TCK``
    plus this. Raises ``OSError`` when ``/proc/stat`` cannot be read.
    """
    with open("/proc/stat", "rb") as handle:
        for line in handle:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    return 0.0


def stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name; None when it cannot be read."""
    # os.open and one os.read: no buffered file object on a path every walk takes per process.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None  # gone (or never there): the caller treats it as no process
    try:
        data = os.read(fd, 4096)  # a stat line is well under a page, read at once
    except OSError:
        return None
    finally:
        os.close(fd)
    return data[data.rfind(b")") + 2 :].split()


class LastPid:
    """The last PID the kernel handed out in this PID namespace (Linux), else ``None``.

    Read from ``/proc/sys/kernel/ns_last_pid`` (the counter alone), or, where that
    is missing, from the 5th field of ``/proc/loadavg``. The file stays open and
    is read again from offset 0 (``pread``: one system call), since it is read at
    every test boundary.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        #: The counter's bytes now, compared as they are: equal exactly when no PID
        #: was handed out in between. ``None`` where the kernel keeps no counter.
        self.reading: Callable[[], bytes] | None = None
        if not _LINUX:
            return
        for path in (_NS_LAST_PID, _LOADAVG):
            with contextlib.suppress(OSError):
                self._fd = os.open(path, os.O_RDONLY)  # not inherited by children
                break
        if self._fd is None:
            return
        pread = functools.partial(os.pread, self._fd, 256, 0)
        if path == _NS_LAST_PID:
            self.reading = pread  # a C call: no Python frame on a path taken every test
        else:
            self.reading = lambda: _last_field(pread())

    def read(self) -> int | None:
        """The last PID now; ``None`` where the kernel does not say."""
        if self.reading is None:
            return None
        try:
            return int(self.reading())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Close the file (at unconfigure)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.reading = None


def _last_field(loadavg: bytes) -> bytes:
    """The PID counter of ``/proc/loadavg`` ("0.20 0.18 0.12 1/80 11206\\n"): its last field."""
    return loadavg[loadavg.rfind(b" ", 0, -1) + 1 :]


def pids_between(before: int, after: int) -> list[int]:
    """The live PIDs handed out after ``before`` up to ``after`` (PIDs wrap at ``pid_max``)."""
    if after == before:
        return []
    if 0 < after - before <= _TRY_EACH:
        return [pid for pid in range(before + 1, after + 1) if os.path.exists(f"/proc/{pid}")]
    wrapped = after < before
    found: list[int] = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                pid = int(name)
                if (pid > before or pid <= after) if wrapped else before < pid <= after:
                    found.append(pid)
    return found


class TaskChildren:
    """The direct children of one process, read through files kept open (Linux).

    A child belongs to the thread that forked it, so every task's
    ``/proc/PID/task/TID/children`` is read. The list of tasks is read at every
    call (a thread may have come or gone); each task's file is opened once and
    read again from offset 0 (``pread``), which saves an open and a close per
    task and call. A task that exited reads as empty: its children moved to
    another task, which is read too.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._files: dict[str, int] = {}
        #: The process's own stat file: its thread count says whether to list the tasks.
        self._stat: int | None = None

    def _threads(self) -> int:
        """How many threads the process has now (0 when its stat cannot be read)."""
        try:
            if self._stat is None:
                self._stat = os.open(f"/proc/{self.pid}/stat", os.O_RDONLY)
            data = os.pread(self._stat, 4096, 0)
            return int(data[data.rfind(b")") + 2 :].split()[17])
        except (OSError, ValueError, IndexError):
            return 0

    def read(self) -> list[int] | None:
        """The children's PIDs, sorted; ``None`` when the process cannot be read.

        Rule: a process with one thread has one task, its main one, whose file is
        read without listing the tasks (a listing costs as much as three reads).
        """
        if self._threads() == 1:
            tasks = {str(self.pid)}
        else:
            try:
                tasks = set(os.listdir(f"/proc/{self.pid}/task"))
            except OSError:
                return None
        for tid in [tid for tid in self._files if tid not in tasks]:
            os.close(self._files.pop(tid))
        for tid in tasks.difference(self._files):
            with contextlib.suppress(OSError):  # the thread exited meanwhile
                self._files[tid] = os.open(f"/proc/{self.pid}/task/{tid}/children", os.O_RDONLY)
        found: set[int] = set()
        for fd in self._files.values():
            with contextlib.suppress(OSError):
                found.update(int(word) for word in _pread_all(fd).split())
        return sorted(found)

    def close(self) -> None:
        """Close every file."""
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        if self._stat is not None:
            os.close(self._stat)
            self._stat = None


def read_children(pid: int, single_threaded: bool = False) -> list[int] | None:
    """The direct children of ``pid`` now (zombies included), sorted, read once (Linux).

    ``None`` when the process cannot be read. See :class:`TaskChildren` for the
    files read; this opens them for one reading only. ``single_threaded``: the
    caller just read that the process has one thread, so only its main task's
    file is read (a thread started since, and what it forks, shows at the next read).
    """
    if single_threaded:
        try:
            fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY)
        except OSError:
            return None
        try:
            return sorted(int(word) for word in _pread_all(fd).split())
        except OSError:
            return None
        finally:
            os.close(fd)
    reader = TaskChildren(pid)
    try:
        return reader.read()
    finally:
        reader.close()


def _pread_all(fd: int, size: int = 65536) -> bytes:
    """The whole of a small ``/proc`` file, from offset 0 (one read unless it fills ``size``)."""
    data = os.pread(fd, size, 0)
    while len(data) % size == 0 and data:
        more = os.pread(fd, size, len(data))
        if not more:
            break
        data += more
    return data


class ProcessFiles:
    """``/proc/PID/stat`` and the main task's ``children`` of many processes, kept open.

    A lineage walk reads both for every live process below pytest at every
    boundary where a PID was handed out: kept open, each is one ``pread``
    instead of an open, a read and a close. A file stays bound to the process
    it was opened for: once that process is gone its reads fail, so a reused
    PID is opened afresh and never read through an old file. At most ``limit``
    processes are kept; past that, files are opened for one reading only.
    """

    def __init__(self, limit: int = 256) -> None:
        self._limit = limit
        #: PID -> (stat file, children file or -1 until first asked).
        self._files: dict[int, list[int]] = {}

    def stat(self, pid: int) -> list[bytes] | None:
        """The fields of ``/proc/PID/stat`` after the command name; None when it is gone."""
        files = self._files.get(pid)
        if files is not None:
            try:
                data = os.pread(files[0], 4096, 0)
            except OSError:
                self.forget(pid)  # that process is gone: its PID may name another now
            else:
                if data:
                    return data[data.rfind(b")") + 2 :].split()
                self.forget(pid)
        if len(self._files) >= self._limit:
            return stat_fields(pid)
        try:
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        except OSError:
            return None
        try:
            data = os.pread(fd, 4096, 0)
        except OSError:
            os.close(fd)
            return None
        self._files[pid] = [fd, -1]
        return data[data.rfind(b")") + 2 :].split()

    def children(self, pid: int, single_threaded: bool) -> list[int] | None:
        """The direct children of ``pid`` (see :func:`read_children`), read through its file."""
        files = self._files.get(pid)
        if files is None or not single_threaded:
            return read_children(pid, single_threaded)
        if files[1] < 0:
            try:
                files[1] = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY)
            except OSError:
                return None
        try:
            return sorted(int(word) for word in _pread_all(files[1]).split())
        except OSError:
            return None

    def keep_only(self, pids: set[int]) -> None:
        """Close the files of every process but these (the ones the walk just saw)."""
        for pid in [pid for pid in self._files if pid not in pids]:
            self.forget(pid)

    def forget(self, pid: int) -> None:
        """Close the files of ``pid``."""
        files = self._files.pop(pid, None)
        if files is not None:
            for fd in files:
                if fd >= 0:
                    os.close(fd)

    def close(self) -> None:
        """Close every file."""
        for pid in list(self._files):
            self.forget(pid)
