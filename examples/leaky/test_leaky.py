"""One test per leak kind, each leaking on purpose, over each transport where it applies.

Run ``pytest -p leanhost examples/leaky``: the run fails (exit status 1) and the
``leanhost`` summary names every leak, its test, and what the plugin did about it.
The tests use ``spawn_server`` directly, not the ``leanhost_server`` fixture, so
nothing stops their servers before the session-end check looks.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_leanhost.client.spawn import ServerProcess, spawn_server
from pytest_leanhost.plugin.fixtures import reference_server_command

#: What the tests "forget": held until pytest exits, as a careless test suite would.
HELD: list[object] = []


@atexit.register
def _release_held() -> None:
    """At interpreter exit, after the leak check has run, close what the tests held."""
    for held in HELD:
        with contextlib.suppress(Exception):
            if isinstance(held, ServerProcess):
                held.stop(timeout=1.0)
            elif isinstance(held, subprocess.Popen):
                held.__exit__(None, None, None)


TRANSPORTS = pytest.mark.parametrize("transport", ["stdio", "http"])

# Starts a server that ignores the loss of its parent, prints its PID once it has
# registered, and exits: the server is left with the stdin this launcher inherited.
LAUNCHER = """
import os, subprocess, sys, time
server = subprocess.Popen(
    [*sys.argv[2:], "--fault", "ignore-parent-loss"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
record = os.path.join(sys.argv[1], f"{server.pid}.json")
while not os.path.exists(record):
    time.sleep(0.005)
print(server.pid, flush=True)
"""


def registry() -> str:
    """The test's own registry, as the plugin set it for this test."""
    return os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"]


def start(transport: str, *args: str) -> ServerProcess:
    command = [*reference_server_command(), *args]
    return spawn_server(command, transport=transport, registry=registry())  # type: ignore[arg-type]


@TRANSPORTS
def test_leaked_server(transport: str) -> None:
    """leaked_server: started, never stopped (its stdin is still held)."""
    HELD.append(start(transport))


@TRANSPORTS
def test_stale_record(transport: str) -> None:
    """stale_record: SIGKILL gives a server no chance to remove its record."""
    server = start(transport)
    server.kill()
    server.stop()


def test_orphaned_server() -> None:
    """orphaned_server: its launching client died and it did not notice."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, registry(), *reference_server_command()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    assert int(launcher.stdout.readline()) > 0
    launcher.wait(10)
    launcher.stdout.close()
    HELD.append(launcher)  # holds the pipe that the orphan reads as its stdin


@TRANSPORTS
def test_leaked_process(transport: str) -> None:
    """leaked_process: the server exits cleanly, but its worker child outlives it."""
    server = start(transport, "--fault", "orphan-worker")
    server.initialize()
    server.call_tool("spawn_worker", {})
    server.stop()


@TRANSPORTS
def test_corrupt_record(transport: str) -> None:
    """corrupt_record: a server that wrote half a record, then died."""
    args = ["--bind", "127.0.0.1:0"] if transport == "http" else []
    with subprocess.Popen(
        [*reference_server_command(), *args, "--fault", "corrupt-record"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as server:
        record = Path(registry(), f"{server.pid}.json")
        deadline = time.monotonic() + 30
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        server.kill()
