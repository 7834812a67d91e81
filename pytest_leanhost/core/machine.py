"""Which machine a process runs on: its host name, and what tells two machines apart.

A PID or a path means something only on the machine it came from. Two
processes share their PIDs and their files only when they share the kernel
(the boot id), the PID namespace and the mount namespace; the host name alone
proves nothing (two containers may both be ``localhost``), but it is what a
person reads. An xdist controller hands its :class:`Machine` to each worker, a
worker compares it with its own (:meth:`Machine.same_as`), and every finding
names the machine where it was found. Standard library only.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["Machine", "MachineShapeError", "this_machine"]

#: What tells machines apart besides the host name, as the JSON form names it.
_IDENTITY = ("boot_id", "pid_namespace", "mount_namespace")


class MachineShapeError(ValueError):
    """A machine's JSON form that is not the shape :meth:`Machine.to_json` writes."""


class Machine(NamedTuple):
    """One machine as a process sees it; ``None`` where the OS does not say (not Linux)."""

    hostname: str
    #: ``/proc/sys/kernel/random/boot_id``: one kernel, one boot.
    boot_id: str | None = None
    #: ``readlink /proc/self/ns/pid``, e.g. ``pid:[4026531836]``: who shares the PIDs.
    pid_namespace: str | None = None
    #: ``readlink /proc/self/ns/mnt``: who shares the paths.
    mount_namespace: str | None = None

    def same_as(self, other: Machine) -> bool:
        """Whether a PID or a path of ``other`` means the same here.

        Rule: every part must be equal, an unknown one included (``None`` on one
        side only is two different systems): anything short of that is another
        machine, whose PIDs are never signalled and whose paths are never opened.
        """
        return self == other

    def label(self, seen_from: Machine | None = None) -> str:
        """The name a person reads: the host name, told apart from ``seen_from``'s if equal.

        A machine that is not ``seen_from`` but has its host name (a PID
        namespace only, or two containers named alike) gets what differs in
        parentheses, one word: ``ci-1(pid:[4026532176])``, ``ci-1(boot:9f2c41d0)``.
        """
        if seen_from is None or self.same_as(seen_from) or self.hostname != seen_from.hostname:
            return self.hostname
        for key in _IDENTITY:
            mine = getattr(self, key)
            if mine != getattr(seen_from, key):
                shown = mine if key != "boot_id" or mine is None else "boot:" + mine[:8]
                return f"{self.hostname}({shown or key + '=?'})"
        return self.hostname  # pragma: no cover - same_as covers every field

    def to_json(self) -> dict[str, str | None]:
        """The JSON object a report and ``workerinput`` carry."""
        return self._asdict()

    @classmethod
    def from_json(cls, data: object) -> Machine:
        """Rebuild a machine (a bare host name string too); :class:`MachineShapeError` if not one.

        Keys it does not know are ignored: a later version may add some.
        """
        if isinstance(data, str) and data:
            return cls(hostname=data)
        if not isinstance(data, Mapping):
            raise MachineShapeError(f"a host is an object or a name, not {type(data).__name__}")
        hostname = data.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            raise MachineShapeError(f"host's hostname is {hostname!r}, not a non-empty string")
        parts: dict[str, str | None] = {}
        for key in _IDENTITY:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise MachineShapeError(f"host's {key} is {value!r}, not a string or null")
            parts[key] = value
        return cls(hostname=hostname, **parts)


@functools.cache
def this_machine() -> Machine:
    """This process's machine, read once (a process does not move)."""
    return Machine(
        hostname=socket.gethostname() or "localhost",
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        pid_namespace=_readlink("/proc/self/ns/pid"),
        mount_namespace=_readlink("/proc/self/ns/mnt"),
    )


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip() or None
    except (OSError, ValueError):
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
