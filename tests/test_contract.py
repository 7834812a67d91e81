"""The server lifecycle contract, rule by rule, against the reference server; then each fault.

One test per rule of DESIGN.md's "server lifecycle contract" (1 record written at
start, before serving; 2 removed on normal shutdown; 3 stdio exits 0 on stdin EOF;
4 stdio exits on parent loss; 5 HTTP: loopback only, path rules, runs until
SIGTERM/SIGINT; 6 workers exit with their server), then one test per ``--fault``
showing that it breaks exactly its rule while the others still hold.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from pytest_leanhost.client.mcp import StdioClient
from pytest_leanhost.client.spawn import ServerProcess, ServerStartError
from pytest_leanhost.core.processes import PinnedProcess, is_gone, wait_gone
from pytest_leanhost.record import REGISTRY_ENV, ProcessRecord
from pytest_leanhost.stopping import stop_ladder
from tests.children import Started, poll

REFSERVER = [sys.executable, "-m", "pytest_leanhost.refserver"]
POLL_ENV = {"LEANHOST_REFSERVER_PARENT_POLL": "0.05"}


def refserver(*faults: str) -> list[str]:
    """The reference server's command with ``--fault`` for each of ``faults``."""
    return [*REFSERVER, *(arg for fault in faults for arg in ("--fault", fault))]


def worker_of(server: ServerProcess, started: Started) -> psutil.Process:
    """Start a worker through the ``spawn_worker`` tool; track it by exact PID."""
    result = server.call_tool("spawn_worker", {})
    pid = result["structuredContent"]["pid"]
    assert pid in server.child_pids()
    return started.adopt(pid)


def registry_files(registry: Path) -> list[str]:
    return sorted(path.name for path in registry.glob("*.json")) if registry.exists() else []


# Launches the reference server as its own child, prints the server's PID, then sleeps:
# the test kills this parent to make the server lose the client that launched it.
# The server inherits this parent's stdin, a pipe whose write end the test holds, so
# stdin EOF never comes from the parent's death.
LAUNCHING_PARENT = """
import subprocess, sys, time
server = subprocess.Popen(
    [sys.executable, "-m", "pytest_leanhost.refserver", *sys.argv[1:]],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(server.pid, flush=True)
time.sleep(60)
"""


@contextmanager
def launched_by_a_parent(
    registry: Path, *faults: str
) -> Iterator[tuple[subprocess.Popen[bytes], psutil.Process, Callable[[], None]]]:
    """Yield (parent, server, close the server's stdin); all stopped by exact PID after."""
    read_end, write_end = os.pipe()
    stdin = os.fdopen(write_end, "wb")  # closing it twice is harmless, unlike a bare fd
    env = {**os.environ, **POLL_ENV, REGISTRY_ENV: str(registry)}
    parent = subprocess.Popen(
        [sys.executable, "-c", LAUNCHING_PARENT, *refserver(*faults)[3:]],
        stdin=read_end,
        stdout=subprocess.PIPE,
        env=env,
    )
    os.close(read_end)
    server: psutil.Process | None = None
    try:
        assert parent.stdout is not None
        # Alive while its parent lives and its stdin is open: the PID is its own.
        server = psutil.Process(int(parent.stdout.readline()))
        assert poll((registry / f"{server.pid}.json").exists)
        yield parent, server, stdin.close
    finally:
        if server is not None:
            stop_ladder([PinnedProcess.of(server)], 2.0)
        if parent.poll() is None:
            parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
        stdin.close()


# --- rule 1: the record is written once at start, after validation, before serving ---


def test_rule1_record_is_written_before_the_server_answers(tmp_path: Path) -> None:
    env = {**os.environ, REGISTRY_ENV: str(tmp_path)}
    child = subprocess.Popen(
        REFSERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert child.stdin is not None
    assert child.stdout is not None
    client = StdioClient(child.stdin, child.stdout)
    try:
        client.request("ping")  # sent at once: answered only once it serves
        # Whatever it answered, its record was already there (and valid).
        record = ProcessRecord.from_json_bytes((tmp_path / f"{child.pid}.json").read_bytes())
        assert (record.pid, record.transport, record.bind) == (child.pid, "stdio", None)
        client.close_stdin()
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        client.close()


@pytest.mark.parametrize(
    "args",
    [["--fault", "no-such-fault"], ["--http-path", "/mcp"], ["--bind", "127.0.0.1:notaport"]],
)
def test_rule1_a_bad_configuration_exits_2_with_one_line_and_no_record(
    started: Started, args: list[str]
) -> None:
    with pytest.raises(ServerStartError, match="exited with status 2") as caught:
        started.spawn([*REFSERVER, *args])
    assert registry_files(started.registry) == []
    stderr = str(caught.value).split("--- server stderr (last lines) ---\n")[1]
    assert len(stderr.splitlines()) == 1


def test_rule1_http_record_names_the_bound_address_and_is_written_once(
    started: Started,
) -> None:
    server = started.spawn(REFSERVER, transport="http", bind="127.0.0.1:0")
    record = server.record
    assert (record.pid, record.transport, record.http_path) == (server.pid, "http", "/mcp")
    assert record.bind is not None
    assert record.bind.startswith("127.0.0.1:")
    assert record.bind != "127.0.0.1:0"
    before = server.record_path.stat()
    server.initialize()
    server.call_tool("echo", {"text": "x"})
    after = server.record_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# --- rule 2: removed on every normal shutdown path ------------------------------------


@pytest.mark.parametrize(
    ("transport", "how"),
    [
        ("stdio", "stdin EOF"),
        ("stdio", signal.SIGTERM),
        ("stdio", signal.SIGINT),
        ("http", signal.SIGTERM),
        ("http", signal.SIGINT),
    ],
)
def test_rule2_record_is_removed_on_every_normal_shutdown(
    started: Started, transport: str, how: str | signal.Signals
) -> None:
    server = started.spawn(REFSERVER, transport=transport)
    server.initialize()
    if isinstance(how, signal.Signals):
        assert server.send_signal(how)
    else:
        server.close_stdin()
    assert server.wait(10) == 0
    assert not server.record_path.exists()
    assert server.stop().rung == "already_exited"


# --- rule 3: stdio exits with status 0 on stdin EOF ------------------------------------


def test_rule3_stdio_server_exits_0_on_stdin_eof(started: Started) -> None:
    server = started.spawn(REFSERVER)
    server.initialize()
    result = server.stop()
    assert (result.rung, result.returncode, result.record_removed) == ("stdin_eof", 0, True)


# --- rule 4: stdio exits when its launching parent dies ------------------------------


def test_rule4_stdio_server_exits_when_its_launching_parent_dies(tmp_path: Path) -> None:
    with launched_by_a_parent(tmp_path) as (parent, server, _stdin):
        parent.kill()
        parent.wait(10)
        assert wait_gone([server], 5) == []
        assert registry_files(tmp_path) == []


# --- rule 5: HTTP binds loopback only, checks its path, runs until a signal ---------


@pytest.mark.parametrize("bind", ["0.0.0.0:0", "192.0.2.1:0"])
def test_rule5_http_refuses_a_non_loopback_bind(started: Started, bind: str) -> None:
    with pytest.raises(ServerStartError, match="exited with status 2") as caught:
        started.spawn(REFSERVER, transport="http", bind=bind)
    assert "loopback" in str(caught.value)
    assert registry_files(started.registry) == []


@pytest.mark.parametrize("path", ["mcp", "/a?b", "/a#b", "/a*", "/{id}"])
def test_rule5_http_refuses_a_bad_path(started: Started, path: str) -> None:
    with pytest.raises(ServerStartError, match="exited with status 2"):
        started.spawn(REFSERVER, transport="http", http_path=path)
    assert registry_files(started.registry) == []


def test_rule5_http_serves_its_path_and_runs_until_sigterm(started: Started) -> None:
    server = started.spawn(REFSERVER, transport="http", http_path="/custom/path")
    assert server.url is not None
    assert server.url.endswith("/custom/path")
    server.initialize()
    server.close_stdin()
    assert server.wait(0.3) is None  # stdin EOF does not stop an HTTP server
    result = server.stop()
    assert (result.rung, result.returncode, result.record_removed) == ("sigterm", 0, True)


# --- rule 6: workers exit with their server -------------------------------------------


def test_rule6_workers_exit_with_their_server(started: Started) -> None:
    server = started.spawn(REFSERVER)
    workers = [worker_of(server, started) for _ in range(2)]
    result = server.stop()
    assert result.surviving_workers == ()
    assert all(is_gone(worker) for worker in workers)


def test_rule6_workers_exit_even_when_their_server_is_sigkilled(started: Started) -> None:
    server = started.spawn(REFSERVER, transport="http")
    server.initialize()
    worker = worker_of(server, started)
    assert server.kill()
    assert server.wait(5) == -signal.SIGKILL
    assert wait_gone([worker], 5) == []
    assert server.record_path.exists()  # SIGKILL cannot be caught: a stale record stays


# --- faults: each breaks exactly its rule -----------------------------------------------


def test_fault_ignore_stdin_eof_breaks_only_rule3(started: Started) -> None:
    server = started.spawn(refserver("ignore-stdin-eof"))
    server.initialize()
    worker = worker_of(server, started)
    result = server.stop(timeout=0.3)
    assert result.rung == "sigterm"  # stdin EOF was ignored; SIGTERM still ends it
    assert (result.returncode, result.record_removed, result.surviving_workers) == (0, True, ())
    assert is_gone(worker)


def test_fault_ignore_parent_loss_breaks_only_rule4(tmp_path: Path) -> None:
    with launched_by_a_parent(tmp_path, "ignore-parent-loss") as (parent, server, close_stdin):
        parent.kill()
        parent.wait(10)
        # Ten times the parent poll interval, and it is still there.
        assert wait_gone([server], 0.5) == [server]
        close_stdin()  # stdin EOF still ends it cleanly
        assert wait_gone([server], 5) == []
        assert registry_files(tmp_path) == []


def test_fault_keep_record_breaks_only_rule2(started: Started) -> None:
    server = started.spawn(refserver("keep-record"))
    server.initialize()
    worker = worker_of(server, started)
    result = server.stop()
    assert (result.rung, result.returncode, result.surviving_workers) == ("stdin_eof", 0, ())
    assert not result.record_removed
    assert is_gone(worker)
    left = ProcessRecord.from_json_bytes(server.record_path.read_bytes())
    assert left.pid == server.pid


def test_fault_orphan_worker_breaks_only_rule6(started: Started) -> None:
    server = started.spawn(refserver("orphan-worker"))
    worker = worker_of(server, started)
    result = server.stop()
    assert (result.rung, result.returncode, result.record_removed) == ("stdin_eof", 0, True)
    assert result.surviving_workers == (worker.pid,)
    assert not is_gone(worker)
    assert worker.ppid() != server.pid  # reparented, recordless
    assert registry_files(started.registry) == []
    assert stop_ladder([PinnedProcess.of(worker)], 2.0) == ["terminate"]


def test_fault_ignore_sigterm_breaks_only_the_sigterm_rule(started: Started) -> None:
    http = started.spawn(refserver("ignore-sigterm"), transport="http")
    http.initialize()
    result = http.stop(timeout=0.3)
    assert (result.rung, result.returncode) == ("sigkill", -signal.SIGKILL)
    assert not result.record_removed
    assert "ignoring SIGTERM" in http.stderr_tail()
    # SIGINT still ends it cleanly over HTTP, and stdin EOF over stdio.
    by_sigint = started.spawn(refserver("ignore-sigterm"), transport="http")
    assert by_sigint.send_signal(signal.SIGINT)
    assert by_sigint.wait(10) == 0
    assert not by_sigint.record_path.exists()
    stdio = started.spawn(refserver("ignore-sigterm"))
    result = stdio.stop()
    assert (result.rung, result.returncode, result.record_removed) == ("stdin_eof", 0, True)


def test_fault_corrupt_record_breaks_only_rule1(started: Started) -> None:
    with pytest.raises(ServerStartError, match="record present but corrupt") as caught:
        started.spawn(refserver("corrupt-record"))
    assert caught.value.reason == "corrupt"
    # The start failure stopped it by stdin EOF, and it still removed its (bad) record.
    assert registry_files(started.registry) == []


def test_fault_corrupt_record_writes_half_the_real_bytes(tmp_path: Path) -> None:
    env = {**os.environ, REGISTRY_ENV: str(tmp_path)}
    child = subprocess.Popen(
        refserver("corrupt-record"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    client = StdioClient(child.stdin, child.stdout)
    try:
        assert client.request("ping") == {}  # it serves all the same
        data = (tmp_path / f"{child.pid}.json").read_bytes()
        assert data.startswith(b'{\n  "pid": %d,' % child.pid)
        with pytest.raises(json.JSONDecodeError):
            json.loads(data)
        client.close_stdin()
        assert child.wait(10) == 0
        assert registry_files(tmp_path) == []
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        client.close()
