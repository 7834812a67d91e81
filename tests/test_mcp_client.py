"""The MCP client over stdio pipes and Streamable HTTP, on the wire.

Three kinds of peers: a scripted stdio server (a real child process) and a scripted
HTTP server (a real socket, served in a thread) produce the wire details that a
well-behaved server rarely sends (stray lines, server pings, multi-line SSE data,
CRLF, error statuses); the reference server proves the everyday path over both
transports. The SSE parser is also checked on its own, chunk boundaries included.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import pytest_leanhost
from pytest_leanhost.client.mcp import (
    HttpClient,
    McpError,
    McpHttpStatusError,
    McpTransportError,
    PipeLineReader,
    SseEvent,
    SseParser,
)
from tests.children import Started
from tests.test_spawn import script

REFSERVER = [sys.executable, "-m", "pytest_leanhost.refserver"]

# A scripted newline-delimited JSON-RPC server (registers, exits 0 on stdin EOF).
SCRIPTED_STDIO = """
import json, sys
from pytest_leanhost.record import register_server_process
def out(message):
    sys.stdout.write(json.dumps(message) + "\\n")
    sys.stdout.flush()
seen = []
with register_server_process("stdio"):
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg:
            seen.append(msg["method"])
            continue
        ident, method, params = msg["id"], msg["method"], msg.get("params")
        if method == "initialize":
            out({"jsonrpc": "2.0", "id": ident, "result": {
                "protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                "serverInfo": {"name": "scripted", "version": "1"}}})
        elif method == "tools/list":
            out({"jsonrpc": "2.0", "id": ident, "result": {"tools": [{"name": "echo"}]}})
        elif method == "tools/call":
            text = params["arguments"]["text"]
            out({"jsonrpc": "2.0", "id": ident, "result": {
                "content": [{"type": "text", "text": text}], "isError": False}})
        elif method == "seen":
            out({"jsonrpc": "2.0", "id": ident, "result": seen})
        elif method == "chatty":
            print("this line is not JSON", flush=True)
            out({"jsonrpc": "2.0", "id": "not-yours", "result": "a reply nobody waits for"})
            out({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "hi"}})
            out({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"})
            answer = json.loads(sys.stdin.readline())
            out({"jsonrpc": "2.0", "id": ident, "result": {"ping_answer": answer}})
        elif method == "fail":
            out({"jsonrpc": "2.0", "id": ident, "error": {
                "code": -32602, "message": "bad params", "data": {"why": "testing"}}})
        elif method == "quiet":
            pass
        elif method == "die":
            sys.stderr.write("fatal: the scripted server gives up\\n")
            sys.exit(1)
"""


# --- stdio --------------------------------------------------------------------------


def test_stdio_handshake_tools_and_calls(started: Started) -> None:
    server = started.spawn(script(SCRIPTED_STDIO), ready="record")  # the wire as sent
    result = server.initialize("2025-03-26")
    assert result["protocolVersion"] == "2025-03-26"
    assert server.list_tools() == [{"name": "echo"}]
    reply = server.call_tool("echo", {"text": "hello"})
    assert reply["content"] == [{"type": "text", "text": "hello"}]
    server.notify("notifications/custom", {"x": 1})
    assert server.request("seen") == ["notifications/initialized", "notifications/custom"]


def test_stdio_skips_stray_lines_and_notifications_and_answers_a_server_ping(
    started: Started,
) -> None:
    server = started.spawn(script(SCRIPTED_STDIO), ready="record")  # the wire as sent
    result = server.request("chatty")
    assert result == {"ping_answer": {"jsonrpc": "2.0", "id": "srv-1", "result": {}}}
    assert server.request("seen") == []  # our answer was a response, not a notification


def test_stdio_error_reply_raises_mcp_error_with_code_message_and_data(
    started: Started,
) -> None:
    server = started.spawn(script(SCRIPTED_STDIO), ready="record")  # the wire as sent
    with pytest.raises(McpError) as caught:
        server.request("fail", {"x": 1})
    assert (caught.value.code, caught.value.message) == (-32602, "bad params")
    assert caught.value.data == {"why": "testing"}
    assert server.request("seen") == []  # still serving


def test_stdio_request_without_reply_times_out(started: Started) -> None:
    server = started.spawn(script(SCRIPTED_STDIO), ready="record")  # the wire as sent
    started_at = time.monotonic()
    with pytest.raises(McpTransportError, match=r"no reply to quiet \(id 1\) within 0\.2 s"):
        server.request("quiet", timeout=0.2)
    assert time.monotonic() - started_at < 2
    assert server.request("seen") == []  # a late reply would be dropped; the next one works


def test_stdio_closed_stdout_raises_with_the_stderr_tail(started: Started) -> None:
    server = started.spawn(script(SCRIPTED_STDIO), ready="record")  # the wire as sent
    with pytest.raises(McpTransportError) as caught:
        server.request("die")
    assert "closed stdout before answering die" in str(caught.value)
    assert server.wait(5) == 1
    # stderr is read by its own thread: its last line may land just after stdout's EOF
    assert "fatal: the scripted server gives up" in server.stderr_tail()
    with pytest.raises(McpTransportError, match=r"closed stdout|stdin"):
        server.request("seen")


def test_stdio_send_after_stdin_closed_raises(started: Started) -> None:
    server = started.spawn(script(SCRIPTED_STDIO), ready="record")  # the wire as sent
    server.close_stdin()
    with pytest.raises(McpTransportError, match="stdin is closed"):
        server.request("seen")


# --- HTTP against a scripted server -------------------------------------------------


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers like a Streamable HTTP server, with the wire quirks a test asks for."""

    protocol_version = "HTTP/1.1"
    timeout = 10
    server: _ScriptedServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str | None = None, **extra: str) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, *events: str, **extra: str) -> None:
        """Send events as a chunked text/event-stream, one chunk per event."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        for event in events:
            self._chunk(event)
        self.wfile.write(b"0\r\n\r\n")

    def do_DELETE(self) -> None:
        self.server.log.append(("DELETE", dict(self.headers), None))
        self._send(200)

    def do_POST(self) -> None:
        message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.log.append(("POST", dict(self.headers), message))
        self.server.ports.add(self.client_address[1])
        if "method" not in message:  # our answer to a server request
            self.server.answers.append(message)
            self.server.answered.set()
            self._send(202)
            return
        if "id" not in message:
            self._send(202)
            return
        ident, method = message["id"], message["method"]

        def reply(result: Any) -> str:
            return json.dumps({"jsonrpc": "2.0", "id": ident, "result": result})

        if method == "initialize":
            # priming event, a comment, then the reply split over two data lines
            head, _, tail = reply({"protocolVersion": "2025-06-18", "capabilities": {}}).partition(
                ", "
            )
            self._stream(
                "id: 0\ndata: \n\n",
                ": keep-alive comment\nretry: 1500\n\n",
                f"id: 1\nevent: message\ndata: {head},\ndata:{tail}\n\n",
                Mcp_Session_Id="sess-1",
            )
        elif method == "chatty":
            ping = json.dumps({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"})
            note = json.dumps({"jsonrpc": "2.0", "method": "notifications/message"})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk("id: 7\r\ndata: \r\n\r\n")
            self._chunk(f"event: message\r\ndata: {note}\r\n\r\n")
            self._chunk("data: not json\r\n\r\n")
            self._chunk(f"data: {ping}\r\n\r\n")
            self.server.answered.wait(5)
            self._chunk(f"data: {reply({'answers': self.server.answers})}\r\n\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif method == "json":
            self._send(200, reply({"via": "json"}).encode(), "application/json")
        elif method == "json_then_hang_up":
            # No "Connection: close" header: the client learns of it only on its next request.
            self._send(200, reply({"via": "json"}).encode(), "application/json")
            self.close_connection = True
        elif method == "fail":
            error = {"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": "nope"}}
            self._stream(f"data: {json.dumps(error)}\n\n")
        elif method == "http_error":
            self._send(500, b"kaboom", "text/plain")
        elif method == "slow":
            time.sleep(0.4)
            self._send(200, reply({}).encode(), "application/json")
        elif method == "truncated":
            self._stream("id: 0\ndata: \n\n")


class _ScriptedServer(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Scripted)
        self.log: list[tuple[str, dict[str, str], Any]] = []
        self.ports: set[int] = set()
        self.answers: list[Any] = []
        self.answered = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/mcp"


@pytest.fixture
def scripted() -> Iterator[_ScriptedServer]:
    server = _ScriptedServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def client(scripted: _ScriptedServer) -> Iterator[HttpClient]:
    http_client = HttpClient(scripted.url)
    try:
        yield http_client
    finally:
        http_client.close()


def test_http_initialize_takes_the_session_and_version_from_an_event_stream(
    scripted: _ScriptedServer, client: HttpClient
) -> None:
    result = client.initialize()
    assert result == {"protocolVersion": "2025-06-18", "capabilities": {}}
    assert client.session_id == "sess-1"
    assert client.protocol_version == "2025-06-18"
    (_, first, sent), (_, second, note) = scripted.log
    assert sent["params"]["clientInfo"] == {
        "name": "pytest-leanhost",
        "version": pytest_leanhost.__version__,
    }
    assert first["Accept"] == "application/json, text/event-stream"
    assert first["Content-Type"] == "application/json"
    assert "Mcp-Session-Id" not in first
    assert "MCP-Protocol-Version" not in first
    assert note == {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert second["Mcp-Session-Id"] == "sess-1"
    assert second["MCP-Protocol-Version"] == "2025-06-18"


def test_http_event_stream_skips_priming_notifications_and_junk_and_answers_ping(
    scripted: _ScriptedServer, client: HttpClient
) -> None:
    result = client.request("chatty")
    assert result == {"answers": [{"jsonrpc": "2.0", "id": "srv-1", "result": {}}]}


def test_http_json_replies_and_one_kept_alive_connection(
    scripted: _ScriptedServer, client: HttpClient
) -> None:
    assert client.request("json") == {"via": "json"}
    client.notify("notifications/x")
    assert client.request("json") == {"via": "json"}
    assert len(scripted.ports) == 1  # three requests, one connection


def test_http_retries_once_when_the_server_closed_a_kept_alive_connection(
    scripted: _ScriptedServer, client: HttpClient
) -> None:
    assert client.request("json_then_hang_up") == {"via": "json"}
    assert client.request("json") == {"via": "json"}
    assert len(scripted.ports) == 2
    assert [entry[2]["method"] for entry in scripted.log] == ["json_then_hang_up", "json"]


def test_http_error_reply_raises_mcp_error(client: HttpClient) -> None:
    with pytest.raises(McpError) as caught:
        client.request("fail")
    assert (caught.value.code, caught.value.message) == (-32601, "nope")


def test_http_non_2xx_status_raises_with_status_and_body(client: HttpClient) -> None:
    with pytest.raises(
        McpHttpStatusError, match="HTTP 500 Internal Server Error: kaboom"
    ) as caught:
        client.request("http_error")
    assert (caught.value.status, caught.value.body) == (500, b"kaboom")
    assert client.request("json") == {"via": "json"}  # the client recovers


def test_http_request_times_out_then_recovers(client: HttpClient) -> None:
    with pytest.raises(McpTransportError, match=r"slow \(id 1\): no reply"):
        client.request("slow", timeout=0.1)
    assert client.request("json") == {"via": "json"}


def test_http_stream_that_ends_without_the_reply_raises(client: HttpClient) -> None:
    with pytest.raises(McpTransportError, match="event stream ended before the reply"):
        client.request("truncated")


def test_http_close_ends_the_session_with_delete(
    scripted: _ScriptedServer, client: HttpClient
) -> None:
    client.initialize()
    client.close()
    method, headers, _ = scripted.log[-1]
    assert (method, headers["Mcp-Session-Id"]) == ("DELETE", "sess-1")
    assert client.delete_status == 200
    client.close()  # idempotent: no second DELETE
    assert [entry[0] for entry in scripted.log].count("DELETE") == 1


def test_http_connection_refused_is_a_transport_error(scripted: _ScriptedServer) -> None:
    url = scripted.url
    scripted.shutdown()
    scripted.server_close()
    refused = HttpClient(url, stderr_tail=lambda: "server said goodbye")
    with pytest.raises(McpTransportError, match="cannot reach") as caught:
        refused.request("json")
    assert "server said goodbye" in str(caught.value)
    refused.close()


# --- the SSE parser -----------------------------------------------------------------


def test_sse_parser_handles_every_line_ending_even_split_across_feeds() -> None:
    parser = SseParser()
    text = "data: a\r\ndata: b\rdata: c\n\r\n: comment\nevent: custom\ndata\n\n"
    events = [event for char in text for event in parser.feed(char)]
    assert events == [SseEvent("a\nb\nc"), SseEvent("", "custom")]


def test_sse_parser_keeps_id_and_retry_and_skips_events_without_data() -> None:
    parser = SseParser()
    assert parser.feed("id: 5\nretry: 3000\n\n") == []
    assert parser.last_event_id == "5"
    assert parser.retry == 3000
    events = parser.feed("retry: soon\ndata:x\ndata:  y\n\n")
    assert events == [SseEvent("x\n y", "message", "5", 3000)]


# --- the reference server, both transports ------------------------------------------


@pytest.mark.parametrize(
    ("transport", "options"), [("stdio", []), ("http", []), ("http", ["--json-response"])]
)
def test_refserver_conversation(started: Started, transport: str, options: list[str]) -> None:
    server = started.spawn([*REFSERVER, *options], transport=transport)
    result = server.initialize()
    assert result["protocolVersion"] == "2025-06-18"
    assert result["serverInfo"]["name"] == "pytest-leanhost-refserver"
    assert {tool["name"] for tool in server.list_tools()} >= {"echo", "sleep", "spawn_worker"}
    assert server.call_tool("echo", {"text": "hi"})["content"] == [{"type": "text", "text": "hi"}]
    assert server.request("ping") == {}
    server.notify("notifications/whatever")
    with pytest.raises(McpError) as caught:
        server.request("no/such/method")
    assert caught.value.code == -32601
    with pytest.raises(McpError) as caught:
        server.call_tool("no-such-tool")
    assert caught.value.code == -32602
    result_after = server.stop()
    assert result_after.returncode == 0
    assert result_after.record_removed


def test_refserver_http_session_ends_on_close(started: Started) -> None:
    server = started.spawn(REFSERVER, transport="http")
    assert server.url is not None
    client = HttpClient(server.url)
    try:
        client.initialize()
        session = client.session_id
        assert session
        client.close()
        assert client.delete_status == 200
        # The old session is gone: a request that still carries it gets 404.
        client.session_id = session
        with pytest.raises(McpHttpStatusError) as caught:
            client.request("ping")
        assert caught.value.status == 404
    finally:
        client.session_id = None
        client.close()


# --- the pipe reader ----------------------------------------------------------------


def test_pipe_reader_delivers_lines_splits_long_ones_and_keeps_a_final_fragment() -> None:
    read_end, write_end = os.pipe()
    lines: list[bytes] = []
    with os.fdopen(write_end, "wb") as writer:
        reader = PipeLineReader(os.fdopen(read_end, "rb"), lines.append, name="t", max_line=4)
        writer.write(b"ab\ncdefghij\nkl")
    assert reader.eof.wait(5)
    reader.close()
    assert lines == [b"ab", b"cdef", b"ghij", b"kl"]
