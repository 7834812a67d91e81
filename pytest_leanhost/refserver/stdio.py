"""The stdio transport: newline-delimited JSON-RPC on stdin and stdout.

stdout carries protocol messages only, one compact JSON object per line, each
written whole under a lock; diagnostics go to stderr. stdin is read from the
raw file descriptor by one daemon thread, which answers messages in order, so
at stdin EOF every earlier request has been answered.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Iterator

from pytest_leanhost.refserver.lifecycle import Stopper
from pytest_leanhost.refserver.protocol import (
    JsonObject,
    McpServer,
    RpcError,
    Session,
    decode,
    encode,
    error_response,
)

__all__ = ["LineOutput", "read_lines", "start_stdio"]


class LineOutput:
    """Writes whole lines to a file descriptor; after :meth:`close` nothing more is written."""

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._closed = False

    def send(self, message: JsonObject) -> bool:
        """Write one message as a line; False when the reader is gone (a broken pipe)."""
        data = memoryview(encode(message) + b"\n")
        with self._lock:
            if self._closed:
                return True
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except (BrokenPipeError, ConnectionResetError):
                return False
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Stop writing; waits (bounded) for a line being written, so no half line is left."""
        acquired = self._lock.acquire(timeout=timeout)
        self._closed = True
        if acquired:
            self._lock.release()


def read_lines(fd: int = 0) -> Iterator[bytes]:
    """Yield each line read from ``fd`` (without its newline) until EOF, unterminated tail too."""
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # a closed or invalid stdin counts as EOF
            chunk = b""
        if not chunk:
            if pending:
                yield pending
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines


def start_stdio(
    server: McpServer, stopper: Stopper, output: LineOutput, *, ignore_eof: bool = False
) -> threading.Thread:
    """Start the daemon thread that serves stdin; it requests a stop at EOF (unless ignored)."""
    thread = threading.Thread(
        target=_serve, args=(server, stopper, output, ignore_eof), name="stdio", daemon=True
    )
    thread.start()
    return thread


def _serve(server: McpServer, stopper: Stopper, output: LineOutput, ignore_eof: bool) -> None:
    session = Session()
    try:
        for line in read_lines():
            if stopper.stopping.is_set():
                return
            if not line.strip():
                continue  # blank lines are tolerated, not answered
            response = _answer(server, session, line)
            if response is not None and not output.send(response):
                stopper.request("stdout closed")
                return
    except Exception:
        sys.stderr.write(f"refserver: stdio failed:\n{traceback.format_exc()}")
        stopper.request("stdio failed", exit_code=1)
        return
    if ignore_eof:
        sys.stderr.write("refserver: stdin EOF ignored (--fault ignore-stdin-eof)\n")
    else:
        stopper.request("stdin EOF")


def _answer(server: McpServer, session: Session, line: bytes) -> JsonObject | None:
    try:
        message = decode(line)
    except RpcError as error:
        return error_response(error)
    return server.handle(message, session)
