"""spawn_server and ServerProcess against real child processes, and the psutil helpers.

The small servers here are ``python -c`` scripts that register through
``register_server_process``: each one breaks or keeps exactly the behaviour a test
needs, and starts in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pytest_leanhost.client import spawn
from pytest_leanhost.client.spawn import ServerStartError, spawn_server
from pytest_leanhost.core.processes import PinnedProcess, is_gone, wait_gone
from pytest_leanhost.record import REGISTRY_ENV
from pytest_leanhost.stopping import stop_ladder
from tests.children import Children, Started

PY = sys.executable

# Registers, serves nothing, exits 0 on stdin EOF and removes its record.
STDIO_SERVER = """
import sys
from pytest_leanhost.record import register_server_process
with register_server_process("stdio"):
    sys.stdin.buffer.read()
"""

# Registers, ignores stdin EOF; SIGTERM makes it leave cleanly (status 0, record removed).
IGNORES_EOF = """
import signal, sys, time
from pytest_leanhost.record import register_server_process
def leave(*_):
    raise SystemExit(0)
signal.signal(signal.SIGTERM, leave)
with register_server_process("stdio"):
    sys.stdin.buffer.read()
    while True:
        time.sleep(60)
"""

# Registers and ignores both stdin EOF and SIGTERM: only SIGKILL ends it.
IGNORES_EOF_AND_SIGTERM = """
import signal, sys, time
from pytest_leanhost.record import register_server_process
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with register_server_process("stdio"):
    sys.stdin.buffer.read()
    while True:
        time.sleep(60)
"""

# Registers with a worker child. argv[1] "tied": the worker reads a pipe from the server
# and exits when the server does; "orphan": the worker sleeps on, detached from it.
WITH_WORKER = """
import subprocess, sys
from pytest_leanhost.record import register_server_process
tied = sys.argv[1] == "tied"
code = "import sys; sys.stdin.read()" if tied else "import time; time.sleep(60)"
worker = subprocess.Popen(
    [sys.executable, "-c", code],
    stdin=subprocess.PIPE if tied else subprocess.DEVNULL,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
with register_server_process("stdio"):
    sys.stdin.buffer.read()
"""

# Writes a truncated record for its own PID, then behaves (removes it on stdin EOF).
CORRUPT_RECORD = """
import os, sys
from pathlib import Path
from pytest_leanhost.files import write_atomically
from pytest_leanhost.record import REGISTRY_ENV
path = Path(os.environ[REGISTRY_ENV]) / f"{os.getpid()}.json"
write_atomically(path, b'{"pid": ')
try:
    sys.stdin.buffer.read()
finally:
    path.unlink()
"""

# A Streamable-HTTP-shaped server: binds --bind (exit 1 if taken), records the real
# address and --http-path, accepts connections until SIGTERM (then status 0).
HTTP_SERVER = """
import signal, socket, sys
from pytest_leanhost.record import register_server_process
args = sys.argv[1:]
host, _, port = args[args.index("--bind") + 1].rpartition(":")
path = args[args.index("--http-path") + 1] if "--http-path" in args else "/mcp"
sock = socket.socket()
sock.bind((host, int(port)))
sock.listen(16)
def leave(*_):
    raise SystemExit(0)
signal.signal(signal.SIGTERM, leave)
with register_server_process("http", f"{host}:{sock.getsockname()[1]}", path):
    while True:
        sock.accept()[0].close()
"""

# Floods stderr (far beyond a pipe buffer) before it registers.
NOISY_SERVER = """
import sys
from pytest_leanhost.record import register_server_process
for i in range(5000):
    sys.stderr.write(f"noise line {i} " + "x" * 200 + "\\n")
sys.stderr.flush()
with register_server_process("stdio"):
    sys.stdin.buffer.read()
"""


def script(code: str, *args: str) -> list[str]:
    """The command that runs ``code`` with ``args``."""
    return [PY, "-c", code, *args]


def live_children() -> set[int]:
    """PIDs of this test process's live children."""
    return {child.pid for child in psutil.Process().children() if not is_gone(child)}


# --- spawn and readiness --------------------------------------------------------------


def test_spawn_returns_once_the_record_for_the_child_pid_parses(started: Started) -> None:
    server = started.spawn(script(STDIO_SERVER))
    assert server.record_path == started.registry / f"{server.pid}.json"
    assert server.record_path.is_file()
    assert server.record.pid == server.pid
    assert server.record.transport == "stdio"
    assert server.url is None
    assert server.returncode is None
    assert server.command == tuple(script(STDIO_SERVER))


def test_stdio_stop_closes_stdin_and_reports_a_clean_exit(started: Started) -> None:
    server = started.spawn(script(STDIO_SERVER))
    result = server.stop()
    assert result.rung == "stdin_eof"
    assert result.returncode == 0
    assert result.record_removed
    assert result.surviving_workers == ()
    assert result.elapsed < 5
    assert server.stop() is result  # idempotent
    assert server.terminate() is False  # a no-op once exited
    assert server.kill() is False
    assert server.returncode == 0


def test_a_server_that_exits_at_once_raises_with_its_status_and_stderr(tmp_path: Path) -> None:
    before = live_children()
    code = "import sys; sys.stderr.write('cannot start: bad config\\n'); sys.exit(3)"
    with pytest.raises(ServerStartError) as caught:
        spawn_server(script(code), registry=tmp_path)
    assert caught.value.reason == "exited"
    assert "exited with status 3" in str(caught.value)
    assert "cannot start: bad config" in str(caught.value)
    assert live_children() <= before


def test_a_server_that_never_registers_times_out_quickly(tmp_path: Path) -> None:
    before = live_children()
    started_at = time.monotonic()
    with pytest.raises(ServerStartError, match=r"not registered within 0\.3 s") as caught:
        spawn_server(
            script("import sys; sys.stdin.read()"),
            registry=tmp_path,
            ready_timeout=0.3,
            ready="record",
        )
    assert caught.value.reason == "timeout"
    assert "(waiting for ready=record: a process record)" in str(caught.value)
    assert time.monotonic() - started_at < 3
    assert live_children() <= before


def test_a_corrupt_record_fails_start_naming_the_reason(tmp_path: Path) -> None:
    before = live_children()
    with pytest.raises(ServerStartError, match="record present but corrupt: not JSON") as caught:
        spawn_server(script(CORRUPT_RECORD), registry=tmp_path)
    assert caught.value.reason == "corrupt"
    assert live_children() <= before
    assert list(tmp_path.glob("*.json")) == []  # it was stopped by the ladder, cleanly


def test_env_cwd_and_registry_reach_the_child(started: Started, tmp_path: Path) -> None:
    server = started.spawn(script(STDIO_SERVER), env={"LEANHOST_TEST_MARK": "m1"}, cwd=tmp_path)
    environ = psutil.Process(server.pid).environ()
    assert environ["LEANHOST_TEST_MARK"] == "m1"
    assert environ[REGISTRY_ENV] == str(started.registry)
    assert server.record.cwd == str(tmp_path)


def test_stderr_is_drained_without_blocking_and_kept_bounded(started: Started) -> None:
    server = started.spawn(script(NOISY_SERVER), ready_timeout=10)
    assert server.stop().rung == "stdin_eof"
    tail = server.stderr_tail(3).splitlines()
    assert [line.split()[2] for line in tail] == ["4997", "4998", "4999"]
    assert len(server.stderr_tail(10_000).splitlines()) == 200


# --- HTTP -------------------------------------------------------------------------------


def test_http_spawn_binds_a_free_loopback_port_and_waits_for_it(started: Started) -> None:
    server = started.spawn(script(HTTP_SERVER), transport="http")
    assert server.command[-2] == "--bind"
    host, _, port = server.command[-1].rpartition(":")
    assert host == "127.0.0.1"
    assert server.record.bind == f"127.0.0.1:{port}"
    assert server.url == f"http://127.0.0.1:{port}/mcp"
    with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
        pass
    result = server.stop()
    assert (result.rung, result.returncode, result.record_removed) == ("sigterm", 0, True)


def test_http_path_is_passed_and_shapes_the_url(started: Started) -> None:
    server = started.spawn(script(HTTP_SERVER), transport="http", http_path="/a/b")
    assert server.command[-2:] == ("--http-path", "/a/b")
    assert server.url is not None
    assert server.url.endswith("/a/b")


def test_an_explicit_bind_is_passed_and_the_recorded_port_used(started: Started) -> None:
    server = started.spawn(script(HTTP_SERVER), transport="http", bind="127.0.0.1:0")
    assert server.command[-2:] == ("--bind", "127.0.0.1:0")
    assert server.record.bind is not None
    port = server.record.bind.rpartition(":")[2]
    assert port != "0"
    assert server.url == f"http://127.0.0.1:{port}/mcp"


def test_http_spawn_retries_with_a_new_port_when_its_port_was_taken(
    started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        taken_port = taken.getsockname()[1]
        ports = iter([taken_port])
        real_free_port = spawn._free_loopback_port
        # The port picker hands out the occupied port first, as if another process
        # had grabbed it between our probe and the server's bind.
        monkeypatch.setattr(
            spawn, "_free_loopback_port", lambda: next(ports, None) or real_free_port()
        )
        server = started.spawn(script(HTTP_SERVER), transport="http")
    assert server.record.bind is not None
    assert server.record.bind != f"127.0.0.1:{taken_port}"
    assert server.command[-1] == server.record.bind


def test_an_explicit_bind_that_is_taken_is_not_retried(started: Started) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ServerStartError, match="exited with status 1") as caught:
            started.spawn(script(HTTP_SERVER), transport="http", bind=bind)
    assert "Address already in use" in str(caught.value)


# --- the stop ladder ------------------------------------------------------------------


def test_stop_escalates_to_sigterm_when_stdin_eof_is_ignored(started: Started) -> None:
    server = started.spawn(script(IGNORES_EOF))
    result = server.stop(timeout=0.3)
    assert (result.rung, result.returncode, result.record_removed) == ("sigterm", 0, True)
    assert result.elapsed >= 0.3


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored_too(started: Started) -> None:
    server = started.spawn(script(IGNORES_EOF_AND_SIGTERM))
    result = server.stop(timeout=0.2)
    assert result.rung == "sigkill"
    assert result.returncode == -signal.SIGKILL
    assert not result.record_removed  # SIGKILL cannot be caught: a stale record stays


def test_stop_reports_a_server_that_had_already_exited(started: Started) -> None:
    server = started.spawn(script(STDIO_SERVER))
    server.close_stdin()
    assert server.wait(5) == 0
    result = server.stop()
    assert (result.rung, result.returncode, result.record_removed) == ("already_exited", 0, True)


def test_wait_returns_none_while_the_server_runs(started: Started) -> None:
    server = started.spawn(script(STDIO_SERVER))
    assert server.wait(0.01) is None
    assert server.terminate() is True
    assert server.wait(5) is not None


def test_stop_reports_workers_that_outlive_their_server_and_leaves_them(
    started: Started,
) -> None:
    server = started.spawn(script(WITH_WORKER, "orphan"))
    (worker_pid,) = server.child_pids()
    worker = started.adopt(worker_pid)
    result = server.stop()
    assert (result.rung, result.returncode) == ("stdin_eof", 0)
    assert result.surviving_workers == (worker_pid,)
    assert not is_gone(worker)  # reported, never killed by stop()


def test_workers_that_exit_with_their_server_are_not_reported(started: Started) -> None:
    server = started.spawn(script(WITH_WORKER, "tied"))
    (worker_pid,) = server.child_pids()
    worker = started.adopt(worker_pid)
    result = server.stop()
    assert result.surviving_workers == ()
    assert is_gone(worker)


def test_leaving_the_context_manager_stops_the_server(started: Started) -> None:
    with started.spawn(script(STDIO_SERVER)) as server:
        proc = psutil.Process(server.pid)
    assert server.returncode == 0
    assert is_gone(proc)
    assert not server.record_path.exists()


# --- processes.py ---------------------------------------------------------------------


def sleeper(
    children: Children, *, ignore_sigterm: bool = False
) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """A child that sleeps a minute (optionally deaf to SIGTERM), and its pin by create time."""
    prefix = (
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_sigterm else ""
    )
    # It says "ready" once its SIGTERM disposition is in place.
    child = children.track(
        subprocess.Popen(
            [PY, "-c", prefix + "print('ready', flush=True); import time; time.sleep(60)"],
            stdout=subprocess.PIPE,
        )
    )
    assert child.stdout is not None
    with child.stdout:
        assert child.stdout.readline() == b"ready\n"
    return child, psutil.Process(child.pid)


def test_is_gone_counts_an_unreaped_zombie_as_gone(children: Children) -> None:
    child, proc = sleeper(children)
    assert not is_gone(proc)
    os.kill(proc.pid, signal.SIGKILL)  # our own unreaped child: the PID cannot be reused
    assert wait_gone([proc], 5) == []
    assert proc.status() == psutil.STATUS_ZOMBIE  # not reaped yet, and still gone
    child.wait(5)
    assert is_gone(proc)


def test_wait_gone_returns_the_processes_still_alive(children: Children) -> None:
    _, proc = sleeper(children)
    started_at = time.monotonic()
    assert wait_gone([proc], 0.1) == [proc]
    assert time.monotonic() - started_at >= 0.1  # it waited its timeout out


def test_the_ladder_terminates_then_kills_then_reports_gone(children: Children) -> None:
    (polite_child, polite_proc), (deaf_child, deaf_proc) = (
        sleeper(children),
        sleeper(children, ignore_sigterm=True),
    )
    polite, deaf = PinnedProcess.of(polite_proc), PinnedProcess.of(deaf_proc)
    assert stop_ladder([polite], 5) == ["terminate"]
    assert stop_ladder([deaf], 0.1) == ["kill"]
    assert stop_ladder([polite], 5) == ["gone"]
    assert [polite_child.wait(5), deaf_child.wait(5)] == [-signal.SIGTERM, -signal.SIGKILL]


# --- the reference server -------------------------------------------------------------

REFSERVER = [PY, "-m", "pytest_leanhost.refserver"]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_refserver_is_ready_registered_and_stops_cleanly(started: Started, transport: str) -> None:
    server = started.spawn(REFSERVER, transport=transport)
    assert server.record.pid == server.pid
    assert server.record.transport == transport
    assert server.initialize()["serverInfo"]["name"] == "pytest-leanhost-refserver"
    result = server.stop()
    expected_rung = "stdin_eof" if transport == "stdio" else "sigterm"
    assert (result.rung, result.returncode, result.record_removed) == (expected_rung, 0, True)


def test_200_spawn_call_stop_cycles_leave_no_process_and_no_record(started: Started) -> None:
    started_procs: list[psutil.Process] = []
    for cycle in range(200):
        transport = "stdio" if cycle % 2 == 0 else "http"
        server = started.spawn(REFSERVER, transport=transport)
        started_procs.append(psutil.Process(server.pid))  # unreaped child: pinned exactly
        server.initialize()
        assert server.call_tool("echo", {"text": str(cycle)})["content"][0]["text"] == str(cycle)
        if cycle % 10 == 0:
            pid = server.call_tool("spawn_worker", {})["structuredContent"]["pid"]
            started_procs.append(started.adopt(pid))
        result = server.stop()
        assert (result.returncode, result.record_removed, result.surviving_workers) == (0, True, ())
    assert wait_gone(started_procs, 2) == []
    assert list(started.registry.glob("*.json")) == []
    assert list(started.registry.iterdir()) == []  # no temporary files either
