"""The session-end verdicts: what a test run left behind, and cleaning up what is provably ours.

Data flows one way: the session's registries are scanned and judged (probe),
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

from pytest_leanhost.core.ownership import MarkedProcess, find_marked_processes
from pytest_leanhost.core.probe import ProcessTable

# What loads only when there is something to judge, wait for or stop: a run
# whose tests started no server never imports the doctor, the scan or psutil.
if TYPE_CHECKING:
    from pytest_leanhost.core.probe import JudgedRecord
    from pytest_leanhost.core.processes import PinnedProcess

__all__ = [
    "Finding",
    "SessionScan",
    "clean_up",
    "scan_session",
]

_VERDICT_KIND = {
    "stale": "stale_record",
    "reused": "stale_record",
    "orphaned": "orphaned_server",
    "alive": "leaked_server",
    "corrupt": "corrupt_record",
}


@dataclasses.dataclass
class Finding:
    """One leak: what was found, where, whose test, and what the plugin did about it.

    ``action`` is ``none``, ``record_removed``, ``terminated`` or ``killed``.
    ``owned`` says whether the process carries the session id (only then may
    it be signalled); ``allowed`` whether the test allowed this kind on purpose.
    """

    kind: str
    nodeid: str | None
    pid: int | None
    transport: str | None
    record: str | None
    registry: str | None
    detail: str = ""
    action: str = "none"
    allowed: bool = False
    worker: str | None = None
    owned: bool = False
    create_time: float | None = dataclasses.field(default=None, repr=False)
    data: bytes | None = dataclasses.field(default=None, repr=False)

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
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Finding:
        """Rebuild a finding sent by a pytest-xdist worker."""

        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        pid = data.get("pid")
        return cls(
            kind=str(data["kind"]),
            nodeid=text("nodeid"),
            pid=pid if isinstance(pid, int) else None,
            transport=text("transport"),
            record=text("record"),
            registry=text("registry"),
            detail=str(data.get("detail") or ""),
            action=str(data.get("action") or "none"),
            allowed=bool(data.get("allowed")),
            worker=text("worker"),
        )


@dataclasses.dataclass
class SessionScan:
    """The result of one session-end scan: findings, plus what the doctor report shows."""

    findings: list[Finding]
    judged: dict[str, list[JudgedRecord]]
    nodeids: dict[str, str | None]
    registries_checked: int
    records_checked: int
    seconds: float = 0.0


def scan_session(
    registries: Mapping[str, str | None],
    session_id: str | None,
    *,
    exclude_pids: Iterable[int] = (),
    grace: float = 1.0,
    worker: str | None = None,
    only_worker: str | None = None,
) -> SessionScan:
    """Judge the session's registries and marked processes, and return the leaks.

    ``registries`` maps each registry directory to the node id of the test that
    owned it. Processes still alive get ``grace`` seconds to exit by themselves
    (polled, not slept); only what is still there afterwards is a leak. With
    ``only_worker``, marked processes count only when a test of that pytest-xdist
    worker started them (a worker judges its own tests' leftovers).
    """
    started = time.perf_counter()
    excluded = {os.getpid(), *exclude_pids}
    look = _look(registries, session_id, excluded, only_worker)
    candidates = [_pid(item) for items in look.judged.values() for item in items if item.alive]
    candidates += list(look.marked)
    if candidates and grace > 0:
        import psutil

        from pytest_leanhost.core.processes import wait_gone

        procs = []
        for pid in set(candidates):
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        if wait_gone(procs, grace) != procs:
            # Something exited in the grace: judge again what is left now.
            look = _look(registries, session_id, excluded, only_worker)
    return SessionScan(
        findings=_classify(registries, look, worker),
        judged=look.judged,
        nodeids=dict(registries),
        registries_checked=len(registries),
        records_checked=sum(len(items) for items in look.judged.values()),
        seconds=time.perf_counter() - started,
    )


@dataclasses.dataclass
class _Look:
    """One look at the session: a table snapshot and everything judged against it."""

    table: ProcessTable
    judged: dict[str, list[JudgedRecord]]
    marked: dict[int, MarkedProcess]
    unreadable: dict[str, str]


def _look(
    registries: Mapping[str, str | None],
    session_id: str | None,
    excluded: set[int],
    only_worker: str | None,
) -> _Look:
    table = ProcessTable.snapshot()
    judged, unreadable = _judge_registries(registries, table) if registries else ({}, {})
    marked: dict[int, MarkedProcess] = {}
    if session_id is not None:
        marked = find_marked_processes(session_id, table, exclude=excluded)
        if only_worker is not None:
            marked = {pid: m for pid, m in marked.items() if m.worker == only_worker}
    return _Look(table, judged, marked, unreadable)


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
    registries: Mapping[str, str | None], look: _Look, worker: str | None
) -> list[Finding]:
    findings: list[Finding] = []
    servers: set[int] = set()
    for registry, reason in look.unreadable.items():
        findings.append(
            Finding(
                "corrupt_record",
                registries[registry],
                None,
                None,
                None,
                registry,
                detail=f"registry unreadable: {reason}",
                worker=worker,
            )
        )
    for registry, items in look.judged.items():
        for item in items:
            record = item.entry.record
            pid = record.pid if record is not None else _pid_from_name(item.path)
            foreign = _foreign(item)
            if item.alive and pid is not None and foreign is None:
                servers.add(pid)  # its marked descendants are part of this server's leak
            # A foreign record is reported, never acted on: no signal, no removal.
            proc = look.marked.get(pid) if pid is not None and item.alive else None
            if foreign is not None:
                proc = None
            findings.append(
                Finding(
                    _VERDICT_KIND[item.verdict],
                    registries[registry],
                    pid,
                    record.transport if record is not None else None,
                    item.path,
                    registry,
                    detail="; ".join(filter(None, [foreign, _detail(item)])),
                    worker=worker,
                    owned=proc is not None,
                    create_time=proc.create_time if proc is not None else None,
                    data=item.entry.data if foreign is None else None,
                )
            )
    for pid, proc in sorted(look.marked.items()):
        if pid in servers or _has_ancestor_in(look.table, pid, servers):
            continue  # a live server's own worker: part of that server's leak
        findings.append(
            Finding(
                "leaked_process",
                proc.nodeid,
                pid,
                None,
                None,
                None,
                worker=proc.worker or worker,
                owned=True,
                create_time=proc.create_time,
            )
        )
    return findings


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


def clean_up(findings: Sequence[Finding], shutdown_timeout: float) -> None:
    """Stop the run's own leaked processes and remove stale and corrupt records.

    Processes: SIGTERM to all at once, up to ``shutdown_timeout`` to exit, then
    SIGKILL; each only when it carries the session id and its create time is
    the one it had when found. Records: removed only when the file still holds
    the bytes that were judged, and only the record of a stale PID, a corrupt
    regular file, or the record of a server just stopped.
    """
    targets: dict[int, tuple[PinnedProcess, list[Finding]]] = {}
    for finding in findings:
        if not finding.owned or finding.pid is None or finding.create_time is None:
            continue
        if finding.pid not in targets:
            proc = _pinned(finding.pid, finding.create_time)
            if proc is None:
                continue
            targets[finding.pid] = (proc, [])
        targets[finding.pid][1].append(finding)
    still_running = _stop_all(targets, shutdown_timeout)
    for finding in findings:
        if finding.record is None or finding.data is None:
            continue
        stopped = finding.action in ("terminated", "killed") and finding.pid not in still_running
        removable = finding.kind in ("stale_record", "corrupt_record") or stopped
        if removable and _remove_if_unchanged(finding.record, finding.data):
            finding.action = "record_removed" if finding.action == "none" else finding.action


def _pinned(pid: int, create_time: float) -> PinnedProcess | None:
    """The process found as (``pid``, ``create_time``) if that PID still names it."""
    from pytest_leanhost.core.processes import PinnedProcess

    proc = PinnedProcess(pid, create_time)
    return proc if proc.process() is not None else None


def _stop_all(
    targets: Mapping[int, tuple[PinnedProcess, list[Finding]]], timeout: float
) -> set[int]:
    """Stop every target by the one ladder; returns the PIDs that survived even SIGKILL."""
    if not targets:
        return set()
    from pytest_leanhost.stopping import stop_ladder

    procs = [proc for proc, _ in targets.values()]
    rungs = stop_ladder(procs, timeout)
    survivors: set[int] = set()
    for (proc, owned_findings), rung in zip(targets.values(), rungs, strict=True):
        # One that exited between the scan and the first signal counts as terminated.
        action = "killed" if rung in ("kill", "survived") else "terminated"
        for finding in owned_findings:
            finding.action = action
        if rung == "survived":
            survivors.add(proc.pid)
    return survivors


def _remove_if_unchanged(path: str, judged: bytes) -> bool:
    """Remove ``path`` only if it is still the regular file that was judged."""
    from pytest_leanhost.files import remove_if_unchanged

    try:
        return remove_if_unchanged(path, judged)
    except OSError:
        return False
