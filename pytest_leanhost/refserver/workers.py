"""Worker child processes that the server owns (lifecycle rule 6: they exit with it).

Each worker holds the read end of a pipe on its stdin whose only write end is
the server's, and exits when it reads EOF: so it ends when the server ends,
however the server ends, SIGKILL included. On a normal shutdown the server
also closes the pipes and reaps every worker. With the ``orphan-worker`` fault
a worker has no such pipe and simply lives for :data:`ORPHAN_LIFETIME_SECONDS`.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

from pytest_leanhost.stopping import SignalsByNumber

if TYPE_CHECKING:
    import subprocess

__all__ = ["ORPHAN_LIFETIME_SECONDS", "ORPHAN_WORKER_CODE", "WORKER_CODE", "Workers"]

#: An orphaned worker still ends on its own after this long, so none lives forever.
ORPHAN_LIFETIME_SECONDS = 120

#: A worker: read stdin until EOF (the server closed the pipe or died), then exit.
WORKER_CODE = "import os\nwhile os.read(0, 4096):\n    pass\n"

#: An orphaned worker: tied to nothing, it sleeps out its lifetime.
ORPHAN_WORKER_CODE = f"import time\ntime.sleep({ORPHAN_LIFETIME_SECONDS})\n"


class Workers:
    """Starts workers and, on :meth:`stop`, ends and reaps the ones the server keeps."""

    def __init__(self, *, orphan: bool = False) -> None:
        self._orphan = orphan
        self._lock = threading.Lock()
        self._owned: list[subprocess.Popen[bytes]] = []
        self._orphans: list[subprocess.Popen[bytes]] = []
        self._closed = False

    def spawn(self) -> int:
        """Start one worker (inheriting the server's environment) and return its PID."""
        import subprocess  # deferred: a server that never spawns never pays for it

        code = ORPHAN_WORKER_CODE if self._orphan else WORKER_CODE
        with self._lock:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            # stdout and stderr are /dev/null: a worker never holds the client's pipes open.
            # close_fds (the default) keeps every other worker's pipe out of this child.
            worker = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code],
                stdin=subprocess.DEVNULL if self._orphan else subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            (self._orphans if self._orphan else self._owned).append(worker)
            return worker.pid

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every owned worker by the one ladder, reaping each: close its pipe, then signals.

        Orphaned workers are left alone (that is the fault).
        """
        from pytest_leanhost.stopping import stop_ladder

        with self._lock:
            self._closed = True
            owned, self._owned = self._owned, []

        def close_pipes() -> None:
            for worker in owned:
                if worker.stdin is not None:
                    worker.stdin.close()

        stop_ladder([_OwnChild(worker) for worker in owned], timeout, first=close_pipes)

    @property
    def pids(self) -> list[int]:
        """PIDs of the workers started so far and not yet stopped (owned and orphaned)."""
        with self._lock:
            return [worker.pid for worker in (*self._owned, *self._orphans)]


class _OwnChild(SignalsByNumber):
    """A worker as the ladder stops it.

    Signalling is safe: a child that has not been reaped keeps its PID, so it cannot
    be reused, and ``Popen`` signals only while it has not reaped it. Asking whether
    it is gone reaps it (it is ours: no one else waits for it).
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    def send_signal(self, signum: int) -> bool:
        if self.is_gone():
            return False
        self.popen.send_signal(signum)
        return True

    def is_gone(self) -> bool:
        return self.popen.poll() is not None
