"""What a leaked process is, as data: the report's ``process`` object and its JSON form.

Plain frozen data (no psutil), so a finding with its detail travels from an
xdist worker to the controller as JSON; :mod:`pytest_leanhost.core.explain`
fills it in.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pytest_leanhost.core.escapes import ESCAPE_WORDS

__all__ = [
    "PHASES",
    "AncestorDetail",
    "DetailShapeError",
    "Phase",
    "PhaseSpan",
    "ProcessDetail",
    "RelativeDetail",
]

#: Where a process started: a phase of a test, or outside every test (``session``).
Phase = Literal["setup", "call", "teardown", "session"]
PHASES: tuple[Phase, ...] = ("setup", "call", "teardown", "session")


class DetailShapeError(ValueError):
    """A process detail's JSON form that is not the shape :meth:`ProcessDetail.to_json` writes."""


@dataclasses.dataclass(frozen=True)
class PhaseSpan:
    """One phase of one test, in seconds of the process start clock (``CLOCK_BOOTTIME``)."""

    nodeid: str
    phase: Phase
    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class AncestorDetail:
    """One known ancestor: PID, command line (empty when unknown), whether it is alive."""

    pid: int
    cmdline: tuple[str, ...]
    alive: bool

    def to_json(self) -> dict[str, object]:
        """The report's object for this ancestor."""
        return {"pid": self.pid, "cmdline": list(self.cmdline), "alive": self.alive}


@dataclasses.dataclass(frozen=True)
class RelativeDetail:
    """A live descendant of a leaked process: PID, its parent, command line."""

    pid: int
    ppid: int
    cmdline: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        """The report's object for this descendant."""
        return {"pid": self.pid, "ppid": self.ppid, "cmdline": list(self.cmdline)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcessDetail:
    """What a leaked process is, as the report's ``process`` object tells it."""

    cmdline: tuple[str, ...]
    cwd: str | None
    started_unix: float
    age_seconds: float
    phase: Phase
    started_in: str | None
    ancestry: tuple[AncestorDetail, ...] = ()
    escaped: tuple[str, ...] = ()
    descendants: tuple[RelativeDetail, ...] = ()

    def to_json(self) -> dict[str, object]:
        """The report's ``process`` object (schema version 2)."""
        return {
            "cmdline": list(self.cmdline),
            "cwd": self.cwd,
            "started_unix": self.started_unix,
            "age_seconds": round(self.age_seconds, 3),
            "phase": self.phase,
            "started_in": self.started_in,
            "ancestry": [a.to_json() for a in self.ancestry],
            "escaped": list(self.escaped),
            "descendants": [d.to_json() for d in self.descendants],
        }

    @classmethod
    def from_json(cls, data: object) -> ProcessDetail:
        """Rebuild a detail; :class:`DetailShapeError` saying what is wrong if it is not one."""
        try:
            return cls._from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise DetailShapeError(f"malformed process detail: {exc}") from None

    @classmethod
    def _from_json(cls, data: object) -> ProcessDetail:
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object, not {type(data).__name__}")
        phase = data["phase"]
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        escaped = _strings(data["escaped"])
        if not set(escaped) <= set(ESCAPE_WORDS):
            raise ValueError(f"unknown escape words in {escaped}")
        cwd, started_in = data["cwd"], data["started_in"]
        if cwd is not None and not isinstance(cwd, str):
            raise TypeError("cwd is not a string")
        if started_in is not None and not isinstance(started_in, str):
            raise TypeError("started_in is not a string")
        return cls(
            cmdline=_strings(data["cmdline"]),
            cwd=cwd,
            started_unix=_number(data["started_unix"]),
            age_seconds=_number(data["age_seconds"]),
            phase=phase,
            started_in=started_in,
            ancestry=tuple(
                AncestorDetail(_int(a["pid"]), _strings(a["cmdline"]), bool(a["alive"]))
                for a in _list(data["ancestry"])
            ),
            escaped=escaped,
            descendants=tuple(
                RelativeDetail(_int(d["pid"]), _int(d["ppid"]), _strings(d["cmdline"]))
                for d in _list(data.get("descendants", []))
            ),
        )


def _list(value: object) -> list[dict[str, object]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TypeError("expected a list of objects")
    return value


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value
