"""A finding: one leak as the report tells it, with its JSON form, and what cleanup may act on.

Standard library only: the check makes findings, an xdist worker sends them
as JSON, the controller and ``leanhost report merge`` rebuild them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from pytest_leanhost.core.kinds import ACTIONS, FOUND_AT, KINDS, Action, FoundAt, LeakKind
from pytest_leanhost.core.machine import Machine, MachineShapeError

if TYPE_CHECKING:
    from pytest_leanhost.core.detail import ProcessDetail

__all__ = [
    "CleanupTarget",
    "Finding",
    "FindingShapeError",
    "Pair",
    "ProcessOrigin",
]

_TEXT_FIELDS = ("nodeid", "transport", "record", "registry", "worker")


class FindingShapeError(ValueError):
    """A finding's JSON form that is not the shape :meth:`Finding.to_json` writes."""


class Finding(NamedTuple):
    """One leak as the report tells it: what was found, where, whose test, what was done.

    Only what the report says lives here; what cleanup needs to act safely is a
    :class:`CleanupTarget`, kept apart. A changed finding is a new one
    (``_replace``), so what was reported never changes under a reader.
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
    #: Every test the leak may belong to, ``nodeid`` first; more than one only when
    #: the start tick could not tell them apart (never one picked at random).
    nodeids: tuple[str, ...] = ()
    #: Where the check found it: at the teardown of its test, or at session end.
    found_at: FoundAt = "session_end"
    #: The machine where it was found: its PID and paths mean something only there.
    host: Machine | None = None

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
            "nodeids": list(self.nodeids or ((self.nodeid,) if self.nodeid else ())),
            "found_at": self.found_at,
            "host": self.host.to_json() if self.host is not None else None,
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
        found_at = data.get("found_at", "session_end")
        if found_at not in FOUND_AT:
            raise FindingShapeError(f"unknown found_at {found_at!r}")
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
        detail_of = None
        if process is not None:
            from pytest_leanhost.core.detail import DetailShapeError, ProcessDetail

            try:
                detail_of = ProcessDetail.from_json(process)
            except DetailShapeError as exc:
                raise FindingShapeError(str(exc)) from None
        nodeids = data.get("nodeids", [])
        if not isinstance(nodeids, list) or not all(isinstance(n, str) for n in nodeids):
            raise FindingShapeError(f"nodeids is {nodeids!r}, not a list of strings")
        if tuple(nodeids) == ((texts["nodeid"],) if texts["nodeid"] else ()):
            nodeids = []  # the plain single-test form: kept as the default
        host = data.get("host")
        try:
            machine = Machine.from_json(host) if host is not None else None
        except MachineShapeError as exc:
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
            nodeids=tuple(nodeids),
            found_at=found_at,
            host=machine,
        )


class CleanupTarget(NamedTuple):
    """What cleanup needs to act on one finding, and nothing the report shows.

    ``create_time`` is set only for a process that carries the session id
    (ownership proven), pinning the PID to the process that was found; ``data``
    holds the record bytes that were judged, so only that very file is removed.
    """

    create_time: float | None = None
    data: bytes | None = None


#: A finding with what cleanup may act on: they travel together, never one as the other's key.
Pair = tuple["Finding", "CleanupTarget"]


class ProcessOrigin(NamedTuple):
    """How the check came to a process finding's process: for reports and for reaping.

    ``first_parent`` is the parent the lineage recorder first saw it under (None
    when it never saw it at a boundary); ``lineage_only`` says no marker was
    found (the launcher dropped the environment); ``start_tick`` is its start
    in :func:`~pytest_leanhost.core.lineage.boottime_ticks`' clock.
    """

    pid: int
    first_parent: int | None
    lineage_only: bool
    start_tick: int | None
    create_time: float
