"""The session-end verdicts: what a test run left behind, and cleaning up what is provably ours.

Data flows one way: the session's registries are read and judged (probe),
the processes carrying the session id are found (ownership), and each leftover
becomes a :class:`Finding`. :func:`clean_up` then acts only on what the run
owns: a process is signalled only when it carries the session id and still has
the create time it had when it was found; a file is removed only when it is a
regular file in a session registry that is a stale or corrupt record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from pytest_leanhost.core.explain import DetailShapeError, ProcessDetail
from pytest_leanhost.core.kinds import ACTIONS, KINDS, Action, LeakKind
from pytest_leanhost.core.ownership import MarkedProcess, find_marked_processes
from pytest_leanhost.core.probe import ProcessTable

# What loads only when there is something to judge, wait for or stop: a run
# whose tests started no server never imports the doctor, the check or psutil.
if TYPE_CHECKING:
    from pytest_leanhost.core.probe import JudgedRecord
    from pytest_leanhost.core.processes import PinnedProcess

__all__ = [
    "CleanupTarget",
    "Finding",
    "FindingShapeError",
    "SessionCheck",
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

_TEXT_FIELDS = ("nodeid", "transport", "record", "registry", "worker")


class FindingShapeError(ValueError):
    """A finding's JSON form that is not the shape :meth:`Finding.to_json` writes."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finding:
    """One leak as the report tells it: what was found, where, whose test, what was done.

    Only what the report says lives here; what cleanup needs to act safely is a
    :class:`CleanupTarget`, kept apart. A changed finding is a new one
    (``dataclasses.replace``), so what was reported never changes under a reader.
    """

    kind: LeakKind
    nodeid: str | None = None
    pid: int | None = None
    transport: str | None = None
    record: str | None = None
    registry: str | None = None
    detail: str = ""
    action: Action = "none"
    allowed: bool = False
    worker: str | None = None
    #: What the process is (schema version 2); ``None`` for a record-only finding.
    process: ProcessDetail | None = None

    def to_json(self) -> dict[str, object]:
        """The report's object for this finding."""
        return {
            "kind": self.kind,
            "nodeid": self.nodeid,
            "pid": self.pid,
            "transport": self.transport,
            "record": self.record,
            "registry": self.registry,
            "action": self.action,
            "allowed": self.allowed,
            "worker": self.worker,
            "detail": self.detail,
            "process": self.process.to_json() if self.process is not None else None,
        }

    @classmethod
    def from_json(cls, data: object) -> Finding:
        """Rebuild a finding from its JSON form; :class:`FindingShapeError` if it is not one."""
        if not isinstance(data, dict):
            raise FindingShapeError(f"a finding is a JSON object, not {type(data).__name__}")
        kind, action = data.get("kind"), data.get("action", "none")
        if kind not in KINDS:
            raise FindingShapeError(f"unknown leak kind {kind!r}")
        if action not in ACTIONS:
            raise FindingShapeError(f"unknown action {action!r}")
        pid = data.get("pid")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
            raise FindingShapeError(f"pid is {pid!r}, not an integer or null")
        texts: dict[str, str | None] = {}
        for key in _TEXT_FIELDS:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise FindingShapeError(f"{key} is {value!r}, not a string or null")
            texts[key] = value
        detail, allowed = data.get("detail", ""), data.get("allowed", False)
        if not isinstance(detail, str) or not isinstance(allowed, bool):
            raise FindingShapeError("detail must be a string and allowed a boolean")
        process = data.get("process")
        try:
            detail_of = ProcessDetail.from_json(process) if process is not None else None
        except DetailShapeError as exc:
            raise FindingShapeError(str(exc)) from None
        return cls(
            process=detail_of,
            kind=kind,
            pid=pid,
            detail=detail,
            action=action,
            allowed=allowed,
            nodeid=texts["nodeid"],
            transport=texts["transport"],
            record=texts["record"],
            registry=texts["registry"],
            worker=texts["worker"],
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class CleanupTarget:
    """What cleanup needs to act on one finding, and nothing the report shows.

    ``create_time`` is set only for a process that carries the session id
    (ownership proven), pinning the PID to the process that was found; ``data``
    holds the record bytes that were judged, so only that very file is removed.
    """

    create_time: float | None = None
    data: bytes | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class SessionCheck:
    """The result of one session-end check: findings, how to clean them up, the doctor's view."""

    findings: list[Finding]
    targets: dict[Finding, CleanupTarget]
    judged: dict[str, list[JudgedRecord]]
    nodeids: dict[str, str | None]
    registries_checked: int
    records_checked: int
    seconds: float = 0.0


def check_session(
    registries: Mapping[str, str | None],
    session_id: str | None,
    *,
    exclude_pids: Iterable[int] = (),
    grace: float = 1.0,
    worker: str | None = None,
    only_worker: str | None = None,
) -> SessionCheck:
    """Judge the session's registries and marked processes, and return the leaks.

    ``registries`` maps each registry directory to the node id of the test that
    owned it. Processes still alive get ``grace`` seconds to exit by themselves
    (polled, not slept); only what is still there afterwards is a leak. With
    ``only_worker``, marked processes count only when a test of that pytest-xdist
    worker started them (a worker judges its own tests' leftovers).
    """
    started = time.perf_counter()
    excluded = {os.getpid(), *exclude_pids}
    snapshot = _snapshot(registries, session_id, excluded, only_worker)
    candidates = [_pid(item) for items in snapshot.judged.values() for item in items if item.alive]
    candidates += list(snapshot.marked)
    if candidates and grace > 0:
        import psutil

        from pytest_leanhost.core.processes import wait_gone

        procs = []
        for pid in set(candidates):
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        if wait_gone(procs, grace) != procs:
            # Something exited in the grace: judge again what is left now.
            snapshot = _snapshot(registries, session_id, excluded, only_worker)
    classified = _classify(registries, snapshot, worker)
    return SessionCheck(
        findings=[finding for finding, _ in classified],
        targets=dict(classified),
        judged=snapshot.judged,
        nodeids=dict(registries),
        registries_checked=len(registries),
        records_checked=sum(len(items) for items in snapshot.judged.values()),
        seconds=time.perf_counter() - started,
    )


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """One look at the process table, and everything judged against it."""

    table: ProcessTable
    judged: dict[str, list[JudgedRecord]]
    marked: dict[int, MarkedProcess]
    unreadable: dict[str, str]


def _snapshot(
    registries: Mapping[str, str | None],
    session_id: str | None,
    excluded: set[int],
    only_worker: str | None,
) -> _Snapshot:
    table = ProcessTable.snapshot()
    judged, unreadable = _judge_registries(registries, table) if registries else ({}, {})
    marked: dict[int, MarkedProcess] = {}
    if session_id is not None:
        marked = find_marked_processes(session_id, table, exclude=excluded)
        if only_worker is not None:
            marked = {pid: m for pid, m in marked.items() if m.worker == only_worker}
    return _Snapshot(table, judged, marked, unreadable)


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


def _classify(
    registries: Mapping[str, str | None], snapshot: _Snapshot, worker: str | None
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
        finding = Finding(
            kind="leaked_process", nodeid=proc.nodeid, pid=pid, worker=proc.worker or worker
        )
        found.append((finding, CleanupTarget(create_time=proc.create_time)))
    return found


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


def clean_up(
    findings: Sequence[Finding],
    targets: Mapping[Finding, CleanupTarget],
    shutdown_timeout: float,
) -> list[Finding]:
    """Stop the run's own leaked processes and remove stale and corrupt records.

    Processes: SIGTERM to all at once, up to ``shutdown_timeout`` to exit, then
    SIGKILL; each only when it carries the session id and its create time is
    the one it had when found. Records: removed only when the file still holds
    the bytes that were judged, and only the record of a stale PID, a corrupt
    regular file, or the record of a server just stopped. Returns the findings
    again, each with the action taken.
    """
    pinned: dict[int, PinnedProcess] = {}
    for finding in findings:
        target = targets.get(finding)
        if target is None or target.create_time is None or finding.pid is None:
            continue
        if finding.pid not in pinned:
            proc = _pinned(finding.pid, target.create_time)
            if proc is not None:
                pinned[finding.pid] = proc
    stopped, still_running = _stop_all(pinned, shutdown_timeout)
    done: list[Finding] = []
    for finding in findings:
        target = targets.get(finding, CleanupTarget())
        owned = target.create_time is not None and finding.pid in pinned
        action: Action = stopped[finding.pid] if owned and finding.pid is not None else "none"
        data = target.data
        if finding.record is not None and data is not None:
            gone = action != "none" and finding.pid not in still_running
            removable = finding.kind in ("stale_record", "corrupt_record") or gone
            if removable and _remove_if_unchanged(finding.record, data) and action == "none":
                action = "record_removed"
        done.append(dataclasses.replace(finding, action=action))
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
