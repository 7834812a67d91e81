"""The tests' own eyes on Linux's ``/proc``: never the plugin's readers, which they judge.

``/proc/PID/stat`` holds the command name in parentheses, which may itself hold
``") "``, so the fields are read after the last ``)``: index 0 is the state letter
(field 3 of proc(5)), 1 the parent PID, 19 the start time in clock ticks since boot.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

__all__ = ["linux_only", "proc_start_ticks", "proc_state", "stat_fields"]

#: For a test that reads ``/proc`` (or whose code under test does): Linux only.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name; None when no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    return data[data.rfind(b")") + 2 :].split()


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``Z`` for a zombie); None when it is gone."""
    fields = stat_fields(pid)
    return None if fields is None else fields[0].decode()


def proc_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot; None when it is gone."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[19])
