"""Start and stop: the stop request, signals, the parent watch, and the process record.

Rules kept here. The kernel may deliver a signal to any thread, so a main
thread blocked in ``select`` is not always interrupted: the interpreter's own
C-level handler writes the signal number into a wake-up pipe
(``signal.set_wakeup_fd``) and the main thread decides from that byte, never
from when the Python-level handler happens to run. Handlers take no lock.
Only the main thread waits on the pipe; it tells the other threads through
``stopping``. The record is written after the configuration is valid and
removed on every normal shutdown, unless a fault says otherwise.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import threading
import types
from pathlib import Path

from pytest_leanhost.files import write_atomically
from pytest_leanhost.record import (
    ServerProcessRegistration,
    current_process_record,
    register_server_process,
    registry_dir,
)
from pytest_leanhost.refserver.cli import Config

__all__ = ["Stopper", "register", "release"]


class Stopper:
    """Collects the first reason to stop and wakes the main thread, from any thread or signal."""

    def __init__(self) -> None:
        # The pipe is never closed: a late signal must not write into a reused descriptor.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self.reason: str | None = None
        self.exit_code = 0
        self._stop_signals: frozenset[int] = frozenset()
        #: Set by the main thread once it has seen the stop; other threads wait on it.
        self.stopping = threading.Event()

    def request(self, reason: str, exit_code: int = 0) -> None:
        """Ask the server to stop; the first request wins. Safe in a signal handler."""
        if self.reason is None:
            self.reason = reason
            self.exit_code = exit_code
        # A full pipe means the main thread has a wake-up pending already.
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")

    def install_signal_handlers(self, *, ignore_sigterm: bool) -> None:
        """SIGTERM and SIGINT stop the server cleanly; ``ignore_sigterm`` makes SIGTERM a no-op.

        The ignoring handler is a Python function, not SIG_IGN, so workers (which
        exec a new program) do not inherit an ignored SIGTERM.
        """
        stopping = {signal.SIGINT} if ignore_sigterm else {signal.SIGINT, signal.SIGTERM}
        self._stop_signals = frozenset(int(signum) for signum in stopping)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, _ignore if ignore_sigterm else self._on_signal)

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        self.request(signal.Signals(signum).name)

    def wait(self, watch_parent: int | None = None, poll_seconds: float = 1.0) -> str:
        """Block until a stop is requested, or until ``watch_parent`` is no longer our parent.

        The parent (the PID that launched us, noted at start) is checked every
        ``poll_seconds``; None, or a parent of PID 1 or lower, means no watch (as
        lean-host-mcp). Returns the reason and sets :attr:`stopping`.
        """
        watch = watch_parent is not None and watch_parent > 1
        timeout = poll_seconds if watch else None
        while self.reason is None:
            readable, _, _ = select.select([self._wake_read], [], [], timeout)
            if readable:
                # Each byte is a signal number (the interpreter's wake-up write) or 0 (request).
                for signum in os.read(self._wake_read, 4096):
                    if signum in self._stop_signals:
                        self.request(signal.Signals(signum).name)
            if watch and os.getppid() != watch_parent:
                self.request(f"parent {watch_parent} is gone")
        self.stopping.set()
        return self.reason


def _ignore(signum: int, frame: types.FrameType | None) -> None:
    # The ignore-sigterm fault: say so on stderr (a raw write: no lock in a handler).
    with contextlib.suppress(OSError):
        os.write(2, b"refserver: ignoring SIGTERM (--fault ignore-sigterm)\n")


def register(config: Config, bind: str | None) -> ServerProcessRegistration:
    """Write this server's record (``bind`` is the address actually bound, None for stdio).

    With ``keep-record`` the record is not removed at interpreter exit either;
    with ``corrupt-record`` the file holds the first half of the real bytes.
    """
    http_path = None if bind is None else config.http_path
    if config.has_fault("corrupt-record"):
        registration = _register_corrupt(config.transport, bind, http_path)
    else:
        registration = register_server_process(config.transport, bind, http_path)
    if config.has_fault("keep-record"):
        atexit.unregister(registration.close)
    return registration


def release(registration: ServerProcessRegistration, config: Config) -> None:
    """Remove the record at shutdown, unless the ``keep-record`` fault keeps it."""
    if not config.has_fault("keep-record"):
        registration.close()


def _register_corrupt(
    transport: str, bind: str | None, http_path: str | None
) -> ServerProcessRegistration:
    # The same fields register_server_process writes; only the bytes on disk are cut in half,
    # and a valid record never exists, not even for a moment.
    directory = registry_dir()
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = current_process_record(transport, bind, http_path)
    data = record.to_json_bytes()
    path = Path(directory) / f"{record.pid}.json"
    write_atomically(path, data[: len(data) // 2])
    return ServerProcessRegistration(path, record)
