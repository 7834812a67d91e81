"""Every Python process of an inner run writes down its own PID and start time.

The tests judge "nothing of the run is left" with their own eyes, never with the
plugin's marker reader: with ``LEANHOST_TESTS_PID_LOG`` set, each Python process
that starts (and each ``os.fork`` child) appends ``PID START`` to that file, where
START is field 22 of ``/proc/PID/stat`` (psutil's create time elsewhere), so a
reused PID is never mistaken for the process that was written down. Standard
library only on Linux: it runs at the start of every Python process of the run.
"""

from __future__ import annotations

import os
import sys

#: The file that every Python process of an inner run appends its PID and start time to.
PID_LOG_ENV = "LEANHOST_TESTS_PID_LOG"


def start_and_state(pid: int) -> tuple[str, str] | None:
    """The process's start time (as written down) and its state letter, or None when gone."""
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        # The command name sits in parentheses and may itself hold ") ".
        fields = data[data.rfind(b")") + 2 :].split()
        return fields[19].decode(), fields[0].decode()
    import psutil

    try:
        proc = psutil.Process(pid)
        zombie = proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        return repr(proc.create_time()), "Z" if zombie else "R"
    except psutil.Error:
        return None


def write_down(pid: int | None = None) -> None:
    """Append ``PID START`` to the log named by ``LEANHOST_TESTS_PID_LOG``, when it is set."""
    path = os.environ.get(PID_LOG_ENV)
    if not path:
        return
    pid = os.getpid() if pid is None else pid
    found = start_and_state(pid)
    if found is None:
        return
    # One short O_APPEND write: lines of concurrent processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{pid} {found[0]}\n".encode())
    finally:
        os.close(fd)


def install() -> None:
    """Write this process down now, and every ``os.fork`` child as it starts."""
    if os.environ.get(PID_LOG_ENV):
        write_down()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=write_down)
