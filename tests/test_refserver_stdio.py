"""The reference server over stdio: handshake, tools, JSON-RPC errors, shutdown paths, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from pytest_leanhost.record import REGISTRY_ENV, ProcessRecord
from pytest_leanhost.refserver import LATEST_PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS
from tests.children import poll
from tests.refserver_helpers import (
    VANISHING_PARENT_CODE,
    Processes,
    RefServer,
    gone,
    initialize,
    registry_files,
    request,
    tool_call,
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefServer]:
    """One stdio server for the stateless protocol tests (each still proves it keeps serving)."""
    tracker = Processes(tmp_path_factory.mktemp("shared-stdio"))
    try:
        yield tracker.start()
    finally:
        tracker.close()


@pytest.fixture
def server(processes: Processes) -> RefServer:
    return processes.start()


def ping_works(server: RefServer, request_id: int = 999) -> bool:
    return server.call(request("ping", request_id=request_id)) == {
        "jsonrpc": "2.0",
        "id": request_id,
        "result": {},
    }


# The handshake


@pytest.mark.parametrize("version", SUPPORTED_PROTOCOL_VERSIONS)
def test_initialize_answers_the_requested_version_when_supported(
    shared: RefServer, version: str
) -> None:
    answer = shared.call(initialize(version))
    assert answer["result"]["protocolVersion"] == version


def test_initialize_answers_the_latest_version_for_an_unknown_one(shared: RefServer) -> None:
    answer = shared.call(initialize("1999-01-01", request_id=5))
    assert answer == {
        "jsonrpc": "2.0",
        "id": 5,
        "result": {
            "protocolVersion": LATEST_PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "pytest-leanhost-refserver", "version": "0.1.0"},
        },
    }
    assert LATEST_PROTOCOL_VERSION == "2025-11-25"


def test_full_handshake_then_ping_and_tools(server: RefServer) -> None:
    assert server.call(initialize("2025-06-18"))["result"]["protocolVersion"] == "2025-06-18"
    server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert ping_works(server, request_id=2)
    assert server.call(request("tools/list", request_id=3))["result"]["tools"]


@pytest.mark.parametrize("params", [None, {}, {"_meta": {"progressToken": 1}}])
def test_ping_answers_an_empty_result(shared: RefServer, params: dict[str, Any] | None) -> None:
    answer = shared.call(request("ping", params, request_id="p-1"))
    assert answer == {"jsonrpc": "2.0", "id": "p-1", "result": {}}


@pytest.mark.parametrize("params", [None, {}, {"cursor": "x"}])
def test_tools_list_names_each_tool_with_description_and_input_schema(
    shared: RefServer, params: dict[str, Any] | None
) -> None:
    tools = shared.call(request("tools/list", params))["result"]["tools"]
    assert [tool["name"] for tool in tools] == ["echo", "sleep", "spawn_worker"]
    for tool in tools:
        assert tool["description"]
        assert tool["inputSchema"]["type"] == "object"
    schemas = {tool["name"]: tool["inputSchema"] for tool in tools}
    assert schemas["echo"]["required"] == ["text"]
    assert schemas["sleep"]["properties"]["ms"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 60000,
        "description": "milliseconds to sleep",
    }
    assert schemas["spawn_worker"]["properties"] == {}


# The tools


def test_echo_returns_its_text(shared: RefServer) -> None:
    answer = shared.call(tool_call("echo", {"text": "héllo\nwörld ☃"}))
    assert answer["result"] == {
        "content": [{"type": "text", "text": "héllo\nwörld ☃"}],
        "isError": False,
    }


def test_sleep_returns_after_sleeping(shared: RefServer) -> None:
    started = time.monotonic()
    answer = shared.call(tool_call("sleep", {"ms": 50}))
    assert time.monotonic() - started >= 0.05
    assert answer["result"] == {
        "content": [{"type": "text", "text": "slept 50 ms"}],
        "isError": False,
    }
    assert shared.call(tool_call("sleep", {"ms": 0}))["result"]["isError"] is False


def test_spawn_worker_returns_the_pid_of_a_child_of_the_server(
    server: RefServer, processes: Processes
) -> None:
    result = server.call(tool_call("spawn_worker", {}))["result"]
    pid = result["structuredContent"]["pid"]
    worker = processes.pin(pid)
    assert result["content"] == [{"type": "text", "text": str(pid)}]
    assert result["isError"] is False
    assert worker.ppid() == server.pid
    assert not gone(worker)


def test_spawn_worker_without_arguments_works_too(server: RefServer, processes: Processes) -> None:
    result = server.call(tool_call("spawn_worker"))["result"]
    processes.pin(result["structuredContent"]["pid"])
    assert result["isError"] is False


# JSON-RPC errors: each has its code, and the server keeps serving


def _line(message: object) -> bytes:
    return json.dumps(message).encode() + b"\n"


ERRORS: dict[str, tuple[bytes, int, int | None]] = {
    "not JSON": (b"not json\n", -32700, None),
    "truncated JSON": (b'{"jsonrpc": "2.0", "id": 1,\n', -32700, None),
    "NaN is not JSON": (
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}\n',
        -32700,
        None,
    ),
    "not UTF-8": (b"\xff\xfe\n", -32700, None),
    "not an object": (b'"ping"\n', -32600, None),
    "a batch": (_line([request("ping")]), -32600, None),
    "wrong jsonrpc": (_line({"jsonrpc": "1.0", "id": 7, "method": "ping"}), -32600, 7),
    "no jsonrpc": (_line({"id": 7, "method": "ping"}), -32600, 7),
    "method not a string": (_line({"jsonrpc": "2.0", "id": 7, "method": 5}), -32600, 7),
    "id a boolean": (_line({"jsonrpc": "2.0", "id": True, "method": "ping"}), -32600, None),
    "id null": (_line({"jsonrpc": "2.0", "id": None, "method": "ping"}), -32600, None),
    "params a string": (
        _line({"jsonrpc": "2.0", "id": 7, "method": "ping", "params": "x"}),
        -32600,
        7,
    ),
    "neither request nor response": (_line({"jsonrpc": "2.0", "id": 7}), -32600, 7),
    "unknown method": (_line(request("no/such/method", request_id=7)), -32601, 7),
    "server/discover": (_line(request("server/discover", {}, 7)), -32601, 7),
    "resources/list": (_line(request("resources/list", {}, 7)), -32601, 7),
    "unknown tool": (_line(tool_call("no_such_tool", {}, 7)), -32602, 7),
    "echo without text": (_line(tool_call("echo", {}, 7)), -32602, 7),
    "echo text a number": (_line(tool_call("echo", {"text": 5}, 7)), -32602, 7),
    "echo extra argument": (_line(tool_call("echo", {"text": "a", "x": 1}, 7)), -32602, 7),
    "sleep too long": (_line(tool_call("sleep", {"ms": 60001}, 7)), -32602, 7),
    "sleep negative": (_line(tool_call("sleep", {"ms": -1}, 7)), -32602, 7),
    "sleep a float": (_line(tool_call("sleep", {"ms": 1.5}, 7)), -32602, 7),
    "sleep a boolean": (_line(tool_call("sleep", {"ms": True}, 7)), -32602, 7),
    "sleep without ms": (_line(tool_call("sleep", {}, 7)), -32602, 7),
    "spawn_worker with arguments": (_line(tool_call("spawn_worker", {"n": 2}, 7)), -32602, 7),
    "tools/call without params": (_line(request("tools/call", request_id=7)), -32602, 7),
    "tools/call without name": (_line(request("tools/call", {"arguments": {}}, 7)), -32602, 7),
    "arguments not an object": (
        _line(request("tools/call", {"name": "echo", "arguments": ["a"]}, 7)),
        -32602,
        7,
    ),
    "params an array": (
        _line({"jsonrpc": "2.0", "id": 7, "method": "ping", "params": []}),
        -32602,
        7,
    ),
    "initialize without params": (_line(request("initialize", request_id=7)), -32602, 7),
    "initialize without version": (
        _line(request("initialize", {"capabilities": {}}, 7)),
        -32602,
        7,
    ),
    "initialize capabilities not an object": (
        _line(request("initialize", {"protocolVersion": "2025-06-18", "capabilities": 1}, 7)),
        -32602,
        7,
    ),
}


@pytest.mark.parametrize(("payload", "code", "answer_id"), list(ERRORS.values()), ids=list(ERRORS))
def test_each_error_gets_its_code_and_serving_continues(
    shared: RefServer, payload: bytes, code: int, answer_id: int | None
) -> None:
    shared.send_raw(payload)
    answer = shared.receive()
    assert answer["jsonrpc"] == "2.0"
    assert answer["id"] == answer_id
    assert answer["error"]["code"] == code
    assert isinstance(answer["error"]["message"], str)
    assert "result" not in answer
    assert ping_works(shared)


def test_notifications_and_client_responses_are_never_answered(shared: RefServer) -> None:
    for message in [
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
        {"jsonrpc": "2.0", "method": "notifications/no-such-thing"},
        {"jsonrpc": "2.0", "method": "tools/call", "params": "malformed"},
        {"jsonrpc": "1.0", "method": "ping"},
        {"jsonrpc": "2.0", "id": "from-client-1", "result": {}},
        {"jsonrpc": "2.0", "id": 12, "error": {"code": -1, "message": "no"}},
    ]:
        shared.send(message)
    shared.send_raw(b"\n   \n")  # blank lines are not messages either
    # The very next line on stdout is the ping's answer: nothing else was written.
    assert ping_works(shared, request_id=4242)


def test_stdout_carries_one_json_object_per_line(server: RefServer) -> None:
    server.send_raw(
        _line(request("ping", request_id=1)) + _line(tool_call("echo", {"text": "a"}, 2))
    )
    server.close_stdin()
    assert server.wait() == 0
    assert server.popen.stdout is not None
    lines = server.popen.stdout.read().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [1, 2]


def test_unterminated_last_line_is_answered_before_exit(server: RefServer) -> None:
    server.send_raw(json.dumps(request("ping", request_id=3)).encode())
    server.close_stdin()
    assert server.receive() == {"jsonrpc": "2.0", "id": 3, "result": {}}
    assert server.wait() == 0


# The record and the shutdown paths


def test_record_describes_the_stdio_server(server: RefServer) -> None:
    record = server.wait_record()
    assert record == ProcessRecord(
        pid=server.pid,
        executable=record.executable,
        cwd=os.getcwd(),
        started_unix_millis=record.started_unix_millis,
        parent_pid_at_start=os.getpid(),
        process_group_id=os.getpgrp(),
        transport="stdio",
        bind=None,
        http_path=None,
    )
    assert os.path.samefile(record.executable, sys.executable)
    assert abs(record.started_unix_millis - time.time() * 1000) < 60_000


def test_stdin_eof_exits_0_and_removes_the_record(server: RefServer) -> None:
    assert server.record_path.exists()
    server.close_stdin()
    assert server.wait() == 0
    assert registry_files(server.registry) == []
    assert server.stderr() == ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_and_removes_the_record(server: RefServer, signum: signal.Signals) -> None:
    assert ping_works(server)
    server.signal(signum)
    assert server.wait() == 0
    assert registry_files(server.registry) == []


def test_sigterm_during_a_long_sleep_exits_promptly(server: RefServer) -> None:
    assert ping_works(server)
    server.send(tool_call("sleep", {"ms": 60000}))
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert registry_files(server.registry) == []


def test_parent_loss_ends_the_server_and_removes_its_record(processes: Processes) -> None:
    registry = processes.registry()
    stdin_read, stdin_write = os.pipe()  # we keep the write end: the server never sees EOF
    try:
        parent = processes.popen(
            [sys.executable, "-c", VANISHING_PARENT_CODE, str(stdin_read)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(stdin_read,),
            env=processes.env(registry, {"LEANHOST_REFSERVER_PARENT_POLL": "0.02"}),
        )
        os.close(stdin_read)
        assert parent.stdout is not None
        assert parent.stdin is not None
        server = processes.pin(int(parent.stdout.readline()))
        record_path = registry / f"{server.pid}.json"
        assert poll(record_path.exists)
        assert ProcessRecord.from_json_bytes(record_path.read_bytes()).parent_pid_at_start == (
            parent.pid
        )
        parent.stdin.write(b"exit now\n")
        parent.stdin.flush()
        assert parent.wait(10) == 0
        assert poll(lambda: gone(server), timeout=10), "the server outlived its parent"
        assert registry_files(registry) == []
    finally:
        os.close(stdin_write)


IGNORE_PARENT = ("--fault", "ignore-parent-loss")


def test_without_parent_watch_fault_the_server_outlives_its_parent(processes: Processes) -> None:
    registry = processes.registry()
    stdin_read, stdin_write = os.pipe()
    try:
        parent = processes.popen(
            [sys.executable, "-c", VANISHING_PARENT_CODE, str(stdin_read), *IGNORE_PARENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(stdin_read,),
            env=processes.env(registry, {"LEANHOST_REFSERVER_PARENT_POLL": "0.02"}),
        )
        os.close(stdin_read)
        assert parent.stdout is not None
        assert parent.stdin is not None
        server = processes.pin(int(parent.stdout.readline()))
        assert poll((registry / f"{server.pid}.json").exists)
        parent.stdin.write(b"exit now\n")
        parent.stdin.flush()
        assert parent.wait(10) == 0
        assert poll(lambda: server.ppid() != parent.pid)
        # Many parent polls later it still runs; then EOF on its stdin still ends it cleanly.
        assert not poll(lambda: gone(server), timeout=0.3)
        os.close(stdin_write)
        stdin_write = -1
        assert poll(lambda: gone(server), timeout=10)
        assert registry_files(registry) == []
    finally:
        if stdin_write >= 0:
            os.close(stdin_write)


# Workers


def _spawn_worker(server: RefServer, processes: Processes) -> psutil.Process:
    answer = server.call(tool_call("spawn_worker", {}))
    return processes.pin(answer["result"]["structuredContent"]["pid"])


def test_worker_exits_when_the_server_exits_on_eof(server: RefServer, processes: Processes) -> None:
    workers = [_spawn_worker(server, processes) for _ in range(2)]
    server.close_stdin()
    assert server.wait() == 0
    assert all(gone(worker) for worker in workers)  # stopped and reaped before the server exited


def test_worker_exits_when_the_server_is_sigkilled(server: RefServer, processes: Processes) -> None:
    worker = _spawn_worker(server, processes)
    server.signal(signal.SIGKILL)
    assert server.wait() == -signal.SIGKILL
    assert poll(lambda: gone(worker), timeout=10), "the worker outlived a SIGKILLed server"
    assert registry_files(server.registry) == [f"{server.pid}.json"]  # SIGKILL: a stale record


def test_orphan_worker_fault_leaves_the_worker_running(processes: Processes) -> None:
    server = processes.start("--fault", "orphan-worker")
    worker = _spawn_worker(server, processes)
    server.close_stdin()
    assert server.wait() == 0
    assert registry_files(server.registry) == []
    assert poll(lambda: worker.ppid() != server.pid)
    assert not gone(worker)
    worker.kill()  # exact PID: psutil checks the create time noted at spawn
    assert poll(lambda: gone(worker))


def test_workers_inherit_the_servers_environment(processes: Processes) -> None:
    server = processes.start(env={"LEANHOST_TEST_MARKER": "refserver-worker-42"})
    worker = _spawn_worker(server, processes)
    # Right after fork, before exec, /proc/PID/environ can read empty: wait for the exec.
    assert poll(lambda: "LEANHOST_TEST_MARKER" in worker.environ())
    assert worker.environ()["LEANHOST_TEST_MARKER"] == "refserver-worker-42"
    assert worker.environ()[REGISTRY_ENV] == str(server.registry)


# The official Python SDK as a client


def test_official_sdk_client_works_over_stdio(processes: Processes) -> None:
    anyio = pytest.importorskip("anyio")
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.types import TextContent

    registry = processes.registry()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pytest_leanhost.refserver"],
        env={REGISTRY_ENV: str(registry)},
    )
    seen: dict[str, Any] = {}

    async def session() -> None:
        async with Client(params) as client:
            # The SDK probes server/discover, gets -32601 and falls back to initialize.
            seen["version"] = client.protocol_version
            seen["name"] = client.server_info.name if client.server_info else None
            [record_name] = registry_files(registry)
            seen["server"] = processes.pin(int(record_name.removesuffix(".json")))
            [echoed] = (await client.call_tool("echo", {"text": "via the SDK"})).content
            assert isinstance(echoed, TextContent)
            seen["echo"] = echoed.text
            spawned = await client.call_tool("spawn_worker", {})
            seen["worker"] = processes.pin(spawned.structured_content["pid"])
            seen["tools"] = [tool.name for tool in (await client.list_tools()).tools]

    anyio.run(session)
    assert seen["version"] == LATEST_PROTOCOL_VERSION
    assert seen["name"] == "pytest-leanhost-refserver"
    assert seen["echo"] == "via the SDK"
    assert seen["tools"] == ["echo", "sleep", "spawn_worker"]
    assert poll(lambda: gone(seen["server"]))
    assert poll(lambda: gone(seen["worker"]))
    assert registry_files(registry) == []
