"""Spawn a real MCP server as a child, wait until it registers, drive it, and stop it.

:func:`spawn_server` starts any server command (the reference server, ``lean-host-mcp``,
a user's own), waits for its process record and returns a :class:`ServerProcess`.
:meth:`ServerProcess.stop` walks the lifecycle contract's shutdown ladder and reports,
as a :class:`StopResult`, which rung ended the server, whether it removed its record
and which of its workers survived it. Every signal goes to the exact PID that was
started, after checking that the PID still names that process (same create time).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pytest_leanhost.client.mcp import (
    DEFAULT_PROTOCOL_VERSION,
    HttpClient,
    McpClient,
    McpError,
    McpTransportError,
    PipeLineReader,
    StdioClient,
)
from pytest_leanhost.core.processes import PinnedProcess, wait_gone
from pytest_leanhost.record import REGISTRY_ENV, ProcessRecord, RecordError
from pytest_leanhost.stopping import Backoff, LadderRung, SignalsByNumber, stop_ladder

__all__ = [
    "READY_MODES",
    "McpError",
    "McpTransportError",
    "Ready",
    "ReadyMode",
    "ServerProcess",
    "ServerStartError",
    "StopResult",
    "spawn_server",
]

Transport = Literal["stdio", "http"]
Rung = Literal["stdin_eof", "sigterm", "sigkill", "already_exited"]
#: How a server counts as ready: its record, an answered ``initialize``, an accepting port
#: (HTTP), or ``auto``: the record or an answered ``initialize``, whichever comes first.
ReadyMode = Literal["record", "initialize", "port", "auto"]
READY_MODES: tuple[ReadyMode, ...] = ("record", "initialize", "port", "auto")
#: A mode, or a predicate polled with the starting server until it returns True.
Ready = ReadyMode | Callable[["ServerProcess"], bool]

_TAIL_LINES = 200  # stderr lines kept per server
_MAX_TAIL_LINE = 4096  # a longer stderr line is kept in pieces of this size
_PORT_RETRIES = 5  # fresh ports tried when the chosen one was taken in between
_WORKER_GRACE = 1.0  # how long workers get to follow their exited server
_START_FAILURE_GRACE = 1.0  # per rung, when stopping a server that failed to start

#: The ladder's rungs as a server's stop reports them. A server that outlives even
#: SIGKILL's wait is killed again and reaped when its pipes are closed.
_RUNGS: dict[LadderRung, Rung] = {
    "gone": "already_exited",
    "first": "stdin_eof",
    "terminate": "sigterm",
    "kill": "sigkill",
    "survived": "sigkill",
}


class ServerStartError(RuntimeError):
    """The server exited, did not register in time, or wrote a corrupt record.

    ``reason`` is ``"exited"``, ``"timeout"``, ``"corrupt"`` or ``"refused"`` (a stdio
    server answered the readiness ``initialize`` with an error).
    """

    def __init__(
        self, message: str, reason: Literal["exited", "timeout", "corrupt", "refused"]
    ) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class StopResult:
    """How :meth:`ServerProcess.stop` ended a server.

    ``rung``: the step that ended it; ``returncode``: its exit status (negative: the
    signal that killed it); ``record_removed``: whether ``<pid>.json`` is gone;
    ``surviving_workers``: PIDs of its descendants still alive after a short grace;
    ``elapsed``: seconds the stop took.
    """

    rung: Rung
    returncode: int | None
    record_removed: bool
    surviving_workers: tuple[int, ...]
    elapsed: float


class _LineTail:
    """The last lines a pipe carried, bounded, for error messages."""

    def __init__(self, maxlen: int = _TAIL_LINES) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, line: bytes) -> None:
        with self._lock:
            self._lines.append(line.decode("utf-8", "replace").rstrip("\r"))

    def text(self, lines: int = 20) -> str:
        with self._lock:
            kept = list(self._lines)
        return "\n".join(kept[-lines:] if lines > 0 else [])


def _wait_exit_event(pid: int, timeout: float) -> None:
    """Block until our child ``pid`` exits or ``timeout`` passes, waking at once on exit.

    Linux's pidfd becomes readable the moment the child exits; elsewhere this returns
    at once and ``Popen.wait`` polls on its own (with a coarser backoff).
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return
    try:
        fd = pidfd_open(pid)
    except OSError:
        return  # already reaped, or no pidfd support in this kernel
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(max(0, int(timeout * 1000)))
    finally:
        os.close(fd)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def _split_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def _accepts(bind: str) -> bool:
    """Whether ``HOST:PORT`` accepts a TCP connection right now."""
    try:
        host, port = _split_bind(bind)
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


class ServerProcess(SignalsByNumber):
    """A started, registered server: its PID and record, an MCP client, and the ladder.

    A context manager: leaving it stops the server. ``terminate()`` and ``kill()``
    (from :class:`~pytest_leanhost.stopping.SignalsByNumber`) send SIGTERM and SIGKILL
    to the exact server PID, False (no-op) once it exited. Not thread-safe beyond what the
    underlying client allows.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        command: Sequence[str],
        transport: Transport,
        registry: Path,
        stderr: PipeLineReader,
        stderr_lines: _LineTail,
        stdout_drain: PipeLineReader | None,
        bind_arg: str | None = None,
        http_path: str | None = None,
    ) -> None:
        self._popen = popen
        # Captured while the child cannot have been reaped: pins its create time.
        self._pinned = PinnedProcess.now(popen.pid)
        self.pid = popen.pid
        self.command: tuple[str, ...] = tuple(command)
        self.transport: Transport = transport
        self.registry = registry
        self.record_path = registry / f"{popen.pid}.json"
        self._bind_arg = bind_arg
        self._http_path = http_path
        self._record: ProcessRecord | None = None
        #: What made the server ready: a mode's name, or ``"callable"``.
        self.ready_by: str | None = None
        # The handshake the readiness wait started (``initialize``/``auto``), if any.
        self._handshake: _Handshake | None = None
        self._stderr = stderr
        self._stderr_lines = stderr_lines
        self._stdout_drain = stdout_drain
        self._stdio: StdioClient | None = None
        self._http: HttpClient | None = None
        if transport == "stdio":
            assert popen.stdin is not None
            assert popen.stdout is not None
            self._stdio = StdioClient(popen.stdin, popen.stdout, stderr_tail=self.stderr_tail)
        self._stop_result: StopResult | None = None

    def __repr__(self) -> str:
        return f"<ServerProcess pid={self.pid} transport={self.transport} {self.command!r}>"

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- what the server registered -------------------------------------------------

    @property
    def record(self) -> ProcessRecord:
        """The server's record: as read when it became ready, else read now."""
        assert self.registered, "the server has not registered (see .registered)"
        assert self._record is not None
        return self._record

    @property
    def registered(self) -> bool:
        """Whether the server wrote a valid process record (seen while starting or since)."""
        if self._record is None:
            try:
                self._record = self._read_record()
            except RecordError:
                return False
        return self._record is not None

    @property
    def url(self) -> str | None:
        """``http://HOST:PORT/PATH`` (HTTP), or None (stdio).

        From the record when there is one, else from the address and path the server
        was handed. A server listening on every interface (``0.0.0.0``, ``::``) is
        reached on loopback.
        """
        if self.transport != "http":
            return None
        record = self._record
        bind = (record.bind if record is not None else None) or self._bind_arg
        path = (record.http_path if record is not None else None) or self._http_path or "/mcp"
        if bind is not None:
            host, _, port = bind.rpartition(":")
            host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)
            bind = f"{host}:{port}"
        return f"http://{bind}{path}"

    def _read_record(self) -> ProcessRecord | None:
        """The record if it exists; :class:`RecordError` if it exists but is not valid."""
        try:
            data = self.record_path.read_bytes()
        except FileNotFoundError:
            return None
        record = ProcessRecord.from_json_bytes(data)
        if record.pid != self.pid:
            raise RecordError(f"record names pid {record.pid}, not {self.pid}")
        return record

    # --- MCP --------------------------------------------------------------------------

    @property
    def client(self) -> McpClient:
        """The MCP client for this server (stdio pipes or a Streamable HTTP session)."""
        if self._stdio is not None:
            return self._stdio
        url = self.url
        assert url is not None
        if self._http is not None and self._http.url != url and self._handshake is None:
            # Rule: a client made before the record appeared may aim at the default path;
            # once the record names the server's own, talk there (no session was opened).
            self._http.close()
            self._http = None
        if self._http is None:
            self._http = HttpClient(url, stderr_tail=self.stderr_tail)
        return self._http

    def initialize(
        self, protocol_version: str = DEFAULT_PROTOCOL_VERSION, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Send ``initialize`` then ``notifications/initialized``; return the result.

        When the readiness wait already ran the handshake with this protocol version
        (``ready="initialize"`` or ``"auto"``), its result is returned instead of a
        second ``initialize``; an in-flight one is waited for.
        """
        handshake = self._handshake
        if handshake is not None and handshake.protocol_version == protocol_version:
            self._handshake = None  # a later call starts a fresh handshake
            return handshake.result(timeout)
        return self.client.initialize(protocol_version, timeout)

    @property
    def initialized(self) -> dict[str, Any] | None:
        """The ``initialize`` result the readiness wait obtained, if it ran the handshake."""
        handshake = self._handshake
        return handshake.done_result() if handshake is not None else None

    def request(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        """Send a request and return its result; :class:`McpError` on a JSON-RPC error."""
        return self.client.request(method, params, timeout)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification."""
        self.client.notify(method, params)

    def list_tools(self) -> list[dict[str, Any]]:
        """The server's tools (``tools/list``)."""
        return self.client.list_tools()

    def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a tool; return its result object."""
        return self.client.call_tool(name, arguments)

    # --- the process ------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """The exit status once the server exited (and was reaped), else None."""
        return self._popen.poll()

    def stderr_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines the server wrote to stderr."""
        return self._stderr_lines.text(lines)

    @property
    def pinned(self) -> PinnedProcess | None:
        """The server process, pinned by PID and create time; None once it exited."""
        # Rule: once reaped, the PID may name another process: an exited server is none.
        return None if self._popen.poll() is not None else self._pinned

    def child_pids(self) -> list[int]:
        """PIDs of the server's live direct children."""
        return [child.pid for child in self._children(recursive=False)]

    def _children(self, *, recursive: bool) -> list[PinnedProcess]:
        # Rule: once reaped, the PID may name another process: an exited server has none.
        if self._popen.poll() is not None:
            return []
        return self._pinned.children(recursive=recursive)

    def close_stdin(self) -> None:
        """Close the server's stdin (stdio: the contract's first shutdown rung)."""
        if self._stdio is not None:
            self._stdio.close_stdin()
        elif self._popen.stdin is not None:
            self._popen.stdin.close()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the server to exit and reap it; None if it still runs after ``timeout``."""
        if timeout is not None and self._popen.returncode is None:
            _wait_exit_event(self._popen.pid, timeout)
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, signum: int) -> bool:
        """Send ``signum`` to the exact server PID; False (no-op) when it already exited."""
        # Rule: signal only our own unreaped child, and only through its pinned create time.
        if self._popen.poll() is not None:
            return False
        return self._pinned.send_signal(signum)

    def is_gone(self) -> bool:
        """Whether the server exited (and was reaped: it is our child, we reap our own)."""
        return self._popen.poll() is not None

    def _ladder(self, timeout: float) -> Rung:
        first: Callable[[], object] | None = None
        if self.transport == "stdio":
            first = self.close_stdin
        elif self._http is not None and not self.is_gone():
            self._http.close()  # DELETE ends the MCP session first
        (rung,) = stop_ladder([self], timeout, first=first, kill_timeout=timeout)
        return _RUNGS[rung]

    def stop(self, timeout: float = 10.0) -> StopResult:
        """Stop the server by the contract's ladder; report how. Idempotent.

        stdio: close stdin and wait; HTTP: DELETE the session, SIGTERM and wait; then
        SIGTERM (stdio) and wait, then SIGKILL. Workers that survive are reported,
        never killed here. Every pipe, thread and socket is closed afterwards.
        """
        if self._stop_result is not None:
            return self._stop_result
        started = time.monotonic()
        workers = self._children(recursive=True)  # snapshot (with create times) before the ladder
        try:
            rung = self._ladder(timeout)
        finally:
            self._close_io()
        survivors = wait_gone(workers, _WORKER_GRACE) if workers else []
        self._stop_result = StopResult(
            rung=rung,
            returncode=self._popen.returncode,
            record_removed=not self.record_path.exists(),
            surviving_workers=tuple(proc.pid for proc in survivors),
            elapsed=time.monotonic() - started,
        )
        return self._stop_result

    def _close_io(self) -> None:
        if self._popen.returncode is None:
            # Only reached when the ladder itself failed: do not leave a child behind.
            self.kill()
            self._popen.wait()
        if self._http is not None:
            self._http.close()
        if self._stdio is not None:
            self._stdio.close()
        elif self._popen.stdin is not None:
            self._popen.stdin.close()
        if self._stdout_drain is not None:
            self._stdout_drain.close()
        self._stderr.close()


def _start(
    argv: Sequence[str],
    transport: Transport,
    registry: Path,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
    bind_arg: str | None,
    http_path: str | None = None,
) -> ServerProcess:
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
    )
    assert popen.stderr is not None
    assert popen.stdout is not None
    lines = _LineTail()
    name = f"leanhost-stderr-{popen.pid}"
    stderr = PipeLineReader(popen.stderr, lines.add, name=name, max_line=_MAX_TAIL_LINE)
    drain = None
    if transport == "http":
        name = f"leanhost-stdout-{popen.pid}"
        drain = PipeLineReader(popen.stdout, lines.add, name=name, max_line=_MAX_TAIL_LINE)
    return ServerProcess(
        popen,
        command=argv,
        transport=transport,
        registry=registry,
        stderr=stderr,
        stderr_lines=lines,
        stdout_drain=drain,
        bind_arg=bind_arg,
        http_path=http_path,
    )


def _wait_ready(server: ServerProcess, ready_timeout: float) -> None:
    """Poll until the record parses (and, for HTTP, the port accepts); raise on failure."""
    backoff = Backoff(ready_timeout)
    while True:
        status = server.returncode
        if status is not None:
            raise ServerStartError(f"exited with status {status} before it was ready", "exited")
        record = _read_settled_record(server)
        if record is not None and (server.transport != "http" or _http_ready(server, record)):
            server._record = record
            return
        if backoff.expired():
            what = "not registered" if record is None else "registered but its port refused"
            raise ServerStartError(f"{what} within {ready_timeout:g} s", "timeout")
        backoff.sleep()


def _read_settled_record(server: ServerProcess) -> ProcessRecord | None:
    """The record, None while absent; :class:`ServerStartError` if it stays invalid.

    A record that does not parse is read once more after 20 ms: a server that writes
    its record in place (not atomically) is not condemned for a half-written file.
    """
    try:
        return server._read_record()
    except RecordError:
        time.sleep(0.02)
    try:
        return server._read_record()
    except RecordError as exc:
        raise ServerStartError(f"record present but corrupt: {exc}", "corrupt") from exc


def _http_ready(server: ServerProcess, record: ProcessRecord) -> bool:
    bind = record.bind or server._bind_arg
    return bind is not None and _accepts(bind)


class _Handshake:
    """One MCP ``initialize`` handshake run in a thread, so a readiness wait can poll it.

    stdio: the request sits in the pipe until the server reads it, while the wait keeps
    watching for a record and an early exit. HTTP runs it in the caller's thread
    (``run``), once the port accepts.
    """

    def __init__(self, client: McpClient, protocol_version: str, timeout: float) -> None:
        self.client = client
        self.protocol_version = protocol_version
        self.timeout = timeout
        self.done = threading.Event()
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None

    def start(self) -> _Handshake:
        threading.Thread(target=self.run, name="leanhost-ready-initialize", daemon=True).start()
        return self

    def run(self) -> None:
        try:
            self._result = self.client.initialize(self.protocol_version, self.timeout)
        except (McpError, McpTransportError) as exc:
            self._error = exc
        finally:
            self.done.set()

    @property
    def answered(self) -> bool:
        return self.done.is_set() and self._result is not None

    @property
    def error(self) -> BaseException | None:
        return self._error if self.done.is_set() else None

    def done_result(self) -> dict[str, Any] | None:
        return self._result if self.done.is_set() else None

    def result(self, timeout: float) -> dict[str, Any]:
        if not self.done.wait(timeout):
            raise McpTransportError(f"no reply to initialize within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _ready_rung(ready: Ready) -> str:
    """The rung a readiness wait waits for, as an error message names it."""
    if callable(ready):
        return f"ready={getattr(ready, '__name__', 'callable')}()"
    return {
        "record": "ready=record: a process record",
        "initialize": "ready=initialize: an answer to MCP initialize",
        "port": "ready=port: the port accepting a connection",
        "auto": "ready=auto: a process record or an answer to MCP initialize",
    }[ready]


def _await_ready(server: ServerProcess, ready: Ready, ready_timeout: float) -> None:
    """Poll until ``ready`` holds; :class:`ServerStartError` (naming the rung) if it never does.

    ``record`` is today's wait (:func:`_wait_ready`). ``initialize`` runs the MCP
    handshake, so the handle is ready for ``list_tools()``; ``auto`` takes the record
    or the answer, whichever comes first (the handshake keeps going when the record
    won, and :meth:`ServerProcess.initialize` returns its result).
    """
    rung = _ready_rung(ready)
    if ready == "record":
        try:
            _wait_ready(server, ready_timeout)
        except ServerStartError as exc:
            raise ServerStartError(f"{exc} (waiting for {rung})", exc.reason) from None
        server.ready_by = "record"
        return
    backoff = Backoff(ready_timeout)
    last_error: BaseException | None = None
    while True:
        status = server.returncode
        if status is not None:
            raise ServerStartError(
                f"exited with status {status} before it was ready (waiting for {rung})", "exited"
            )
        if ready == "auto":
            record = _read_settled_record(server)
            if record is not None and (server.transport != "http" or _http_ready(server, record)):
                server._record = record
                server.ready_by = "record"
                return
        if callable(ready):
            if ready(server):
                server.ready_by = "callable"
                return
        elif ready == "port":
            if _own_port_accepts(server):
                server.ready_by = "port"
                return
        else:  # "initialize", or "auto" before any record
            handshake = _step_handshake(server, backoff)
            if handshake is not None and handshake.answered:
                server.ready_by = "initialize"
                return
            if handshake is not None and handshake.error is not None:
                last_error = handshake.error
                if server.transport == "stdio" and isinstance(last_error, McpError):
                    # Rule: an error answer on stdio is final (HTTP tries again).
                    raise ServerStartError(
                        f"answered initialize with an error: {last_error} (waiting for {rung})",
                        "refused",
                    )
        if backoff.expired():
            why = f": last initialize attempt: {last_error}" if last_error is not None else ""
            raise ServerStartError(
                f"not ready within {ready_timeout:g} s (waiting for {rung}){why}", "timeout"
            )
        backoff.sleep()


def _step_handshake(server: ServerProcess, backoff: Backoff) -> _Handshake | None:
    """Advance the readiness handshake one step; return it (None: not started yet).

    stdio: started once, in a thread. HTTP: tried (in this thread) each time the port
    accepts; a failed try, such as a 404 before the routes exist, is tried again.
    """
    remaining = max(0.05, backoff.deadline - time.monotonic())
    if server.transport == "stdio":
        if server._handshake is None:
            server._handshake = _Handshake(
                server.client, DEFAULT_PROTOCOL_VERSION, remaining
            ).start()
        return server._handshake
    if not _own_port_accepts(server):
        return None
    # A short try: an exit or a record still gets noticed soon after.
    handshake = _Handshake(server.client, DEFAULT_PROTOCOL_VERSION, min(remaining, 2.0))
    handshake.run()
    if handshake.answered:
        server._handshake = handshake
    return handshake


def _own_port_accepts(server: ServerProcess) -> bool:
    """Whether the server's own process tree listens on its port and the port accepts.

    Rule: a port that someone else took before the server bound it is not the server.
    """
    from pytest_leanhost.core.listening import listening_addresses

    if server._bind_arg is None:
        return False
    _host, port = _split_bind(server._bind_arg)
    ours = any(bound == port for _pid, _ip, bound in listening_addresses(server.pinned))
    return ours and _accepts(server._bind_arg)


def _is_template(arg: str) -> bool:
    # Rule: only a word (no whitespace) is a template: a script passed with -c is not.
    return ("{host}" in arg or "{port}" in arg) and not any(ch.isspace() for ch in arg)


def _substitute(args: Sequence[str], host: str, port: int) -> tuple[list[str], bool]:
    """Replace ``{host}`` and ``{port}`` in each word argument; say whether any was there."""
    out = [
        arg.replace("{host}", host).replace("{port}", str(port)) if _is_template(arg) else arg
        for arg in args
    ]
    return out, any(_is_template(arg) for arg in args)


def spawn_server(
    command: Sequence[str],
    *,
    transport: Transport = "stdio",
    registry: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    bind: str | None = None,
    http_path: str | None = None,
    ready_timeout: float = 30.0,
    ready: Ready = "auto",
    port_env: str | None = None,
) -> ServerProcess:
    """Start ``command`` as a child server and return once it is ready.

    ``ready``: ``"record"`` (its process record), ``"initialize"`` (it answered MCP
    ``initialize``; ``notifications/initialized`` follows), ``"port"`` (HTTP: the port
    accepts), ``"auto"`` (record or answered ``initialize``, whichever first), or a
    predicate ``(ServerProcess) -> bool`` that is polled.

    The child's environment is ``os.environ`` + ``env`` + the registry variable.
    HTTP hands the server a free loopback port (or ``bind``): as ``port_env`` in its
    environment, through ``{host}``/``{port}`` placeholders in ``command``, or else by
    appending ``--bind HOST:PORT`` (and ``--http-path`` when given). ``http_path``
    (default ``/mcp``) makes up :attr:`ServerProcess.url` with the address. A chosen
    port taken before the server bound it is retried with a fresh one. Raises
    :class:`ServerStartError` (after stopping and reaping the child) when it exits
    first, is not ready within ``ready_timeout`` seconds, or writes a corrupt record.
    """
    if transport not in ("stdio", "http"):
        raise ValueError(f"transport must be 'stdio' or 'http', not {transport!r}")
    if not callable(ready) and ready not in READY_MODES:
        raise ValueError(
            f"ready must be one of {', '.join(READY_MODES)} or a callable, not {ready!r}"
        )
    if ready == "port" and transport != "http":
        raise ValueError("ready='port' needs transport='http'")
    registry_path = Path(registry)
    base_env = {**os.environ, **(env or {}), REGISTRY_ENV: os.fspath(registry_path)}
    attempts = 1 if transport == "stdio" or bind is not None else _PORT_RETRIES
    for attempt in range(attempts):
        argv = list(command)
        child_env = dict(base_env)
        port = None
        bind_arg = None
        if transport == "http":
            if bind is None:
                port = _free_loopback_port()
            bind_arg = bind if bind is not None else f"127.0.0.1:{port}"
            host, bind_port = _split_bind(bind_arg)
            argv, placed = _substitute(argv, host, bind_port)
            if port_env is not None:
                child_env[port_env] = str(bind_port)
            # Rule: a server told its port another way gets no --bind of ours.
            if not placed and port_env is None:
                argv += ["--bind", bind_arg]
                if http_path is not None:
                    argv += ["--http-path", http_path]
        server = _start(argv, transport, registry_path, child_env, cwd, bind_arg, http_path)
        try:
            _await_ready(server, ready, ready_timeout)
            return server
        except ServerStartError as exc:
            server.stop(_START_FAILURE_GRACE)
            # Rule: retry only when the server died and our chosen port is now taken.
            if (
                port is not None
                and exc.reason == "exited"
                and attempt + 1 < attempts
                and _port_taken(port)
            ):
                continue
            raise ServerStartError(_describe_failure(server, exc), exc.reason) from None
        except BaseException:
            server.stop(_START_FAILURE_GRACE)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _describe_failure(server: ServerProcess, exc: ServerStartError) -> str:
    tail = server.stderr_tail(20)
    message = (
        f"server {list(server.command)!r} (pid {server.pid}, registry {server.registry}) {exc}"
    )
    return f"{message}\n--- server stderr (last lines) ---\n{tail}" if tail else message
