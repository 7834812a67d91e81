"""Lineage: every process the run starts stays in pytest's tree, and each is tied to its test.

pytest becomes a child subreaper, and at every test boundary the recorder walks the tree
below it, giving each new process its owners and reaping exited orphans nobody waits for.
The rules: docs/how-it-works/lineage.md and docs/how-it-works/attribution.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from pytest_leanhost.core.probe import ProcessTable
from pytest_leanhost.core.procfs import (
    LastPid,
    ProcessFiles,
    TaskChildren,
    boot_time,
    boottime_ticks,
    clock_ticks_per_second,
    read_children,
    stat_fields,
)

if TYPE_CHECKING:
    from pytest_leanhost.core.interpreter import ChildWaiters

__all__ = [
    "PR_GET_CHILD_SUBREAPER",
    "PR_SET_CHILD_SUBREAPER",
    "Lineage",
    "Seen",
    "Span",
    "become_subreaper",
    "boottime_ticks",
    "clock_ticks_per_second",
    "direct_children",
    "is_subreaper",
    "start_tick",
    "subreaper_supported",
    "tick_to_unix",
    "unix_to_tick",
]

#: ``prctl`` options (linux/prctl.h).
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

_LINUX = sys.platform.startswith("linux") and os.path.isdir("/proc")


_TICKS = clock_ticks_per_second()


def subreaper_supported() -> bool:
    """Whether this OS has child subreapers (Linux only)."""
    return _LINUX


def _prctl(option: int, arg: int | ctypes.c_int | ctypes._Pointer[ctypes.c_int]) -> int:
    # The running program's own symbols hold libc's: no ctypes.util.find_library,
    # which runs ldconfig in a subprocess (tens of milliseconds at every start).
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.restype = ctypes.c_int
    return int(prctl(ctypes.c_int(option), arg, 0, 0, 0))


def become_subreaper() -> bool:
    """Make this process a child subreaper; ``False`` when the OS has none or it failed.

    Never raises: where it returns ``False`` the run keeps marker-only behaviour.
    """
    if not _LINUX:
        return False
    try:
        return _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
    except (OSError, AttributeError, TypeError, ValueError):
        return False


def is_subreaper() -> bool:
    """Whether this process is a child subreaper now (``False`` off Linux)."""
    if not _LINUX:
        return False
    flag = ctypes.c_int(0)
    try:
        if _prctl(PR_GET_CHILD_SUBREAPER, ctypes.pointer(flag)) != 0:
            return False
    except (OSError, AttributeError, TypeError, ValueError):
        return False
    return flag.value != 0


def _read_stat(pid: int) -> tuple[int, int, bool, bool] | None:
    """``(ppid, start tick, zombie, single-threaded)`` from ``/proc/PID/stat``; ``None``: gone."""
    return _stat_of(stat_fields(pid))


def _stat_of(fields: list[bytes] | None) -> tuple[int, int, bool, bool] | None:
    """``(ppid, start tick, zombie, single-threaded)`` from the fields of a stat line."""
    if fields is None:
        return None
    try:
        return int(fields[1]), int(fields[19]), fields[0] in (b"Z", b"X"), fields[17] == b"1"
    except (IndexError, ValueError):
        return None


def start_tick(pid: int) -> int | None:
    """When ``pid`` started, in :func:`boottime_ticks`' clock; ``None`` when it is gone."""
    if _LINUX:
        stat = _read_stat(pid)
        return None if stat is None else stat[1]
    import psutil

    try:
        return int(psutil.Process(pid).create_time() * _TICKS)
    except psutil.Error:
        return None


def direct_children(pid: int, single_threaded: bool = False) -> list[int]:
    """The direct children of ``pid`` now (zombies included), by PID.

    Linux: ``/proc/PID/task/TID/children`` of every task, since a child belongs
    to the thread that forked it (only the main task's when ``single_threaded``).
    Elsewhere psutil.
    """
    if _LINUX:
        return read_children(pid, single_threaded) or []
    import psutil

    try:
        return sorted(child.pid for child in psutil.Process(pid).children())
    except psutil.Error:
        return []


class Span(NamedTuple):
    """One test's span, in start ticks: from the start of setup to the end of teardown.

    A named tuple: one per test, as cheap to define as to make.
    """

    nodeid: str
    begin_tick: int
    end_tick: int | None = None

    def holds(self, tick: int) -> bool:
        """Whether a process that started at ``tick`` may have started in this span."""
        return self.begin_tick <= tick and (self.end_tick is None or tick <= self.end_tick)


class Seen(NamedTuple):
    """A process the recorder saw at a boundary: who it first hung under, and its owners.

    A named tuple, as psutil's per-process results are: made by the hundred.
    """

    pid: int
    start_tick: int
    first_parent: int
    owners: tuple[str, ...]
    #: Whether it was first seen with a parent other than the root: it was
    #: adopted when it is the root's child later, and no code of the root waits for it.
    first_seen_deeper: bool


class Lineage:
    """Records, at every test boundary, which processes appeared below ``root`` and whose they are.

    ``begin(nodeid)`` at the start of a test's setup and ``end(nodeid)`` at the
    end of its teardown; :meth:`attribute` at session end. See the module
    docstring for the rules. Not thread-safe: call it from pytest's main thread.
    """

    def __init__(
        self,
        root: int | None = None,
        clock: Callable[[], int] = boottime_ticks,
        last_pid: Callable[[], int | None] | None = None,
        helpers: Callable[[], Collection[int]] = frozenset,
        waiters: ChildWaiters | None = None,
    ) -> None:
        self.root = os.getpid() if root is None else root
        #: The interpreter's lifetime helpers now (asked at each walk): never a
        #: test's, and their children are owned by start tick, not by them.
        self._helpers = helpers
        #: Who may wait for the root's children; with it, exited adopted children are reaped.
        self._waiters = waiters
        #: Now, in start ticks; a fixed clock lets a test place spans on one tick.
        self._clock = clock
        #: The kernel's PID counter (``None`` where it has none: then every boundary walks).
        self._counter = LastPid() if last_pid is None else None
        self._last_pid = last_pid
        #: The counter's bytes (one C call on Linux), compared as read.
        self._reading = self._counter.reading if self._counter is not None else None
        self._walked_at: object = None
        #: The root's own children, read through files kept open (Linux).
        self._root_children = TaskChildren(self.root) if _LINUX else None
        #: Each live descendant's stat and children files, kept open between walks.
        self._files = ProcessFiles() if _LINUX else None
        #: ``(node id, begin tick, end tick or None)``: plain tuples, made into
        #: :class:`Span` only when asked (twice per test, so it must be cheap).
        self._spans: list[tuple[str, int, int | None]] = []
        self._running: str | None = None
        self._seen: dict[tuple[int, int], Seen] = {}
        #: The processes seen, by each of their owners (the per-test check asks by test).
        self._by_owner: dict[str, list[Seen]] = {}
        self._last_tick = clock()
        #: Whether the last boundary was a test's end (the next begin then skips its walk).
        self._ended = False
        #: How many boundaries walked the tree (the others found the PID counter unmoved).
        self.walks = 0
        #: Processes started while a wider-scoped fixture was set up: judged when its
        #: scope ends, not at the teardown of the test that set it up.
        self._deferred: dict[tuple[int, int], str] = {}
        #: Whether the last walk saw a live process below the root: one may exit
        #: (or be adopted and exit) without the PID counter moving.
        self._live_below = False
        #: Exited children this recorder reaped.
        self.reaped = 0

    @property
    def spans(self) -> tuple[Span, ...]:
        """Every span so far, in order."""
        return tuple(Span(*span) for span in self._spans)

    @property
    def last_tick(self) -> int:
        """The tick of the last boundary (where the newest span begins or ends)."""
        return self._last_tick

    def close(self) -> None:
        """Close the files kept open (the PID counter, the root's children)."""
        self._reading = None  # its file descriptor is closed now, and may be reused
        if self._counter is not None:
            self._counter.close()
        if self._root_children is not None:
            self._root_children.close()
        if self._files is not None:
            self._files.close()

    @property
    def running(self) -> str | None:
        """The test whose span is open, if any."""
        return self._running

    def seen(self) -> Iterator[Seen]:
        """Every process seen at a boundary, in the order first seen."""
        return iter(self._seen.values())

    def identities(self) -> frozenset[tuple[int, int]]:
        """Every ``(pid, start tick)`` seen below the root: the run's processes, dead or alive."""
        return frozenset(self._seen)

    def begin(self, nodeid: str, tick: int | None = None) -> None:
        """A test's setup starts: what appeared since the last boundary is not this test's.

        ``tick`` is now, when the caller has just read the clock (the session
        reads the phase clock); else the recorder reads its own.

        Rule: right after a test's end the tree is not walked again. Between two
        tests pytest's loop runs no test code, so what starts there (another
        plugin's protocol hook) is the next test's: the walk at its end finds it
        as started after the previous boundary. Otherwise (the first test, after
        session start and collection) the walk runs, so what collection started
        is no test's.
        """
        if self._ended:
            self._ended = False
            now = self._clock() if tick is None else tick
        else:
            self.boundary(tick)
            now = self._last_tick
        self._running = nodeid
        self._spans.append((nodeid, now, None))

    def end(self, nodeid: str, tick: int | None = None) -> None:
        """A test's teardown ended: what appeared during its span is its own."""
        self.boundary(tick)
        spans = self._spans
        last = len(spans) - 1
        if last >= 0 and spans[last][0] == nodeid and spans[last][2] is None:
            spans[last] = (nodeid, spans[last][1], self._last_tick)  # the usual case
        else:
            for index in range(last, -1, -1):
                name, begin, end = spans[index]
                if name == nodeid and end is None:
                    spans[index] = (nodeid, begin, self._last_tick)
                    break
        if self._running == nodeid:
            self._running = None
        self._ended = True

    def boundary(self, tick: int | None = None) -> None:
        """Walk the tree below the root once and remember each new process (see rules 1-3).

        ``tick`` is now, when the caller has just read the clock.

        Rule: the counter is read before the walk, so a process created during
        the walk (which the walk may miss) moves it, and the next boundary walks
        again; one created before the counter is read (after the clock was, say)
        moved it already, and this walk sees it.
        """
        self._ended = False
        reading = self._reading
        counter: object
        if reading is not None:
            try:
                counter = reading()
            except OSError:
                counter = None  # walk
        else:
            counter = self._last_pid() if self._last_pid is not None else None
        now = self._clock() if tick is None else tick
        if counter is not None and counter == self._walked_at:
            self._last_tick = now  # nothing created since the last walk began
            if self._live_below and self._waiters is not None:
                self.reap_exited()  # but something may have exited
            return
        self._walked_at = counter
        self.walks += 1
        opening = self._last_tick
        helpers = self._helpers()
        # Breadth first, so a parent is identified (and owned) before its children.
        queue: list[tuple[Seen | None, int]] = [(None, pid) for pid in self._root_pids()]
        exited: list[tuple[int, int]] = []
        live = False
        files = self._files
        visited: set[int] = set()
        while queue:
            parent, pid = queue.pop(0)
            stat = _stat_of(files.stat(pid)) if files is not None else None
            tick = stat[1] if stat is not None else None if _LINUX else start_tick(pid)
            if tick is None:
                continue  # gone (reaped) since its parent's list was read
            seen = self._seen.get((pid, tick))
            if seen is None:
                seen = self._remember(pid, tick, parent, opening, helpers)
            if stat is not None and stat[2]:
                if parent is None:
                    exited.append((pid, tick))
                    visited.add(pid)  # its file, bound to it, checks it once more before reaping
                continue  # a zombie has no children: they were reparented when it died
            live = True
            single = stat is not None and stat[3]
            if files is not None:
                visited.add(pid)
                children = files.children(pid, single) or []
            else:
                children = direct_children(pid)
            queue.extend((seen, child) for child in children)
        if files is not None:
            files.keep_only(visited)  # the files of exited and gone processes are closed
        self._last_tick = now
        self._live_below = live
        if exited and self._waiters is not None:
            self._reap(exited)

    def _root_pids(self) -> list[int]:
        roots = self._root_children.read() if self._root_children is not None else None
        return direct_children(self.root) if roots is None else roots

    def _remember(
        self, pid: int, tick: int, parent: Seen | None, opening: int, helpers: Collection[int]
    ) -> Seen:
        # Rule: a fork server's child was asked for by the test running when it
        # started, not by the one that started the fork server: it is owned as
        # pytest's own child is (rules 2 and 3), never by rule 1.
        helper_child = parent is not None and parent.pid in helpers
        if parent is not None and not helper_child and parent.owners:
            owners = parent.owners  # rule 1: its nearest attributed ancestor's
        elif (parent is None or helper_child) and tick >= opening and self._running is not None:
            owners = (self._running,)  # rule 2
        else:
            owners = self.spans_holding(tick) or (  # rule 3
                (self._running,) if self._running is not None else ()
            )
        seen = Seen(
            pid,
            tick,
            self.root if parent is None else parent.pid,
            owners,
            first_seen_deeper=parent is not None,
        )
        self._seen[(pid, tick)] = seen
        if parent is not None and (parent.pid, parent.start_tick) in self._deferred:
            self._deferred[(pid, tick)] = self._deferred[(parent.pid, parent.start_tick)]
        for owner in owners:
            self._by_owner.setdefault(owner, []).append(seen)
        return seen

    # -- wider fixtures ----------------------------------------------------------

    def mark(self) -> int:
        """A bookmark: how many processes were seen so far (see :meth:`defer_since`)."""
        return len(self._seen)

    def defer_since(self, mark: int, why: str) -> list[Seen]:
        """Defer every process first seen since ``mark``, and their descendants, for ``why``.

        Called right after a wider-scoped fixture's setup (with a walk before and
        after it): what it started lives until its scope ends, so no test's
        teardown judges it.
        """
        fresh = list(self._seen.values())[mark:]
        for seen in fresh:
            self._deferred[(seen.pid, seen.start_tick)] = why
        return fresh

    def deferred(self, pid: int, tick: int) -> str | None:
        """Why ``(pid, tick)`` is judged at its fixture's scope end, if it is."""
        return self._deferred.get((pid, tick))

    # -- exited children ---------------------------------------------------------

    def reap_exited(self) -> list[int]:
        """Reap the root's exited children that nothing in the interpreter waits for."""
        if not _LINUX or self._waiters is None or self.root != os.getpid():
            return []
        exited = []
        for pid in self._root_pids():
            stat = _read_stat(pid)
            if stat is not None and stat[2]:
                exited.append((pid, stat[1]))
        return self._reap(exited) if exited else []

    def _reap(self, exited: list[tuple[int, int]]) -> list[int]:
        """Reap each exited child of the root that no Python object may wait for.

        Rule: a child some ``Popen`` (asyncio's too), multiprocessing ``Process``
        or bare ``os.fork`` may still wait for keeps its status (``ChildWaiters``);
        any other exited child was adopted (its launcher is gone), so nobody else
        can wait for it. The first such child before Popens are watched makes the
        interpreter watch them (and find those alive) before anything is taken.
        """
        waiters = self._waiters
        if waiters is None or self.root != os.getpid():
            return []
        if not waiters.watching_popens:
            waiters.watch_popens()
        waiters.close_spawn_ranges()
        held = waiters.held()
        reaped: list[int] = []
        files = self._files
        for pid, tick in exited:
            if pid in held or waiters.forked_by_us(pid):
                continue
            # Through the file kept open for that very process, where there is one: a
            # reaped and reused PID reads as gone there, never as another process.
            stat = _stat_of(files.stat(pid)) if files is not None else _read_stat(pid)
            if stat is None or stat[0] != self.root or stat[1] != tick or not stat[2]:
                continue  # no longer that zombie child of ours
            with contextlib.suppress(ChildProcessError):
                done, _status = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    reaped.append(pid)
            if files is not None:
                files.forget(pid)
        self.reaped += len(reaped)
        return reaped

    def add_spans(self, spans: Iterable[Span]) -> None:
        """Take spans recorded elsewhere (a dead xdist worker's), for attribution by start tick."""
        self._spans.extend((span.nodeid, span.begin_tick, span.end_tick) for span in spans)

    def spans_holding(self, tick: int) -> tuple[str, ...]:
        """The node ids of every span that holds ``tick``, in span order, each once."""
        return tuple(
            dict.fromkeys(
                nodeid
                for nodeid, begin, end in self._spans
                if begin <= tick and (end is None or tick <= end)
            )
        )

    def alive_owned_by(self, nodeid: str) -> set[int]:
        """The PIDs of the live processes the recorder gave to ``nodeid`` (as of the last walk).

        Each is checked as ``(pid, start tick)``, so a PID that now names another
        process is not the test's; a zombie is no leak.
        """
        found: set[int] = set()
        owned = self._by_owner.get(nodeid)
        if not owned:
            return found  # the common case: the test started nothing still seen
        helpers = self._helpers()
        for seen in owned:
            if seen.pid in helpers or (seen.pid, seen.start_tick) in self._deferred:
                continue
            if _LINUX:
                stat = _read_stat(seen.pid)
                if stat is None or stat[1] != seen.start_tick or stat[2]:
                    continue
            elif start_tick(seen.pid) != seen.start_tick:
                continue
            found.add(seen.pid)
        return found

    def lookup(self, pid: int, tick: int) -> Seen | None:
        """What the recorder knows of exactly this process, if it saw it."""
        return self._seen.get((pid, tick))

    def attribute(self, pid: int, table: ProcessTable | None = None) -> tuple[str, ...]:
        """The test(s) ``pid`` belongs to: one when exact, several when ambiguous, none outside.

        ``table`` is the session-end process table (read now when omitted); it
        gives the current parents of processes the recorder never saw.
        """
        snapshot = ProcessTable.snapshot() if table is None else table
        tick = start_tick(pid)
        if tick is None:
            return ()
        known = self._seen.get((pid, tick))
        if known is not None:
            return known.owners
        # Climb the current tree to the nearest ancestor the recorder knows.
        helpers = self._helpers()
        earliest = (pid, tick)
        current = pid
        visited = {pid}
        while True:
            info = snapshot.get(current)
            if info is None:
                return ()
            parent = info.ppid
            if parent == self.root:
                return self.spans_holding(earliest[1])
            if parent in visited or parent <= 1:
                return ()  # not below the root: not the run's by lineage
            visited.add(parent)
            parent_tick = start_tick(parent)
            if parent_tick is None:
                return ()
            if parent in helpers:
                return self.spans_holding(earliest[1])  # a fork server's child: by start tick
            seen = self._seen.get((parent, parent_tick))
            if seen is not None:
                return seen.owners
            earliest = (parent, parent_tick)
            current = parent

    def descendants(self, table: ProcessTable | None = None) -> list[int]:
        """Every process below the root now (psutil-backed table off Linux)."""
        snapshot = ProcessTable.snapshot() if table is None else table
        return snapshot.descendants(self.root)

    def reap_terminated(self, terminated: Iterable[tuple[int, int]]) -> list[int]:
        """Reap the exact zombies the plugin terminated that were adopted; return their PIDs.

        ``terminated`` holds the ``(pid, start tick)`` of each process the plugin
        signalled. Only a PID meeting every condition of the reaping rule (module
        docstring) is waited for, with ``WNOHANG``, one by one.
        """
        if self.root != os.getpid() or not _LINUX:
            return []
        reaped: list[int] = []
        for pid, tick in terminated:
            seen = self._seen.get((pid, tick))
            if seen is None or not seen.first_seen_deeper:
                continue  # (c): pytest may have forked it: its waiter owns the status
            stat = _read_stat(pid)
            if stat is None or stat[0] != self.root or stat[1] != tick or not stat[2]:
                continue  # (b): not our zombie child, or no longer that process
            with contextlib.suppress(ChildProcessError):
                done, _status = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    reaped.append(pid)
        return reaped


def tick_to_unix(tick: int, boot: float | None = None) -> float:
    """A start tick as wall-clock seconds (as psutil's ``create_time``); ``boot``: a
    :func:`~pytest_leanhost.core.procfs.boot_time` the caller read once for many ticks."""
    if not _LINUX:
        return tick / _TICKS
    return tick / _TICKS + (boot_time() if boot is None else boot)


def unix_to_tick(seconds: float) -> int:
    """Wall-clock seconds as a start tick (the inverse of :func:`tick_to_unix`)."""
    return int((seconds - tick_to_unix(0)) * _TICKS)
