"""What pytest's interpreter keeps or waits for: its lifetime helpers, its children's waiters.

Two questions the check must ask the interpreter, not the process table:

- which processes the interpreter keeps for its whole lifetime (multiprocessing's
  resource tracker and fork server): never leaks, never signalled;
- which child PIDs some Python object will still wait for (a live
  ``subprocess.Popen``, which asyncio's subprocess transports use too, a
  multiprocessing ``Process``, a bare ``os.fork``): their exit statuses are
  never taken from them.

Both answers come from the modules themselves (``sys.modules``, never an import,
never a name or a command line), read when asked.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any

from pytest_leanhost.core.procfs import LastPid, stat_fields

__all__ = ["ChildWaiters", "interpreter_helpers", "multiprocessing_daemons"]

#: Why a daemonic multiprocessing child is reported but never signalled.
DAEMON_NOT_SIGNALLED = (
    "a daemonic multiprocessing child of pytest's interpreter (a Pool's worker):"
    " not signalled, since its pool may hold a lock in it; multiprocessing stops it"
    " when pytest exits"
)


def interpreter_helpers() -> dict[int, str]:
    """The live helpers this interpreter keeps until it exits, by PID, with what each is.

    multiprocessing starts one resource tracker (``spawn`` and ``forkserver``
    contexts, shared memory, semaphores) and, with ``forkserver``, one fork
    server; both live as long as the interpreter that started them. The PIDs
    come from the modules' own state (CPython 3.10 to 3.13 keep them in these
    attributes), and count only while the PID is still a child of this process.
    """
    found: dict[int, str] = {}
    tracker_module = sys.modules.get("multiprocessing.resource_tracker")
    tracker = getattr(tracker_module, "_resource_tracker", None)
    _add_child(found, getattr(tracker, "_pid", None), "multiprocessing resource tracker")
    forkserver_module = sys.modules.get("multiprocessing.forkserver")
    forkserver = getattr(forkserver_module, "_forkserver", None)
    _add_child(found, getattr(forkserver, "_forkserver_pid", None), "multiprocessing fork server")
    return found


def multiprocessing_daemons() -> set[int]:
    """The PIDs of this interpreter's live daemonic multiprocessing children (Pool workers).

    Rule: they are reported, never signalled. A Pool's worker may hold the
    pool's shared queue lock; killed, it leaves the lock taken, and the pool's
    own finalizer then waits forever when pytest exits. multiprocessing
    terminates every daemonic child at exit itself.
    """
    process_module = sys.modules.get("multiprocessing.process")
    found: set[int] = set()
    for child in list(getattr(process_module, "_children", None) or ()):
        popen = getattr(child, "_popen", None)
        pid = getattr(popen, "pid", None)
        config = getattr(child, "_config", None) or {}
        if (
            isinstance(pid, int)
            and config.get("daemon")
            and getattr(popen, "returncode", 0) is None
        ):
            found.add(pid)
    return found


def _add_child(found: dict[int, str], pid: object, what: str) -> None:
    if (
        isinstance(pid, int)
        and not isinstance(pid, bool)
        and pid > 0
        and _parent(pid) == os.getpid()
    ):
        found[pid] = what


def _parent(pid: int) -> int | None:
    """The parent PID of ``pid`` (``None`` when it is gone)."""
    if sys.platform.startswith("linux"):
        fields = stat_fields(pid)
        return int(fields[1]) if fields is not None else None
    try:
        import psutil

        return psutil.Process(pid).ppid()
    except Exception:  # psutil.Error: gone, or not ours to see
        return None


class ChildWaiters:
    """Which of this process's children some Python object may still wait for.

    Rule: an exit status belongs to whoever waits for it, and only these may:

    - a ``subprocess.Popen`` whose ``returncode`` is still unset (asyncio's
      subprocess transports hold one each). Popens are seen by the
      ``subprocess.Popen`` audit event, from :meth:`watch_popens` on; the
      Popens alive at that moment are found once by the garbage collector;
    - a multiprocessing ``Process`` not yet joined (``multiprocessing.process``'s
      own set of children), and the interpreter's helpers;
    - a bare ``os.fork`` or ``os.forkpty`` (Python's at-fork hooks): the PIDs the
      kernel handed out around each fork are kept, since the child's own PID
      is not known to the hook; ``os.posix_spawn`` likewise, once Popens are
      watched.

    The audit hook costs every audited event of the interpreter (about 130 ns),
    so it is installed only when the first zombie child appears that only it
    could clear; the at-fork hooks cost nothing until something forks.
    One set of hooks per interpreter, whatever number of sessions (a nested pytest).
    """

    _installed: ChildWaiters | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._counter = LastPid()
        #: ``(last PID before, last PID after)`` around each fork or spawn of this process.
        self._ranges: list[tuple[int, int | None]] = []
        self._before_fork: int | None = None
        self._popens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._watching = False

    @classmethod
    def of_interpreter(cls) -> ChildWaiters:
        """The one instance of this interpreter, its at-fork hooks registered."""
        with cls._lock:
            if cls._installed is None:
                waiters = cls()
                if hasattr(os, "register_at_fork"):
                    os.register_at_fork(
                        before=waiters._fork_begins, after_in_parent=waiters._fork_ended
                    )
                cls._installed = waiters
            return cls._installed

    @property
    def watching_popens(self) -> bool:
        """Whether every new Popen is seen (the audit hook is installed)."""
        return self._watching

    def watch_popens(self) -> None:
        """Install the audit hook, and find the Popens alive now (once per interpreter)."""
        if self._watching:
            return
        self._watching = True
        import gc
        import subprocess

        for obj in gc.get_objects():
            if isinstance(obj, subprocess.Popen):
                self._popens.add(obj)
        sys.addaudithook(self._audit)

    def held(self) -> set[int]:
        """The child PIDs some Python object may still wait for (see the class's rule)."""
        held = {
            popen.pid
            for popen in list(self._popens)
            if getattr(popen, "returncode", 0) is None
            and isinstance(getattr(popen, "pid", None), int)
        }
        subprocess = sys.modules.get("subprocess")
        for popen in list(getattr(subprocess, "_active", None) or ()):
            if isinstance(getattr(popen, "pid", None), int):
                held.add(popen.pid)
        process_module = sys.modules.get("multiprocessing.process")
        for child in list(getattr(process_module, "_children", None) or ()):
            popen = getattr(child, "_popen", None)
            pid = getattr(popen, "pid", None)
            if isinstance(pid, int) and getattr(popen, "returncode", None) is None:
                held.add(pid)
        held.update(interpreter_helpers())
        return held

    def forked_by_us(self, pid: int) -> bool:
        """Whether ``pid`` may be the child of a bare fork (or spawn) of this interpreter."""
        now = self._counter.read()
        for before, after in self._ranges:
            high = after if after is not None else now
            if high is None:
                return True  # no PID counter to bound it: keep every fork's child
            if before < high:
                if before < pid <= high:
                    return True
            elif pid > before or pid <= high:  # the counter wrapped around
                return True
        return False

    def close_spawn_ranges(self) -> None:
        """Bound the PIDs of the spawns seen so far by the counter now."""
        now = self._counter.read()
        self._ranges = [(b, now if a is None else a) for b, a in self._ranges]

    # -- hooks -------------------------------------------------------------------

    def _fork_begins(self) -> None:
        self._before_fork = self._counter.read()

    def _fork_ended(self) -> None:
        before, after = self._before_fork, self._counter.read()
        if before is not None:
            self._ranges.append((before, after))

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "subprocess.Popen":
            # Rule: the event is raised in Popen._execute_child, whose ``self`` is the Popen.
            frame = sys._getframe(1)
            popen = frame.f_locals.get("self")
            if popen is not None:
                self._popens.add(popen)
        elif event in ("os.posix_spawn", "os.posix_spawnp"):
            before = self._counter.read()
            if before is not None:
                self._ranges.append((before, None))
