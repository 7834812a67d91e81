"""Real child processes for the tests, each tracked and ended by exact PID at teardown."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

from pytest_leanhost.client.spawn import ServerProcess, spawn_server
from pytest_leanhost.core.processes import PinnedProcess, wait_gone
from pytest_leanhost.stopping import poll_until, stop_ladder

P = TypeVar("P", bound="subprocess.Popen[Any]")

# A minimal server: registers in argv[2] with transport argv[1], prints its PID,
# then lives until its stdin closes, or (with argv[3] == "sleep") for two minutes.
SERVER_CODE = """
import sys, time
from pytest_leanhost.record import register_server_process
reg = register_server_process(sys.argv[1], registry=sys.argv[2])
print(reg.record.pid, flush=True)
time.sleep(120) if sys.argv[3:] == ["sleep"] else sys.stdin.read()
"""

# Starts SERVER_CODE as its own child, prints the child's PID and exits at once,
# so the server is reparented: the client that launched it is gone.
ORPHANING_PARENT_CODE = """
import subprocess, sys, os
child = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1], "stdio", sys.argv[2], "sleep"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
)
print(child.stdout.readline().strip(), flush=True)
os._exit(0)
"""


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` with the package's backoff until it holds or ``timeout`` passes."""
    return poll_until(condition, timeout)


def _exec_visible(pid: int) -> bool:
    """Whether ``/proc/PID/cmdline`` shows a program (or the process exited, or is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if handle.read():
                return True
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")  # exited
    except OSError:
        return True  # gone, or not Linux: nothing to wait for


class Children:
    """Real processes a test started or caused; every one is ended by exact PID at teardown.

    The one child tracker of the tests (the ``children`` fixture; also a context
    manager where a fixture cannot reach, as in a hypothesis example). A child is
    killed through its ``Popen`` (an unreaped child keeps its PID), unless it
    ends on stdin EOF (``ends_at_eof``): then its stdin is closed first and it
    gets time to end by itself, so it can reap what it started. A process that is
    not our child (a worker, a reparented server) is killed through a pin of its
    create time, never by a PID that may name another process now.
    """

    def __init__(self) -> None:
        self._popen: list[tuple[subprocess.Popen[Any], bool]] = []
        self._adopted: list[psutil.Process] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def track(self, child: P, *, ends_at_eof: bool = False) -> P:
        """Take a child this test made with ``Popen``; it is ended at teardown, pass or fail.

        Returns once the kernel shows the child's new program: ``Popen`` returns as
        soon as the exec closed its close-on-exec pipe, a moment before
        ``/proc/PID/cmdline`` and ``environ`` show the new ones, and a test that
        reads them at once would read them empty.
        """
        self._popen.append((child, ends_at_eof))
        poll_until(lambda: _exec_visible(child.pid), 5.0)
        return child

    def adopt(self, proc: psutil.Process | int) -> psutil.Process:
        """Track a process that is not our child, pinned by its create time from now on."""
        pinned = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        self._adopted.append(pinned)
        return pinned

    def start(self, *args: str, stdin: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
        """Start ``python -c`` with ``args``, pipes for stdin and stdout."""
        return self.track(
            subprocess.Popen(
                [sys.executable, "-c", *args], stdin=stdin, stdout=subprocess.PIPE, text=True
            )
        )

    def server(self, registry: Path, transport: str = "stdio") -> subprocess.Popen[str]:
        """Start a registering server child; returns once its record is written."""
        child = self.start(SERVER_CODE, transport, str(registry))
        assert child.stdout is not None
        assert int(child.stdout.readline()) == child.pid
        return child

    def orphaned_server(self, registry: Path) -> psutil.Process:
        """A registered stdio server whose launching parent has exited."""
        parent = self.start(ORPHANING_PARENT_CODE, SERVER_CODE, str(registry), stdin=None)
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        server = self.adopt(pid)  # pinned by create time from here on
        parent.wait(10)
        assert poll(lambda: server.ppid() != parent.pid)
        return server

    def close(self) -> None:
        """End everything: adopted processes by pinned SIGKILL, children by their ``Popen``."""
        for proc in self._adopted:
            # Pinned: a PID that now names another process is never signalled.
            pinned = PinnedProcess.of(proc)
            if pinned.kill():
                assert wait_gone([pinned], 10) == []
        for child, ends_at_eof in self._popen:
            if ends_at_eof and child.stdin is not None:
                child.stdin.close()  # all of them first: they end side by side
        for child, ends_at_eof in self._popen:
            if child.poll() is None and not ends_at_eof:
                child.kill()
            try:
                child.wait(30 if ends_at_eof else 10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    stream.close()


class Started:
    """Servers (and stray processes) a test started; all stopped by exact PID at teardown."""

    def __init__(self, registry: Path) -> None:
        self.registry = registry
        self.servers: list[ServerProcess] = []
        self.strays: list[psutil.Process] = []

    def spawn(self, command: Sequence[str], **kwargs: Any) -> ServerProcess:
        kwargs.setdefault("registry", self.registry)
        server = spawn_server(command, **kwargs)
        self.servers.append(server)
        return server

    def adopt(self, pid: int) -> psutil.Process:
        """Track a process the test did not start directly (a worker), pinned by create time."""
        proc = psutil.Process(pid)
        self.strays.append(proc)
        return proc

    def close(self) -> None:
        for server in self.servers:
            server.stop(timeout=2.0)
        stop_ladder([PinnedProcess.of(proc) for proc in self.strays], 2.0)
