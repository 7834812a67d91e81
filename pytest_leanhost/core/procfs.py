"""Linux's ``/proc/PID/stat``, read one way for every module that needs it.

Standard library only. The fields after the command name are returned as bytes,
indexed from the state (``stat_fields(pid)[0]`` is field 3 of proc(5)): the command
name sits in parentheses and may itself hold ``") "``, so it is cut at the last one.
"""

from __future__ import annotations

__all__ = ["stat_fields"]


def stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None  # gone (or never there): the caller treats it as no process
    return data[data.rfind(b")") + 2 :].split()
