"""A small synchronous MCP client over stdio pipes and Streamable HTTP (standard library only).

It speaks just enough JSON-RPC 2.0 and MCP to drive a server under test: requests with a
timeout, notifications, the ``initialize`` handshake, tools. Replies are matched by id;
server notifications and stray lines are skipped; a server's ``ping`` request is answered.
Transport failures raise :class:`McpTransportError` with the server's stderr tail when
the caller can provide it, JSON-RPC errors raise :class:`McpError`.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import re
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

from pytest_leanhost import __version__

__all__ = [
    "DEFAULT_PROTOCOL_VERSION",
    "HttpClient",
    "McpClient",
    "McpError",
    "McpHttpStatusError",
    "McpTransportError",
    "PipeLineReader",
    "SseEvent",
    "SseParser",
    "StdioClient",
]

DEFAULT_PROTOCOL_VERSION = "2025-06-18"
CLIENT_INFO = {"name": "pytest-leanhost", "version": __version__}
_METHOD_NOT_FOUND = -32601
_POLL_MS = 50  # how often an idle pipe reader looks at its stop flag
_FINAL_READS = 64  # reads (64 KiB each) a stopping reader still makes of a busy pipe


class McpError(Exception):
    """The server answered a request with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class McpTransportError(RuntimeError):
    """The conversation broke: closed pipe or connection, timeout, or a malformed reply."""


class McpHttpStatusError(McpTransportError):
    """The server answered an HTTP request with a status outside 2xx."""

    def __init__(self, status: int, reason: str, body: bytes, what: str) -> None:
        text = body.decode("utf-8", "replace")
        super().__init__(f"{what}: HTTP {status} {reason}: {text[:500]}")
        self.status = status
        self.reason = reason
        self.body = body


def _with_tail(message: str, stderr_tail: Callable[[], str] | None) -> str:
    tail = stderr_tail() if stderr_tail is not None else ""
    return f"{message}\n--- server stderr (last lines) ---\n{tail}" if tail else message


class PipeLineReader:
    """Reads a pipe line by line in a daemon thread, so the writer never blocks on it.

    ``on_line`` gets each line without its newline (a final unterminated line too; a
    line longer than ``max_line`` bytes arrives in pieces of at most that size);
    ``eof`` is set once the pipe closed or the reader was stopped. :meth:`close` stops
    the thread even when another process still holds the pipe's write end (a worker
    that inherited it), joins it, then closes the pipe.
    """

    def __init__(
        self,
        stream: IO[bytes],
        on_line: Callable[[bytes], None],
        *,
        name: str,
        on_eof: Callable[[], None] | None = None,
        max_line: int | None = None,
    ) -> None:
        self._stream = stream
        self._max_line = max_line
        self._on_line = on_line
        self._on_eof = on_eof
        self._stop = threading.Event()
        self.eof = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._stream.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        pieces: list[bytes] = []
        final_reads = _FINAL_READS
        try:
            while final_reads > 0:
                # Rule: once asked to stop, still take what is already in the pipe
                # (a bounded amount), so no line the process wrote before exiting is lost.
                stopping = self._stop.is_set()
                if not poller.poll(0 if stopping else _POLL_MS):
                    if stopping:
                        break
                    continue
                if stopping:
                    final_reads -= 1
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                # Rule: a line is delivered only once its newline arrived (or it grew
                # past max_line: then the memory bound wins and it arrives in pieces).
                *complete, rest = chunk.split(b"\n")
                if complete:
                    complete[0] = b"".join([*pieces, complete[0]])
                    pieces = []
                    for line in complete:
                        self._deliver(line)
                if rest:
                    pieces.append(rest)
                    if self._max_line is not None and sum(map(len, pieces)) > self._max_line:
                        self._deliver(b"".join(pieces))
                        pieces = []
        except OSError:
            pass
        finally:
            if pieces:
                self._deliver(b"".join(pieces))
            self.eof.set()
            if self._on_eof is not None:
                self._on_eof()

    def _deliver(self, line: bytes) -> None:
        limit = self._max_line
        if limit is None or len(line) <= limit:
            self._on_line(line)
            return
        for start in range(0, len(line), limit):
            self._on_line(line[start : start + limit])

    def close(self) -> None:
        """Stop the thread, join it and close the pipe; idempotent.

        The thread stops within ~50 ms, after taking what the pipe already holds.
        """
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        self._stream.close()


def _reply_of(message: dict[str, Any]) -> Any:
    """Return a response's result, or raise its error as :class:`McpError`."""
    if "error" in message:
        error = message["error"]
        if not isinstance(error, dict):
            raise McpTransportError(f"malformed JSON-RPC error: {message!r}")
        return_code = error.get("code")
        code = return_code if isinstance(return_code, int) else 0
        raise McpError(code, str(error.get("message", "")), error.get("data"))
    return message.get("result")


def _is_response(message: Any) -> bool:
    return isinstance(message, dict) and "method" not in message and "id" in message


def _answer_to(request: dict[str, Any]) -> dict[str, Any]:
    """The client's answer to a server-to-client request: ``ping`` gets ``{}``."""
    if request.get("method") == "ping":
        return {"jsonrpc": "2.0", "id": request["id"], "result": {}}
    error = {"code": _METHOD_NOT_FOUND, "message": f"method not found: {request.get('method')}"}
    return {"jsonrpc": "2.0", "id": request["id"], "error": error}


class McpClient:
    """What both transports offer: requests, notifications and the MCP conveniences."""

    def __init__(self, stderr_tail: Callable[[], str] | None = None) -> None:
        self._stderr_tail = stderr_tail
        self._ids = itertools.count(1)

    def request(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        """Send a request and return its result; raise :class:`McpError` on an error reply."""
        raise NotImplementedError

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification (no reply is expected)."""
        raise NotImplementedError

    def close(self) -> None:
        """End the conversation and release every pipe, socket and thread."""
        raise NotImplementedError

    def _message(self, method: str, params: dict[str, Any] | None, with_id: bool) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if with_id:
            message["id"] = next(self._ids)
        if params is not None:
            message["params"] = params
        return message

    def _error(self, message: str) -> McpTransportError:
        return McpTransportError(_with_tail(message, self._stderr_tail))

    def initialize(
        self, protocol_version: str = DEFAULT_PROTOCOL_VERSION, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Run the MCP handshake: ``initialize``, then ``notifications/initialized``."""
        params = {
            "protocolVersion": protocol_version,
            "capabilities": {},
            "clientInfo": CLIENT_INFO,
        }
        result = self.request("initialize", params, timeout)
        if not isinstance(result, dict):
            raise self._error(f"initialize returned {result!r}, not an object")
        self._initialized(result)
        self.notify("notifications/initialized")
        return result

    def _initialized(self, result: dict[str, Any]) -> None:
        """Hook for a transport that must remember what ``initialize`` negotiated."""

    def list_tools(self) -> list[dict[str, Any]]:
        """Return the server's tools (``tools/list``)."""
        result = self.request("tools/list")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            raise self._error(f"tools/list returned {result!r}")
        return tools

    def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a tool and return its result object (``content``, ``isError``...)."""
        result = self.request("tools/call", {"name": name, "arguments": arguments or {}})
        if not isinstance(result, dict):
            raise self._error(f"tools/call returned {result!r}")
        return result


class StdioClient(McpClient):
    """Newline-delimited JSON-RPC over a child's stdin and stdout pipes."""

    def __init__(
        self,
        stdin: IO[bytes],
        stdout: IO[bytes],
        *,
        stderr_tail: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(stderr_tail)
        self._stdin = stdin
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._waiting: set[Any] = set()
        self._replies: dict[Any, dict[str, Any]] = {}
        self._reader = PipeLineReader(
            stdout, self._on_line, name="leanhost-mcp-stdout", on_eof=self._on_eof
        )

    def _on_line(self, line: bytes) -> None:
        try:
            parsed = json.loads(line)
        except (ValueError, RecursionError):
            return  # not JSON: a stray line, ignored
        for message in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(message, dict):
                continue
            if "method" in message:
                if "id" in message:
                    self._answer_server(message)
                continue  # a server notification
            if _is_response(message):
                with self._cond:
                    # Rule: keep only replies someone waits for (a late one is dropped).
                    if message["id"] in self._waiting:
                        self._replies[message["id"]] = message
                        self._cond.notify_all()

    def _answer_server(self, request: dict[str, Any]) -> None:
        # If the server went away, the waiting request reports that.
        with contextlib.suppress(McpTransportError):
            self._write(_answer_to(request))

    def _on_eof(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _write(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"
        with self._write_lock:
            if self._stdin.closed:
                raise self._error(
                    f"cannot send {message.get('method', 'a reply')}: stdin is closed"
                )
            try:
                self._stdin.write(data)
                self._stdin.flush()
            except (BrokenPipeError, ValueError, OSError) as exc:
                raise self._error(f"cannot write to the server's stdin: {exc}") from exc

    def request(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        """Send a request and wait up to ``timeout`` seconds for the reply with its id."""
        message = self._message(method, params, with_id=True)
        ident = message["id"]
        with self._cond:
            self._waiting.add(ident)
        try:
            self._write(message)
            reply = self._wait_reply(ident, method, timeout)
        finally:
            with self._cond:
                self._waiting.discard(ident)
                self._replies.pop(ident, None)
        return _reply_of(reply)

    def _wait_reply(self, ident: Any, method: str, timeout: float) -> dict[str, Any]:
        with self._cond:
            if self._cond.wait_for(
                lambda: ident in self._replies or self._reader.eof.is_set(), timeout
            ):
                if ident in self._replies:
                    return self._replies[ident]
                raise self._error(f"server closed stdout before answering {method} (id {ident})")
        raise self._error(f"no reply to {method} (id {ident}) within {timeout} s")

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification line."""
        self._write(self._message(method, params, with_id=False))

    def close_stdin(self) -> None:
        """Close the server's stdin (it sees EOF); idempotent."""
        # A broken pipe on the final flush means the server is gone anyway.
        with self._write_lock, contextlib.suppress(OSError):
            self._stdin.close()

    @property
    def stdout_closed(self) -> bool:
        """Whether the server's stdout reached EOF (or the reader was stopped)."""
        return self._reader.eof.is_set()

    def close(self) -> None:
        """Close stdin, stop the stdout reader and close stdout; idempotent."""
        self.close_stdin()
        self._reader.close()


@dataclass(frozen=True)
class SseEvent:
    """One dispatched server-sent event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


_LINE_END = re.compile(r"\r\n|\r|\n")


class SseParser:
    """An incremental ``text/event-stream`` parser, as the HTML standard defines it.

    Lines end in CRLF, LF or CR; ``:`` starts a comment; ``data`` lines join with
    newlines; ``event``, ``id`` and ``retry`` are kept; a blank line dispatches the event
    (no event when no ``data`` line came, though an ``id`` still counts).
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self.last_event_id: str | None = None
        self.retry: int | None = None

    def feed(self, text: str) -> list[SseEvent]:
        """Feed more text; return the events it completed."""
        self._buffer += text
        events: list[SseEvent] = []
        while (match := _LINE_END.search(self._buffer)) is not None:
            if match.group() == "\r" and match.end() == len(self._buffer):
                break  # maybe the first half of a CRLF split across feeds
            line = self._buffer[: match.start()]
            self._buffer = self._buffer[match.end() :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self.last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SseEvent("\n".join(data), event or "message", self.last_event_id, self.retry)


class HttpClient(McpClient):
    """MCP Streamable HTTP over one kept-alive ``http.client.HTTPConnection``."""

    def __init__(self, url: str, *, stderr_tail: Callable[[], str] | None = None) -> None:
        super().__init__(stderr_tail)
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"not an http:// URL: {url!r}")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or 80
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        #: The status of the DELETE that ended the session on close (None: none sent).
        self.delete_status: int | None = None

    def _headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        if self.protocol_version is not None:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _exchange(
        self, method: str, body: bytes | None, timeout: float, what: str
    ) -> http.client.HTTPResponse:
        """Send one HTTP request and return the response (headers read, body not)."""
        for _attempt in range(2):
            fresh = self._conn is None
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            conn = self._conn
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(method, self._path, body, self._headers())
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop_connection()
                # Rule: only a kept-alive connection that the server had closed is retried.
                if fresh:
                    raise self._error(f"{what}: connection to {self.url} broken: {exc}") from exc
            except TimeoutError as exc:
                self._drop_connection()
                raise self._error(f"{what}: no reply from {self.url} within {timeout} s") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                raise self._error(f"{what}: cannot reach {self.url}: {exc}") from exc
        raise self._error(f"{what}: connection to {self.url} closed twice")  # pragma: no cover

    def _finish(self, response: http.client.HTTPResponse) -> None:
        """Consume the rest of a response so the connection can carry the next request."""
        if response.isclosed():
            return
        try:
            if self._conn is not None and self._conn.sock is not None:
                self._conn.sock.settimeout(1.0)  # a stream left open after the reply
            response.read()
        except (OSError, http.client.HTTPException):
            self._drop_connection()
        if response.will_close:
            self._drop_connection()

    def request(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        """POST a request and return its result from a JSON or an event-stream reply."""
        message = self._message(method, params, with_id=True)
        what = f"{method} (id {message['id']})"
        with self._lock:
            response = self._exchange("POST", json.dumps(message).encode(), timeout, what)
            try:
                if not 200 <= response.status < 300:
                    raise McpHttpStatusError(
                        response.status, response.reason, response.read(), what
                    )
                if method == "initialize":
                    self.session_id = response.getheader("Mcp-Session-Id") or self.session_id
                reply = self._read_reply(response, message["id"], what)
            except TimeoutError as exc:
                self._drop_connection()
                raise self._error(f"{what}: no reply within {timeout} s") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                raise self._error(f"{what}: reading the reply failed: {exc}") from exc
            finally:
                self._finish(response)
        return _reply_of(reply)

    def _read_reply(
        self, response: http.client.HTTPResponse, ident: Any, what: str
    ) -> dict[str, Any]:
        content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if content_type == "application/json":
            body = response.read()
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError) as exc:
                raise self._error(f"{what}: reply is not JSON: {body[:200]!r}") from exc
            reply = self._handle_messages(parsed, ident)
            if reply is None:
                raise self._error(f"{what}: JSON reply does not answer it: {body[:200]!r}")
            return reply
        if content_type == "text/event-stream":
            parser = SseParser()
            while line := response.readline():
                for event in parser.feed(line.decode("utf-8", "replace")):
                    if not event.data:
                        continue  # a priming event
                    try:
                        parsed = json.loads(event.data)
                    except (ValueError, RecursionError):
                        continue
                    reply = self._handle_messages(parsed, ident)
                    if reply is not None:
                        return reply
            raise self._error(f"{what}: event stream ended before the reply")
        raise self._error(f"{what}: unexpected Content-Type {content_type!r}")

    def _handle_messages(self, parsed: Any, ident: Any) -> dict[str, Any] | None:
        """Return the response with ``ident`` among ``parsed``; answer server requests."""
        found = None
        for message in parsed if isinstance(parsed, list) else [parsed]:
            if _is_response(message) and message["id"] == ident:
                found = message
            elif isinstance(message, dict) and "method" in message and "id" in message:
                self._post_answer(_answer_to(message))
        return found

    def _post_answer(self, answer: dict[str, Any]) -> None:
        """POST our answer to a server request on a second connection (the first is busy)."""
        conn = http.client.HTTPConnection(self._host, self._port, timeout=5.0)
        try:
            conn.request("POST", self._path, json.dumps(answer).encode(), self._headers())
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass  # best effort: the reply we wait for still decides
        finally:
            conn.close()

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """POST a notification; the server answers 202 Accepted."""
        message = self._message(method, params, with_id=False)
        with self._lock:
            response = self._exchange("POST", json.dumps(message).encode(), 30.0, method)
            try:
                body = response.read()
            finally:
                self._finish(response)
            if not 200 <= response.status < 300:
                raise McpHttpStatusError(response.status, response.reason, body, method)

    def _initialized(self, result: dict[str, Any]) -> None:
        version = result.get("protocolVersion")
        self.protocol_version = version if isinstance(version, str) else None

    def close(self) -> None:
        """End the session with DELETE (when one was issued) and close the connection."""
        with self._lock:
            if self.session_id is not None:
                try:
                    response = self._exchange("DELETE", None, 5.0, "DELETE session")
                    self.delete_status = response.status
                    self._finish(response)
                except McpTransportError:
                    pass  # the server is gone already: nothing left to end
                self.session_id = None
            self._drop_connection()
