"""What an inner run left, judged by the tests' own eyes: written-down PIDs, checked in /proc.

Inner runs put ``tests/pidlog_site`` on ``PYTHONPATH`` and name a log in
``LEANHOST_TESTS_PID_LOG``; every Python process they start writes down its PID
and start time (see :mod:`tests.pidlog_site.leanhost_tests_pidlog`). A written-down
PID is left over only if a process with that PID and the same start time is still
there and is not a zombie. The plugin's own marker reader is never used here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import psutil

from pytest_leanhost.stopping import poll_until
from tests.pidlog_site.leanhost_tests_pidlog import PID_LOG_ENV, start_and_state

__all__ = ["PID_LOG_ENV", "SITE_DIR", "WrittenPid", "kill_survivors", "read_log", "survivors"]

#: The directory to put on PYTHONPATH so that every Python process writes itself down.
SITE_DIR = Path(__file__).resolve().parent / "pidlog_site"


@dataclasses.dataclass(frozen=True)
class WrittenPid:
    """A PID as an inner process wrote it down, with its start time."""

    pid: int
    start: str

    def alive(self) -> bool:
        """The same process (same start time) is still there, and is not a zombie."""
        found = start_and_state(self.pid)
        return found is not None and found[0] == self.start and found[1] not in ("Z", "X")


def read_log(path: Path) -> list[WrittenPid]:
    """Every PID written down in ``path``, in the order written (none if it was never made)."""
    if not path.exists():
        return []
    written = []
    for line in path.read_text().splitlines():
        pid, start = line.split()
        written.append(WrittenPid(int(pid), start))
    return written


def survivors(path: Path) -> list[WrittenPid]:
    """The written-down processes that are still alive (not zombies)."""
    return [written for written in read_log(path) if written.alive()]


def kill_survivors(path: Path) -> None:
    """SIGKILL each survivor by exact PID (start time checked after pinning) and wait for it."""
    killed = []
    for written in survivors(path):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(written.pid)  # pinned by create time from here on
            if written.alive():  # still the one written down, now that it is pinned
                proc.kill()
                killed.append(written)
    # A zombie counts as gone: its parent may be someone else, who reaps it or not.
    poll_until(lambda: not any(written.alive() for written in killed), timeout=5)
