"""One check's verdicts: what a test run left behind, and cleaning up what is provably ours.

Data flows one way: the session's registries are read and judged (probe),
the processes carrying the session id are found (ownership), and each leftover
becomes a :class:`Finding`. :func:`clean_up` then acts only on what the run
owns: a process is signalled only when it carries the session id and still has
the create time it had when it was found; a file is removed only when it is a
regular file in a session registry that is a stale or corrupt record.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

from pytest_leanhost.core.finding import CleanupTarget, Finding, Pair, ProcessOrigin
from pytest_leanhost.core.kinds import Action, LeakKind
from pytest_leanhost.core.ownership import MarkedProcess, find_marked_processes
from pytest_leanhost.core.probe import ProcessTable

# What loads only when there is something to judge, explain, wait for or stop: a
# run whose tests started no server never imports the doctor, the explanation or psutil.
if TYPE_CHECKING:
    from pytest_leanhost.core.lineage import Lineage
    from pytest_leanhost.core.probe import JudgedRecord
    from pytest_leanhost.core.processes import PinnedProcess
    from pytest_leanhost.core.registry import RegistryEntry
    from pytest_leanhost.core.registry_snapshots import WatchedRegistries, WatchSnapshot

__all__ = [
    "LineageView",
    "SessionCheck",
    "WatchedView",
    "check_session",
    "clean_up",
]

_VERDICT_KIND: dict[str, LeakKind] = {
    "stale": "stale_record",
    "reused": "stale_record",
    "orphaned": "orphaned_server",
    "alive": "leaked_server",
    "corrupt": "corrupt_record",
}


class SessionCheck(NamedTuple):
    """The result of one check: findings with their cleanup targets, the doctor's view."""

    pairs: list[Pair]
    judged: dict[str, list[JudgedRecord]]
    nodeids: dict[str, str | None]
    registries_checked: int
    records_checked: int
    seconds: float = 0.0
    #: Where each process finding's process came from, by its PID (see :class:`ProcessOrigin`).
    origins: Mapping[int, ProcessOrigin] = MappingProxyType({})
    #: How many of the run's processes were alive to be looked at (marked or by lineage).
    processes_looked_at: int = 0
    #: The marked processes a fork server of pytest's interpreter started: their
    #: environment is the fork server's, so it names neither their test nor their phase.
    helper_children: frozenset[int] = frozenset()

    @property
    def findings(self) -> list[Finding]:
        """The findings alone, in order."""
        return [finding for finding, _ in self.pairs]


class LineageView(NamedTuple):
    """What the check needs of the run's lineage: the recorder and what to leave out.

    ``exclude_trees`` are PIDs whose whole subtree is someone else's (live
    xdist workers, below the controller); ``before`` the ``(pid, start tick)``
    of every descendant alive when the session started: never blamed.
    """

    lineage: Lineage
    exclude_trees: frozenset[int] = frozenset()
    before: frozenset[tuple[int, int]] = frozenset()


class WatchedView(NamedTuple):
    """The registries a server could reach without the variable, as they were at session start.

    ``pytest_pids`` are the run's pytest processes (a record naming one as its
    parent at start is the run's); ``started_unix_millis`` is the session start.
    """

    registries: WatchedRegistries
    before: WatchSnapshot
    pytest_pids: frozenset[int]
    started_unix_millis: int


#: Why a server's record is in a watched registry rather than its test's.
MISSED_REGISTRY = (
    "registered in {registry}, not its test's registry: its launcher dropped the "
    "environment (LEAN_HOST_MCP_PROCESS_REGISTRY_DIR); pass the leanhost_env fixture "
    "or pytest_leanhost.child_env() into the environment the launcher builds"
)


def check_session(
    registries: Mapping[str, str | None],
    session_id: str | None,
    *,
    exclude_pids: Iterable[int] = (),
    helpers: Collection[int] = (),
    grace: float = 1.0,
    worker: str | None = None,
    only_worker: str | None = None,
    lineage: LineageView | None = None,
    watched: WatchedView | None = None,
) -> SessionCheck:
    """Judge the session's registries and marked processes, and return the leaks.

    ``registries`` maps each registry directory to the node id of the test that
    owned it. Processes still alive get ``grace`` seconds to exit by themselves
    (polled, not slept); only what is still there afterwards is a leak. With
    ``only_worker``, marked processes count only when a test of that pytest-xdist
    worker started them (a worker judges its own tests' leftovers).

    ``lineage`` adds the live descendants of the run (found without a marker,
    attributed by :meth:`~pytest_leanhost.core.lineage.Lineage.attribute`);
    ``watched`` adds the records the run's processes wrote into registries
    they reached without the variable.
    """
    started = time.perf_counter()
    excluded = {os.getpid(), *exclude_pids, *helpers}
    snapshot = _snapshot(registries, session_id, excluded, only_worker, lineage, watched)
    candidates = [_pid(item) for items in snapshot.judged.values() for item in items if item.alive]
    candidates += [_pid(item) for item, _ in snapshot.watched if item.alive]
    candidates += list(snapshot.marked)
    candidates += list(snapshot.descendants)
    if candidates and grace > 0:
        import psutil

        from pytest_leanhost.core.processes import wait_gone

        procs = []
        for pid in set(candidates):
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        if wait_gone(procs, grace) != procs:
            # Something exited in the grace: judge again what is left now.
            snapshot = _snapshot(registries, session_id, excluded, only_worker, lineage, watched)
    helper_children = _helper_children(snapshot, helpers, lineage)
    classified = _classify(registries, snapshot, worker, helper_children)
    classified += _classify_watched(snapshot, lineage, worker)
    classified += _classify_descendants(classified, snapshot, lineage, worker)
    return SessionCheck(
        pairs=classified,
        judged=snapshot.judged,
        nodeids=dict(registries),
        registries_checked=len(registries),
        records_checked=sum(len(items) for items in snapshot.judged.values()),
        seconds=time.perf_counter() - started,
        origins=_origins(classified, snapshot, lineage),
        processes_looked_at=len(snapshot.marked.keys() | snapshot.descendants.keys()),
        helper_children=frozenset(helper_children),
    )


class _Snapshot(NamedTuple):
    """One look at the process table, and everything judged against it."""

    table: ProcessTable
    judged: dict[str, list[JudgedRecord]]
    marked: dict[int, MarkedProcess]
    unreadable: dict[str, str]
    #: Live descendants of the run found by lineage: PID to (create time, start tick).
    descendants: dict[int, tuple[float, int]]
    #: Records of the run's processes in watched registries, judged, with the registry.
    watched: list[tuple[JudgedRecord, str]]


def _snapshot(
    registries: Mapping[str, str | None],
    session_id: str | None,
    excluded: set[int],
    only_worker: str | None,
    lineage: LineageView | None = None,
    watched: WatchedView | None = None,
) -> _Snapshot:
    table = ProcessTable.snapshot()
    judged, unreadable = _judge_registries(registries, table) if registries else ({}, {})
    marked: dict[int, MarkedProcess] = {}
    if session_id is not None:
        marked = find_marked_processes(session_id, table, exclude=excluded)
        if only_worker is not None:
            marked = {pid: m for pid, m in marked.items() if m.worker == only_worker}
    descendants: dict[int, tuple[float, int]] = {}
    if lineage is not None:
        skipped = _subtrees(table, lineage.exclude_trees - {lineage.lineage.root})
        # A live xdist worker's subtree is that worker's to judge, marked or not.
        marked = {pid: m for pid, m in marked.items() if pid not in skipped}
        descendants = _lineage_descendants(table, lineage, excluded | skipped)
    found = (
        _watched_records(table, watched, lineage, marked, descendants)
        if watched is not None
        else []
    )
    return _Snapshot(table, judged, marked, unreadable, descendants, found)


def _subtrees(table: ProcessTable, roots: Iterable[int]) -> set[int]:
    """The live ``roots`` and everything below them."""
    found = {pid for pid in roots if pid in table}
    for pid in list(found):
        found.update(table.descendants(pid))
    return found


def _lineage_descendants(
    table: ProcessTable, view: LineageView, excluded: set[int]
) -> dict[int, tuple[float, int]]:
    """The run's live descendants: below the root, none alive before the session, no zombie.

    A process below the root was started by the run (an orphan is adopted only
    from the root's own subtree), so it is the run's by lineage.
    """
    from pytest_leanhost.core.lineage import start_tick

    found: dict[int, tuple[float, int]] = {}
    for pid in table.descendants(view.lineage.root):
        info = table.get(pid)
        if info is None or info.zombie or pid in excluded:
            continue
        tick = start_tick(pid)
        if tick is None or (pid, tick) in view.before:
            continue
        found[pid] = (info.create_time, tick)
    return found


def _watched_records(
    table: ProcessTable,
    view: WatchedView,
    lineage: LineageView | None,
    marked: Mapping[int, MarkedProcess],
    descendants: Mapping[int, tuple[float, int]],
) -> list[tuple[JudgedRecord, str]]:
    """The new or changed records in watched registries that the run's processes wrote."""
    from pytest_leanhost.core.lineage import tick_to_unix
    from pytest_leanhost.core.probe import judge_entries, registry_trust
    from pytest_leanhost.core.procfs import boot_time
    from pytest_leanhost.core.registry_snapshots import SessionFacts

    starts = {(pid, proc.create_time) for pid, proc in marked.items()}
    starts |= {(pid, created) for pid, (created, _tick) in descendants.items()}
    if lineage is not None:
        seen = lineage.lineage.identities() - lineage.before
        boot = boot_time()  # read once: one conversion per process the run started
        starts |= {(pid, tick_to_unix(tick, boot)) for pid, tick in seen}
    facts = SessionFacts(
        process_starts=frozenset(starts),
        pytest_pids=view.pytest_pids,
        started_unix_millis=view.started_unix_millis,
        ended_unix_millis=int(time.time() * 1000),
    )
    entries = view.registries.session_records(view.before, facts)
    by_registry: dict[str, list[RegistryEntry]] = {}
    for entry in entries:
        by_registry.setdefault(os.path.dirname(entry.path), []).append(entry)
    found: list[tuple[JudgedRecord, str]] = []
    for registry, items in sorted(by_registry.items()):
        trust = registry_trust(registry)
        found.extend((item, registry) for item in judge_entries(items, table, trust))
    return found


def _judge_registries(
    registries: Iterable[str], table: ProcessTable
) -> tuple[dict[str, list[JudgedRecord]], dict[str, str]]:
    """Each registry's records judged against ``table``; the registries that cannot be read."""
    from pytest_leanhost.core.doctor import inspect_registry
    from pytest_leanhost.core.registry import RegistryUnreadableError

    judged: dict[str, list[JudgedRecord]] = {}
    unreadable: dict[str, str] = {}
    for registry in registries:
        if os.path.islink(registry):
            # A session registry is a directory the run created: a link there leads out.
            unreadable[registry] = "symlink (not followed)"
            continue
        try:
            judged[registry] = inspect_registry(registry, table)
        except RegistryUnreadableError as exc:
            unreadable[registry] = exc.reason
    return judged, unreadable


def _helper_children(
    snapshot: _Snapshot, helpers: Collection[int], view: LineageView | None
) -> dict[int, tuple[str, ...]]:
    """The tests of each marked process a fork server started, by lineage (none without).

    Rule: a fork server's children inherit the environment of the test that
    started the fork server, not of the test that asked for them; their marker
    names the wrong test, so only lineage names theirs.
    """
    if not helpers:
        return {}
    found: dict[int, tuple[str, ...]] = {}
    for pid in snapshot.marked:
        if _has_ancestor_in(snapshot.table, pid, set(helpers)):
            found[pid] = view.lineage.attribute(pid, snapshot.table) if view is not None else ()
    return found


def _classify(
    registries: Mapping[str, str | None],
    snapshot: _Snapshot,
    worker: str | None,
    helper_children: Mapping[int, tuple[str, ...]],
) -> list[tuple[Finding, CleanupTarget]]:
    """Each leftover as a finding, with what cleanup may act on (never on a foreign one)."""
    found: list[tuple[Finding, CleanupTarget]] = []
    servers: set[int] = set()
    for registry, reason in snapshot.unreadable.items():
        finding = Finding(
            kind="corrupt_record",
            nodeid=registries[registry],
            registry=registry,
            detail=f"registry unreadable: {reason}",
            worker=worker,
        )
        found.append((finding, CleanupTarget()))
    for registry, items in snapshot.judged.items():
        for item in items:
            record = item.entry.record
            pid = record.pid if record is not None else _pid_from_name(item.path)
            foreign = _foreign(item)
            if item.alive and pid is not None and foreign is None:
                servers.add(pid)  # its marked descendants are part of this server's leak
            # A foreign record is reported, never acted on: no signal, no removal.
            proc = snapshot.marked.get(pid) if pid is not None and item.alive else None
            if foreign is not None:
                proc = None
            finding = Finding(
                kind=_VERDICT_KIND[item.verdict],
                nodeid=registries[registry],
                pid=pid,
                transport=record.transport if record is not None else None,
                record=item.path,
                registry=registry,
                detail="; ".join(filter(None, [foreign, _detail(item)])),
                worker=worker,
            )
            target = CleanupTarget(
                create_time=proc.create_time if proc is not None else None,
                data=item.entry.data if foreign is None else None,
            )
            found.append((finding, target))
    for pid, proc in sorted(snapshot.marked.items()):
        if pid in servers or _has_ancestor_in(snapshot.table, pid, servers):
            continue  # a live server's own worker: part of that server's leak
        nodeid, nodeids = proc.nodeid, tuple[str, ...]()
        if pid in helper_children:
            owners = helper_children[pid]
            nodeid, nodeids = (owners[0] if owners else None), owners if len(owners) > 1 else ()
        finding = Finding(
            kind="leaked_process",
            nodeid=nodeid,
            nodeids=nodeids,
            pid=pid,
            worker=proc.worker or worker,
        )
        found.append((finding, CleanupTarget(create_time=proc.create_time)))
    return found


def _classify_watched(
    snapshot: _Snapshot, view: LineageView | None, worker: str | None
) -> list[tuple[Finding, CleanupTarget]]:
    """Each of the run's records in a watched registry, with the test its PID belongs to.

    Acted on like a test's own record: a stale one removed only if unchanged; a
    live server stopped only when proven the run's (marker or lineage), create
    time pinned; a foreign registry's never.
    """
    found: list[tuple[Finding, CleanupTarget]] = []
    for item, registry in snapshot.watched:
        record = item.entry.record
        assert record is not None  # only valid records are the session's
        foreign = _foreign(item)
        owners = _record_owners(item, snapshot, view)
        create_time: float | None = None
        if item.alive and foreign is None:
            proc = snapshot.marked.get(record.pid)
            lineage_found = snapshot.descendants.get(record.pid)
            if proc is not None:
                create_time = proc.create_time
            elif lineage_found is not None:
                create_time = lineage_found[0]
        finding = Finding(
            kind=_VERDICT_KIND[item.verdict],
            nodeid=owners[0] if owners else None,
            nodeids=owners if len(owners) > 1 else (),
            pid=record.pid,
            transport=record.transport,
            record=item.path,
            registry=registry,
            detail="; ".join(
                filter(None, [foreign, MISSED_REGISTRY.format(registry=registry), _detail(item)])
            ),
            worker=worker,
        )
        target = CleanupTarget(
            create_time=create_time, data=item.entry.data if foreign is None else None
        )
        found.append((finding, target))
    return found


def _record_owners(
    item: JudgedRecord, snapshot: _Snapshot, view: LineageView | None
) -> tuple[str, ...]:
    """The test(s) a watched record's PID belongs to: marker, then lineage, then start tick."""
    record = item.entry.record
    assert record is not None
    proc = snapshot.marked.get(record.pid) if item.alive else None
    if proc is not None and proc.nodeid:
        return (proc.nodeid,)
    if view is None:
        return ()
    lineage = view.lineage
    if item.alive:
        owners = lineage.attribute(record.pid, snapshot.table)
        if owners:
            return owners
    from pytest_leanhost.core.lineage import unix_to_tick

    written = unix_to_tick(record.started_unix_millis / 1000.0)
    # The dead PID as the recorder saw it: the latest one that had started by the write.
    candidates = [s for s in lineage.seen() if s.pid == record.pid and s.start_tick <= written]
    if candidates:
        return max(candidates, key=lambda s: s.start_tick).owners
    parent = record.parent_pid_at_start
    if parent is not None and parent != lineage.root:
        parents = [s for s in lineage.seen() if s.pid == parent and s.start_tick <= written]
        if parents:
            return max(parents, key=lambda s: s.start_tick).owners
    return lineage.spans_holding(written)


def _classify_descendants(
    found: Sequence[tuple[Finding, CleanupTarget]],
    snapshot: _Snapshot,
    view: LineageView | None,
    worker: str | None,
) -> list[tuple[Finding, CleanupTarget]]:
    """Each live descendant that no marker or record accounted for: a ``leaked_process``.

    Ownership is proven by lineage, so cleanup may stop it (create time pinned);
    a live server's own workers are part of that server's leak.
    """
    if view is None or not snapshot.descendants:
        return []
    reported = {finding.pid for finding, _ in found if finding.pid is not None}
    servers = {
        finding.pid
        for finding, target in found
        if finding.pid is not None and finding.kind in ("leaked_server", "orphaned_server")
    }
    extra: list[tuple[Finding, CleanupTarget]] = []
    for pid, (create_time, _tick) in sorted(snapshot.descendants.items()):
        if pid in reported or pid in snapshot.marked:
            continue
        if pid in servers or _has_ancestor_in(snapshot.table, pid, servers):
            continue
        owners = view.lineage.attribute(pid, snapshot.table)
        finding = Finding(
            kind="leaked_process",
            nodeid=owners[0] if owners else None,
            nodeids=owners if len(owners) > 1 else (),
            pid=pid,
            worker=worker,
        )
        extra.append((finding, CleanupTarget(create_time=create_time)))
    return extra


def _origins(
    classified: Sequence[tuple[Finding, CleanupTarget]],
    snapshot: _Snapshot,
    view: LineageView | None,
) -> dict[int, ProcessOrigin]:
    """Where each process finding's live process came from, by PID."""
    from pytest_leanhost.core.lineage import start_tick

    origins: dict[int, ProcessOrigin] = {}
    for finding, _target in classified:
        pid = finding.pid
        info = snapshot.table.get(pid) if pid is not None else None
        if pid is None or info is None or info.zombie or pid in origins:
            continue
        tick = start_tick(pid)
        seen = view.lineage.lookup(pid, tick) if view is not None and tick is not None else None
        origins[pid] = ProcessOrigin(
            pid=pid,
            first_parent=seen.first_parent if seen is not None else None,
            lineage_only=pid not in snapshot.marked and pid in snapshot.descendants,
            start_tick=tick,
            create_time=info.create_time,
        )
    return origins


def _pid(item: JudgedRecord) -> int:
    assert item.entry.record is not None  # only a valid record can be alive
    return item.entry.record.pid


def _foreign(item: JudgedRecord) -> str | None:
    if item.foreign_registry == "writable_by_others":
        return "foreign: registry writable by other users"
    if item.foreign_registry is not None:
        return "foreign: registry owned by uid " + item.foreign_registry.rsplit("_", 1)[1]
    if item.foreign_owner_uid is not None:
        return f"foreign: record owned by uid {item.foreign_owner_uid}"
    return None


def _pid_from_name(path: str) -> int | None:
    stem = os.path.basename(path)[: -len(".json")]
    return int(stem) if stem.isdigit() else None


def _detail(item: JudgedRecord) -> str:
    if item.entry.problem:
        return item.entry.problem
    if item.pid_reused:
        return "PID reused by a younger process"
    if item.zombie:
        return "zombie"
    if item.child_pids:
        return "child_pids=" + ",".join(map(str, item.child_pids))
    return ""


def _has_ancestor_in(table: ProcessTable, pid: int, ancestors: set[int]) -> bool:
    seen: set[int] = set()
    info = table.get(pid)
    while info is not None and info.ppid not in seen and info.ppid > 1:
        if info.ppid in ancestors:
            return True
        seen.add(info.ppid)
        info = table.get(info.ppid)
    return False


def clean_up(pairs: Sequence[Pair], shutdown_timeout: float) -> list[Finding]:
    """Stop the run's own leaked processes and remove stale and corrupt records.

    Processes: SIGTERM to all at once, up to ``shutdown_timeout`` to exit, then
    SIGKILL; each only when it carries the session id and its create time is
    the one it had when found. Records: removed only when the file still holds
    the bytes that were judged, and only the record of a stale PID, a corrupt
    regular file, or the record of a server just stopped. Returns the findings
    again, each with the action taken.
    """
    pinned: dict[int, PinnedProcess] = {}
    for finding, target in pairs:
        if target.create_time is None or finding.pid is None:
            continue
        if finding.pid not in pinned:
            proc = _pinned(finding.pid, target.create_time)
            if proc is not None:
                pinned[finding.pid] = proc
    stopped, still_running = _stop_all(pinned, shutdown_timeout)
    done: list[Finding] = []
    for finding, target in pairs:
        owned = target.create_time is not None and finding.pid in pinned
        action: Action = stopped[finding.pid] if owned and finding.pid is not None else "none"
        data = target.data
        if finding.record is not None and data is not None:
            gone = action != "none" and finding.pid not in still_running
            removable = finding.kind in ("stale_record", "corrupt_record") or gone
            if removable and _remove_if_unchanged(finding.record, data) and action == "none":
                action = "record_removed"
        done.append(finding._replace(action=action))
    return done


def _pinned(pid: int, create_time: float) -> PinnedProcess | None:
    """The process found as (``pid``, ``create_time``) if that PID still names it."""
    from pytest_leanhost.core.processes import PinnedProcess

    proc = PinnedProcess(pid, create_time)
    return proc if proc.process() is not None else None


def _stop_all(
    targets: Mapping[int, PinnedProcess], timeout: float
) -> tuple[dict[int, Action], set[int]]:
    """Stop every target by the one ladder; returns what was done to each PID, and the
    PIDs that survived even SIGKILL."""
    if not targets:
        return {}, set()
    from pytest_leanhost.stopping import stop_ladder

    rungs = stop_ladder(list(targets.values()), timeout)
    actions: dict[int, Action] = {}
    survivors: set[int] = set()
    for pid, rung in zip(targets, rungs, strict=True):
        # One that exited between the check and the first signal counts as terminated.
        actions[pid] = "killed" if rung in ("kill", "survived") else "terminated"
        if rung == "survived":
            survivors.add(pid)
    return actions, survivors


def _remove_if_unchanged(path: str, judged: bytes) -> bool:
    """Remove ``path`` only if it is still the regular file that was judged."""
    from pytest_leanhost.files import remove_if_unchanged

    try:
        return remove_if_unchanged(path, judged)
    except OSError:
        return False
