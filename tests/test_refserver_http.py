"""The reference server over Streamable HTTP, spoken to with ``http.client``."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_leanhost.record import ProcessRecord
from pytest_leanhost.refserver import LATEST_PROTOCOL_VERSION
from pytest_leanhost.stopping import poll_until
from tests.children import poll
from tests.refserver_helpers import (
    Processes,
    RefServer,
    gone,
    initialize,
    registry_files,
    request,
    tool_call,
)

ACCEPT_BOTH = "application/json, text/event-stream"
PRIMING = b"id: 0\ndata: \n\n"


class Endpoint:
    """A running HTTP server's address, with helpers that always close what they open."""

    def __init__(self, server: RefServer) -> None:
        self.server = server
        self.record = server.wait_record()
        assert self.record.bind is not None
        assert self.record.http_path is not None
        host, _, port = self.record.bind.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.path = self.record.http_path

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=10)

    def exchange(
        self,
        method: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        path: str | None = None,
        connection: http.client.HTTPConnection | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request; returns status, headers and the whole body."""
        conn = connection or self.connect()
        try:
            conn.request(method, path or self.path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            if connection is None:
                conn.close()

    def post(
        self,
        message: object,
        *,
        session: str | None = None,
        headers: dict[str, str] | None = None,
        connection: http.client.HTTPConnection | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """POST a JSON-RPC message (bytes are sent as they are) with the headers MCP asks for."""
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        sent = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
        if session is not None:
            sent["Mcp-Session-Id"] = session
        sent.update(headers or {})
        return self.exchange("POST", body, sent, connection=connection)

    def open_session(self, version: str = "2025-06-18") -> str:
        status, headers, _ = self.post(initialize(version))
        assert status == 200
        session = headers["Mcp-Session-Id"]
        assert session
        status, _, body = self.post(
            {"jsonrpc": "2.0", "method": "notifications/initialized"}, session=session
        )
        assert (status, body) == (202, b"")
        return session


def sse_messages(body: bytes) -> list[dict[str, Any]]:
    """The JSON messages in an event-stream body, after checking it opens with the priming event."""
    assert body.startswith(PRIMING), body
    events = body[len(PRIMING) :].split(b"\n\n")
    assert events[-1] == b""
    messages = []
    for event in events[:-1]:
        event_line, data_line = event.split(b"\n")
        assert event_line == b"event: message"
        assert data_line.startswith(b"data: ")
        messages.append(json.loads(data_line[len(b"data: ") :]))
    return messages


def json_error(body: bytes) -> int:
    """The JSON-RPC error code in a refusal's body."""
    message = json.loads(body)
    assert message["jsonrpc"] == "2.0"
    code = message["error"]["code"]
    assert isinstance(code, int)
    return code


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """One SSE-mode HTTP server shared by the protocol tests of this module."""
    tracker = Processes(tmp_path_factory.mktemp("shared-http"))
    try:
        yield Endpoint(tracker.start("--bind", "127.0.0.1:0"))
    finally:
        tracker.close()


@pytest.fixture
def session(endpoint: Endpoint) -> str:
    return endpoint.open_session()


# Answers: SSE by default, JSON with --json-response


def test_request_is_answered_as_an_event_stream_after_a_priming_event(endpoint: Endpoint) -> None:
    status, headers, body = endpoint.post(initialize("2025-03-26"))
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert int(headers["Content-Length"]) == len(body)
    [answer] = sse_messages(body)
    assert answer["id"] == 1
    assert answer["result"]["protocolVersion"] == "2025-03-26"
    assert answer["result"]["serverInfo"]["name"] == "pytest-leanhost-refserver"


def test_json_response_option_answers_application_json(processes: Processes) -> None:
    endpoint = Endpoint(processes.start("--bind", "127.0.0.1:0", "--json-response"))
    status, headers, body = endpoint.post(initialize("1999-01-01"))
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["result"]["protocolVersion"] == LATEST_PROTOCOL_VERSION
    session = headers["Mcp-Session-Id"]
    status, headers, body = endpoint.post(tool_call("echo", {"text": "x"}, 2), session=session)
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body)["result"]["content"] == [{"type": "text", "text": "x"}]


def test_tools_and_errors_over_http(endpoint: Endpoint, session: str) -> None:
    status, _, body = endpoint.post(tool_call("echo", {"text": "über"}, 2), session=session)
    assert status == 200
    assert sse_messages(body)[0]["result"]["content"][0]["text"] == "über"
    _, _, body = endpoint.post(request("tools/list", request_id=3), session=session)
    assert [t["name"] for t in sse_messages(body)[0]["result"]["tools"]] == [
        "echo",
        "sleep",
        "spawn_worker",
    ]
    _, _, body = endpoint.post(request("ping", request_id=4), session=session)
    assert sse_messages(body) == [{"jsonrpc": "2.0", "id": 4, "result": {}}]
    for message, code in [
        (request("server/discover", {}, 5), -32601),
        (tool_call("sleep", {"ms": -5}, 6), -32602),
        (tool_call("nope", {}, 7), -32602),
    ]:
        status, _, body = endpoint.post(message, session=session)
        assert status == 200
        [answer] = sse_messages(body)
        assert (answer["id"], answer["error"]["code"]) == (message["id"], code)


# Sessions


def test_initialize_issues_a_fresh_visible_ascii_session_id(endpoint: Endpoint) -> None:
    ids = {endpoint.open_session() for _ in range(3)}
    assert len(ids) == 3
    for session_id in ids:
        assert session_id.isascii()
        assert session_id.isprintable()
        assert " " not in session_id
        assert len(session_id) >= 16


def test_failed_initialize_opens_no_session(endpoint: Endpoint) -> None:
    status, headers, body = endpoint.post(request("initialize", {"capabilities": {}}))
    assert status == 200
    assert "Mcp-Session-Id" not in headers
    assert sse_messages(body)[0]["error"]["code"] == -32602


def test_request_without_a_session_is_400(endpoint: Endpoint) -> None:
    status, headers, body = endpoint.post(request("tools/list", request_id=8))
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["id"] == 8
    assert json_error(body) == -32600


def test_request_with_an_unknown_session_is_404(endpoint: Endpoint) -> None:
    status, _, body = endpoint.post(request("tools/list"), session="0123456789abcdef")
    assert status == 404
    assert json_error(body) == -32600


def test_notifications_and_responses_get_202_and_no_body(endpoint: Endpoint, session: str) -> None:
    for message in [
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
        {"jsonrpc": "2.0", "method": "notifications/unknown"},
        {"jsonrpc": "2.0", "id": "server-request-1", "result": {}},
    ]:
        status, headers, body = endpoint.post(message, session=session)
        assert (status, body, headers["Content-Length"]) == (202, b"", "0")


def test_delete_ends_the_session(endpoint: Endpoint, session: str) -> None:
    status, _, body = endpoint.exchange("DELETE", headers={"Mcp-Session-Id": session})
    assert (status, body) == (200, b"")
    status, _, _ = endpoint.post(request("ping"), session=session)
    assert status == 404
    status, _, _ = endpoint.exchange("DELETE", headers={"Mcp-Session-Id": session})
    assert status == 404
    status, _, _ = endpoint.exchange("DELETE")
    assert status == 400


# Refusals


def test_get_is_405_and_names_the_allowed_methods(endpoint: Endpoint, session: str) -> None:
    status, headers, _ = endpoint.exchange(
        "GET", headers={"Accept": "text/event-stream", "Mcp-Session-Id": session}
    )
    assert status == 405
    assert headers["Allow"] == "POST, DELETE"


@pytest.mark.parametrize(("method", "path"), [("POST", "/"), ("POST", "/mcp/"), ("GET", "/other")])
def test_other_paths_are_404(endpoint: Endpoint, method: str, path: str) -> None:
    body = json.dumps(initialize()).encode()
    headers = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
    status, _, _ = endpoint.exchange(method, body, headers, path=path)
    assert status == 404


@pytest.mark.parametrize(
    "accept", [None, "application/json", "text/event-stream", "*/*", "text/html, application/*"]
)
def test_post_that_does_not_accept_both_types_is_406(
    endpoint: Endpoint, accept: str | None
) -> None:
    body = json.dumps(initialize()).encode()
    headers = {"Content-Type": "application/json"}
    if accept is not None:
        headers["Accept"] = accept
    status, _, _ = endpoint.exchange("POST", body, headers)
    assert status == 406


def test_accept_with_parameters_and_other_types_is_fine(endpoint: Endpoint) -> None:
    accept = "text/html, application/json;q=0.9, text/event-stream; q=0.8"
    status, _, _ = endpoint.post(initialize(), headers={"Accept": accept})
    assert status == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/jsonx"])
def test_body_that_is_not_application_json_is_415(
    endpoint: Endpoint, content_type: str | None
) -> None:
    headers = {"Accept": ACCEPT_BOTH}
    if content_type is not None:
        headers["Content-Type"] = content_type
    status, _, _ = endpoint.exchange("POST", json.dumps(initialize()).encode(), headers)
    assert status == 415
    status, _, _ = endpoint.post(
        initialize(), headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert status == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "10.0.0.1", "[::2]:1"]
)
def test_foreign_host_header_is_403(endpoint: Endpoint, host: str) -> None:
    status, _, body = endpoint.post(initialize(), headers={"Host": host})
    assert status == 403
    assert json_error(body) == -32600


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "127.9.8.7:80", "[::1]", "[::1]:443"]
)
def test_loopback_host_header_is_accepted(endpoint: Endpoint, host: str) -> None:
    status, _, _ = endpoint.post(initialize(), headers={"Host": host})
    assert status == 200


def test_unsupported_protocol_version_header_is_400(endpoint: Endpoint, session: str) -> None:
    status, _, body = endpoint.post(
        request("ping"), session=session, headers={"MCP-Protocol-Version": "2026-07-28"}
    )
    assert status == 400
    assert json_error(body) == -32600
    for version in ("2025-06-18", "2024-11-05"):
        status, _, _ = endpoint.post(
            request("ping"), session=session, headers={"MCP-Protocol-Version": version}
        )
        assert status == 200


def test_invalid_json_body_is_400_with_a_parse_error(endpoint: Endpoint) -> None:
    status, headers, body = endpoint.post(b"{not json")
    assert (status, headers["Content-Type"]) == (400, "application/json")
    assert json.loads(body) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": json.loads(body)["error"]["message"]},
    }


def test_invalid_message_is_400_with_invalid_request(endpoint: Endpoint) -> None:
    status, _, body = endpoint.post([initialize()])
    assert status == 400
    assert json_error(body) == -32600


def test_connection_stays_open_across_requests_and_refusals(endpoint: Endpoint) -> None:
    conn = endpoint.connect()
    try:
        status, headers, _ = endpoint.post(initialize(), connection=conn)
        first_socket = conn.sock
        session = headers["Mcp-Session-Id"]
        results = [
            endpoint.post(request("ping", request_id=2), session=session, connection=conn)[0],
            endpoint.post(initialize(), headers={"Accept": "text/html"}, connection=conn)[0],
            endpoint.post(b"{bad", connection=conn)[0],
            endpoint.post({"jsonrpc": "2.0", "method": "x"}, session=session, connection=conn)[0],
            endpoint.exchange("GET", connection=conn)[0],
            endpoint.post(request("ping", request_id=3), session=session, connection=conn)[0],
        ]
        assert (status, results) == (200, [200, 406, 400, 202, 405, 200])
        assert conn.sock is first_socket
    finally:
        conn.close()


# Binding and the record


def test_port_0_records_the_real_port_and_the_path(processes: Processes) -> None:
    server = processes.start("--bind", "127.0.0.1:0", "--http-path", "/custom/mcp")
    record = server.wait_record()
    assert record == ProcessRecord(
        pid=server.pid,
        executable=record.executable,
        cwd=record.cwd,
        started_unix_millis=record.started_unix_millis,
        parent_pid_at_start=record.parent_pid_at_start,
        process_group_id=record.process_group_id,
        transport="http",
        bind=record.bind,
        http_path="/custom/mcp",
    )
    assert record.bind is not None
    host, _, port = record.bind.rpartition(":")
    assert host == "127.0.0.1"
    assert 0 < int(port) < 65536
    endpoint = Endpoint(server)
    assert endpoint.post(initialize())[0] == 200
    assert endpoint.exchange("POST", b"{}", path="/mcp")[0] == 404
    # The server writes this line after its record: polled, as a loaded machine may delay it.
    line = f"listening on http://{record.bind}/custom/mcp"
    poll_until(lambda: line in server.stderr(), 10.0)
    assert line in server.stderr()


@pytest.mark.parametrize(
    ("bind", "recorded_host"), [("localhost:0", "127.0.0.1"), ("[::1]:0", "[::1]")]
)
def test_localhost_and_ipv6_binds_record_the_bound_address(
    processes: Processes, bind: str, recorded_host: str
) -> None:
    server = processes.start("--bind", bind)
    record = server.wait_record()
    assert record.bind is not None
    assert record.bind.rpartition(":")[0] == recorded_host
    assert Endpoint(server).post(initialize())[0] == 200


def test_bind_and_path_from_the_environment(processes: Processes) -> None:
    server = processes.start(
        env={"LEAN_HOST_MCP_BIND": "127.0.0.1:0", "LEAN_HOST_MCP_HTTP_PATH": "/from-env"}
    )
    record = server.wait_record()
    assert (record.transport, record.http_path) == ("http", "/from-env")
    assert Endpoint(server).post(initialize())[0] == 200


# Shutdown


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_and_removes_the_record(
    processes: Processes, signum: signal.Signals
) -> None:
    server = processes.start("--bind", "127.0.0.1:0")
    endpoint = Endpoint(server)
    endpoint.open_session()
    server.signal(signum)
    assert server.wait() == 0
    assert registry_files(server.registry) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((endpoint.host, endpoint.port), timeout=5).close()


def test_signal_right_after_registering_always_stops_the_server(processes: Processes) -> None:
    # A signal that lands between the main thread's last check and its wait must still wake
    # it (a race that once left about 1 in 40 servers running): repeat the tight timing.
    for _ in range(10):
        server = processes.start("--bind", "127.0.0.1:0", "--fault", "ignore-sigterm")
        server.signal(signal.SIGINT)
        assert server.wait(timeout=5) == 0
        assert registry_files(server.registry) == []


def test_stdin_eof_does_not_stop_an_http_server(processes: Processes) -> None:
    server = processes.start("--bind", "127.0.0.1:0")
    server.close_stdin()
    assert Endpoint(server).post(initialize())[0] == 200
    assert server.popen.poll() is None
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


def _server_has_read_everything(server_port: int, client_port: int) -> bool:
    """Whether the server side of our connection has an empty receive queue (/proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if (local_port, remote_port) == (server_port, client_port):
                    return int(fields[4].split(":")[1], 16) == 0
    return False


def test_sigterm_lets_an_in_flight_request_finish(processes: Processes) -> None:
    server = processes.start("--bind", "127.0.0.1:0")
    endpoint = Endpoint(server)
    session = endpoint.open_session()
    conn = endpoint.connect()
    try:
        # A first answer on this connection proves the server has accepted it.
        assert endpoint.post(request("ping"), session=session, connection=conn)[0] == 200
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        body = json.dumps(tool_call("sleep", {"ms": 60000}, 9)).encode()
        headers = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
        conn.request("POST", endpoint.path, body, {**headers, "Mcp-Session-Id": session})
        assert poll(lambda: _server_has_read_everything(endpoint.port, client_port))
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        response = conn.getresponse()
        [answer] = sse_messages(response.read())
        assert response.status == 200
        assert answer["id"] == 9
        assert answer["result"]["isError"] is True
        assert "interrupted" in answer["result"]["content"][0]["text"]
    finally:
        conn.close()
    assert server.wait() == 0
    assert time.monotonic() - started < 10
    assert registry_files(server.registry) == []


def test_worker_exits_with_the_http_server(processes: Processes) -> None:
    server = processes.start("--bind", "127.0.0.1:0")
    endpoint = Endpoint(server)
    session = endpoint.open_session()
    _, _, body = endpoint.post(tool_call("spawn_worker", {}, 2), session=session)
    worker = processes.pin(sse_messages(body)[0]["result"]["structuredContent"]["pid"])
    assert worker.ppid() == server.pid
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert gone(worker)


# The official Python SDK as a client


def test_official_sdk_client_works_over_http(processes: Processes) -> None:
    anyio = pytest.importorskip("anyio")
    from mcp.client import Client
    from mcp.types import TextContent

    server = processes.start("--bind", "127.0.0.1:0")
    endpoint = Endpoint(server)
    seen: dict[str, Any] = {}

    async def session() -> None:
        url = f"http://{endpoint.record.bind}{endpoint.path}"
        async with Client(url) as client:
            seen["version"] = client.protocol_version
            [echoed] = (await client.call_tool("echo", {"text": "hi"})).content
            assert isinstance(echoed, TextContent)
            seen["echo"] = echoed.text
            spawned = await client.call_tool("spawn_worker", {})
            seen["worker"] = processes.pin(spawned.structured_content["pid"])

    anyio.run(session)
    assert seen["version"] == LATEST_PROTOCOL_VERSION
    assert seen["echo"] == "hi"
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert poll(lambda: gone(seen["worker"]))
    assert registry_files(server.registry) == []
