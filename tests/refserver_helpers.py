"""Helpers for the reference server's tests: start it for real, talk to it, always kill it.

Every process started here is killed by exact PID at teardown, pass or fail:
the server through its ``Popen`` (an unreaped child keeps its PID), anything
else (workers, reparented servers) through a ``psutil.Process`` pinned by
create time when the PID was learned.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from pytest_leanhost.core.processes import is_gone
from pytest_leanhost.record import REGISTRY_ENV, ProcessRecord
from tests.children import Children, poll

SERVER_COMMAND = (sys.executable, "-m", "pytest_leanhost.refserver")

# A parent that starts the server (stdin: the fd in argv[1]), prints its PID, then exits
# when told to (a line on its own stdin), so the server loses the parent that launched it.
VANISHING_PARENT_CODE = """
import os, subprocess, sys
server = subprocess.Popen(
    [sys.executable, "-m", "pytest_leanhost.refserver", *sys.argv[2:]],
    stdin=int(sys.argv[1]), stdout=subprocess.DEVNULL,
)
print(server.pid, flush=True)
sys.stdin.readline()
os._exit(0)
"""

JsonObject = dict[str, Any]


def gone(process: psutil.Process) -> bool:
    """Whether a process has exited; a zombie counts (it is not reaped by its new parent here)."""
    return is_gone(process)


def registry_files(registry: Path) -> list[str]:
    """Names of all files in a registry (none if it does not exist)."""
    return sorted(os.listdir(registry)) if registry.exists() else []


def request(method: str, params: JsonObject | None = None, request_id: int | str = 1) -> JsonObject:
    """A JSON-RPC request; ``params`` left out when None."""
    message: JsonObject = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def initialize(version: str = "2025-06-18", request_id: int = 1) -> JsonObject:
    """An MCP ``initialize`` request asking for ``version``."""
    return request(
        "initialize",
        {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "refserver-tests", "version": "0"},
        },
        request_id,
    )


def tool_call(name: str, arguments: JsonObject | None = None, request_id: int = 1) -> JsonObject:
    """A ``tools/call`` request."""
    params: JsonObject = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return request("tools/call", params, request_id)


class RefServer:
    """One started reference server child with its registry; stdio helpers when it is stdio."""

    def __init__(self, popen: subprocess.Popen[bytes], registry: Path, stderr: Path) -> None:
        self.popen = popen
        self.registry = registry
        self.stderr_path = stderr
        self._pending = b""

    @property
    def pid(self) -> int:
        """The server's PID."""
        return self.popen.pid

    @property
    def record_path(self) -> Path:
        """Where the server's record is (or would be)."""
        return self.registry / f"{self.pid}.json"

    def wait_record(self, timeout: float = 10.0) -> ProcessRecord:
        """Wait until the record exists (polling) and return it parsed."""
        assert poll(self.record_path.exists, timeout), f"no record; stderr: {self.stderr()}"
        return ProcessRecord.from_json_bytes(self.record_path.read_bytes())

    def stderr(self) -> str:
        """What the server wrote on stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def send_raw(self, data: bytes) -> None:
        """Write bytes to the server's stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def send(self, message: object) -> None:
        """Write one JSON message as a line."""
        self.send_raw(json.dumps(message).encode() + b"\n")

    def receive(self, timeout: float = 10.0) -> JsonObject:
        """Read the next line from stdout and parse it; fail after ``timeout``."""
        line = self.read_line(timeout)
        assert line is not None, f"no answer in {timeout} s; stderr: {self.stderr()}"
        value = json.loads(line)
        assert isinstance(value, dict)
        return value

    def read_line(self, timeout: float) -> bytes | None:
        """The next stdout line, or None on timeout or EOF."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line

    def call(self, message: JsonObject, timeout: float = 10.0) -> JsonObject:
        """Send a request and return the answer, checking that it answers this request's id."""
        self.send(message)
        answer = self.receive(timeout)
        assert answer.get("id") == message.get("id"), answer
        return answer

    def close_stdin(self) -> None:
        """Close the server's stdin (EOF)."""
        assert self.popen.stdin is not None
        self.popen.stdin.close()

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the server to exit and return its status."""
        return self.popen.wait(timeout)

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal to the server (our unreaped child, so the PID is still its own)."""
        self.popen.send_signal(signum)


class Processes:
    """Starts reference servers and tracks other PIDs; kills every one by exact PID at the end."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._children = Children()
        self._count = 0

    def registry(self) -> Path:
        """A fresh registry directory path (not created: the server creates it)."""
        self._count += 1
        return self._base / f"registry-{self._count}"

    def env(self, registry: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for a server child: ours, its registry, and ``extra``."""
        return {**os.environ, REGISTRY_ENV: str(registry), **(extra or {})}

    def start(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        registry: Path | None = None,
        wait_record: bool = True,
    ) -> RefServer:
        """Start ``python -m pytest_leanhost.refserver *args`` with pipes on stdin and stdout."""
        registry = registry or self.registry()
        self._count += 1
        stderr_path = self._base / f"stderr-{self._count}.txt"
        with stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                [*SERVER_COMMAND, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=self.env(registry, env),
            )
        server = RefServer(self._children.track(popen), registry, stderr_path)
        if wait_record:
            server.wait_record()
        return server

    def popen(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start any other child; it is killed (exact PID) and reaped at teardown."""
        child: subprocess.Popen[bytes] = subprocess.Popen(list(command), **kwargs)
        return self._children.track(child)

    def pin(self, pid: int) -> psutil.Process:
        """Pin a PID we caused to exist (create time noted now) so teardown can kill exactly it."""
        return self._children.adopt(pid)

    def close(self) -> None:
        """Kill and reap everything still running, by exact PID; close every pipe."""
        self._children.close()
