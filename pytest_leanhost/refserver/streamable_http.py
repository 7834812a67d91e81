"""The Streamable HTTP transport, as the MCP specification (2025-06-18+) and rmcp serve it.

One endpoint path: ``POST`` carries one JSON-RPC message (a request is answered
as ``text/event-stream``, a priming event then the reply, or as
``application/json``), ``DELETE`` ends a session, ``GET`` is 405. ``initialize``
issues the ``Mcp-Session-Id`` that later messages must carry. Requests whose
``Host`` is not a loopback name are refused (DNS rebinding protection). Every
response has a ``Content-Length``, so HTTP/1.1 connections stay open.
Imported only in HTTP mode.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import socketserver
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pytest_leanhost.refserver.cli import Config
from pytest_leanhost.refserver.lifecycle import Stopper
from pytest_leanhost.refserver.protocol import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    SUPPORTED_PROTOCOL_VERSIONS,
    Incoming,
    JsonObject,
    McpServer,
    RpcError,
    Session,
    classify,
    decode,
    encode,
    error_response,
)

__all__ = ["MAX_BODY_BYTES", "PRIMING_EVENT", "HttpTransport"]

#: A larger POST body is refused with 413.
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Sent before the reply on every event stream, as rmcp does: an event id, empty data.
PRIMING_EVENT = b"id: 0\ndata: \n\n"

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"


class _InFlight:
    """Counts requests being handled, so a shutdown can wait for them and refuse new ones."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._active = 0
        self._draining = False

    def enter(self) -> bool:
        """Start a request; False once draining has begun."""
        with self._condition:
            if self._draining:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        """End a request."""
        with self._condition:
            self._active -= 1
            self._condition.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait until none is in flight; False on timeout."""
        with self._condition:
            self._draining = True
            return self._condition.wait_for(lambda: self._active == 0, timeout)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: Config, transport: HttpTransport) -> None:
        assert config.bind is not None
        self.transport = transport
        self.address_family = socket.AF_INET6 if config.bind.ipv6 else socket.AF_INET
        host = config.bind.host
        if config.has_fault("bind-all"):  # fault: reachable from the network (rule 5)
            host = "::" if config.bind.ipv6 else "0.0.0.0"
        super().__init__((host, config.bind.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN (a DNS query); not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class HttpTransport:
    """Binds the listening socket at construction, serves on :meth:`start`, stops gracefully."""

    def __init__(self, config: Config, server: McpServer, stopper: Stopper) -> None:
        self.config = config
        self.mcp = server
        self.stopper = stopper
        self.in_flight = _InFlight()
        self._sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self._httpd = _Server(config, self)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The address actually bound, as the record holds it: ``127.0.0.1:43121``, ``[::1]:P``."""
        host, port = str(self._httpd.server_address[0]), int(self._httpd.server_address[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        """Serve in a daemon thread; a failure of the accept loop requests a stop (exit 1)."""
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._httpd.serve_forever(poll_interval=0.05)
        except Exception:
            sys.stderr.write(f"refserver: HTTP server failed:\n{traceback.format_exc()}")
            self.stopper.request("http failed", exit_code=1)

    def shutdown(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, then let in-flight requests finish (bounded), then close."""
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()
        if not self.in_flight.drain(drain_timeout):
            sys.stderr.write("refserver: in-flight HTTP requests did not finish in time\n")

    def close(self) -> None:
        """Close the listening socket without serving (a start-up that went wrong)."""
        self._httpd.server_close()

    def new_session(self, session: Session) -> str:
        """Store a session and return its new random id (32 hex digits: visible ASCII)."""
        session_id = os.urandom(16).hex()
        with self._sessions_lock:
            self._sessions[session_id] = session
        return session_id

    def session(self, session_id: str) -> Session | None:
        """The session with this id, if it exists."""
        with self._sessions_lock:
            return self._sessions.get(session_id)

    def end_session(self, session_id: str) -> bool:
        """Forget a session; False if it did not exist."""
        with self._sessions_lock:
            return self._sessions.pop(session_id, None) is not None


class _Refusal(Exception):
    """An HTTP error answer: status, a JSON-RPC error body (POST) or text, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: int = INVALID_REQUEST,
        request_id: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.headers = headers or {}


class _Handler(BaseHTTPRequestHandler):
    """One HTTP request on the MCP endpoint; every answer carries a Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "pytest-leanhost-refserver"
    # Headers and body go out in separate writes; with Nagle on, the second waits
    # for the client's delayed ACK (about 40 ms) on every kept-alive request.
    disable_nagle_algorithm = True
    server: _Server

    def version_string(self) -> str:
        """The ``Server`` header: the server's name alone."""
        return self.server_version

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a served request is not a diagnostic."""

    def do_POST(self) -> None:
        """Take one JSON-RPC message."""
        self._handle(self._post)

    def do_DELETE(self) -> None:
        """End a session."""
        self._handle(self._delete)

    def do_GET(self) -> None:
        """No server-initiated stream: 405."""
        self._handle(self._not_allowed)

    do_PUT = do_PATCH = do_OPTIONS = do_GET

    def _handle(self, method: Callable[[bytes], None]) -> None:
        # Every answer is written inside the in-flight window, so a shutdown waits for it.
        transport = self.server.transport
        if not transport.in_flight.enter():
            with contextlib.suppress(ConnectionError):
                self._reply(503, b"shutting down\n", "text/plain", close=True)
            return
        try:
            self._answer_request(method)
        except ConnectionError:  # the client went away while we answered
            self.close_connection = True
        except Exception:
            sys.stderr.write(f"refserver: HTTP handler failed:\n{traceback.format_exc()}")
            error = encode(error_response(RpcError(INTERNAL_ERROR, "Internal error")))
            with contextlib.suppress(OSError):
                self._reply(500, error, "application/json", close=True)
        finally:
            transport.in_flight.leave()

    def _answer_request(self, method: Callable[[bytes], None]) -> None:
        body = self._read_body()
        if body is None:
            return
        try:
            if not _loopback_host(self.headers.get("Host")):
                raise _Refusal(403, "Forbidden: Host header is not a loopback name")
            if self.path.partition("?")[0] != self.server.transport.config.http_path:
                raise _Refusal(404, "Not Found")
            method(body)
        except _Refusal as refusal:
            self._refuse(refusal)

    def _read_body(self) -> bytes | None:
        # The body is read before any answer, so a refused request leaves the connection usable.
        if "Transfer-Encoding" in self.headers:
            self._reply(411, b"Content-Length required\n", "text/plain", close=True)
            return None
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            if self.command == "POST":
                self._reply(411, b"Content-Length required\n", "text/plain", close=True)
                return None
            return b""
        if not length_text.strip().isdigit():
            self._reply(400, b"bad Content-Length\n", "text/plain", close=True)
            return None
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self._reply(413, b"body too large\n", "text/plain", close=True)
            return None
        return self.rfile.read(length)

    def _post(self, body: bytes) -> None:
        if not _accepts_json_and_event_stream(self.headers.get("Accept", "")):
            raise _Refusal(
                406, "Not Acceptable: Accept must list application/json and text/event-stream"
            )
        if _media_type(self.headers.get("Content-Type", "")) != "application/json":
            raise _Refusal(415, "Unsupported Media Type: Content-Type must be application/json")
        try:
            incoming = classify(decode(body))
        except RpcError as error:
            raise _Refusal(
                400, error.message, code=error.code, request_id=error.request_id
            ) from None
        transport = self.server.transport
        if incoming.kind == "request" and incoming.method == "initialize":
            self._initialize(incoming)
            return
        session = self._session(incoming.id)
        if incoming.kind == "request":
            self._answer(transport.mcp.respond(incoming, session))
            return
        if incoming.kind == "notification":
            transport.mcp.notify(incoming, session)
        self._reply(202, b"", None)

    def _initialize(self, request: Incoming) -> None:
        transport = self.server.transport
        session = Session()
        response = transport.mcp.respond(request, session)
        headers = {}
        if "result" in response:  # only a successful handshake opens a session
            headers[SESSION_HEADER] = transport.new_session(session)
        self._answer(response, headers)

    def _session(self, request_id: str | int | None) -> Session:
        session_id = self.headers.get(SESSION_HEADER)
        if session_id is None:
            raise _Refusal(
                400, f"Bad Request: {SESSION_HEADER} header is required", request_id=request_id
            )
        session = self.server.transport.session(session_id)
        if session is None:
            raise _Refusal(404, "Not Found: unknown session", request_id=request_id)
        version = self.headers.get(VERSION_HEADER)
        if version is not None and version not in SUPPORTED_PROTOCOL_VERSIONS:
            raise _Refusal(
                400, f"Bad Request: unsupported {VERSION_HEADER}: {version}", request_id=request_id
            )
        return session

    def _delete(self, body: bytes) -> None:
        self._session(None)
        self.server.transport.end_session(self.headers[SESSION_HEADER])
        self._reply(200, b"", None)

    def _not_allowed(self, body: bytes) -> None:
        raise _Refusal(405, "Method Not Allowed", headers={"Allow": "POST, DELETE"})

    def _answer(self, response: JsonObject, headers: dict[str, str] | None = None) -> None:
        data = encode(response)
        if self.server.transport.config.json_response:
            self._reply(200, data, "application/json", headers)
        else:
            stream = PRIMING_EVENT + b"event: message\ndata: " + data + b"\n\n"
            headers = {"Cache-Control": "no-cache", **(headers or {})}
            self._reply(200, stream, "text/event-stream", headers)

    def _refuse(self, refusal: _Refusal) -> None:
        if self.command == "POST":
            error = RpcError(refusal.code, refusal.message, refusal.request_id)
            body, content_type = encode(error_response(error)), "application/json"
        else:
            body, content_type = (refusal.message + "\n").encode(), "text/plain; charset=utf-8"
        self._reply(refusal.status, body, content_type, refusal.headers)

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(body)


def _media_type(value: str) -> str:
    return value.partition(";")[0].strip().lower()


def _accepts_json_and_event_stream(accept: str) -> bool:
    types = {_media_type(part) for part in accept.split(",")}
    return {"application/json", "text/event-stream"} <= types


def _loopback_host(value: str | None) -> bool:
    """Whether a Host header names this machine: localhost, 127.x.x.x or [::1], any port."""
    if not value:
        return False
    host = value.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or name != "::1":
            return False
        return not rest or (rest.startswith(":") and _is_port(rest[1:]))
    name, colon, port = host.partition(":")
    if colon and not _is_port(port):
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit()
