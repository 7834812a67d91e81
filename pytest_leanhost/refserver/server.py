"""The reference server's start-up and shutdown, in the order the lifecycle contract asks.

Validate the configuration (exit 2, one stderr line, no record), install the
signal handlers, bind (HTTP), write the record, serve until a stop is
requested, then stop the workers and remove the record on every path, a crash
included (exit 1).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pytest_leanhost.record import RecordError, RegistryError, ServerProcessRegistration
from pytest_leanhost.refserver.cli import Config, ConfigError, parse_config
from pytest_leanhost.refserver.lifecycle import Stopper, register, release
from pytest_leanhost.refserver.protocol import McpServer
from pytest_leanhost.refserver.stdio import LineOutput, start_stdio
from pytest_leanhost.refserver.tools import ToolBox
from pytest_leanhost.refserver.workers import Workers

if TYPE_CHECKING:
    from pytest_leanhost.refserver.streamable_http import HttpTransport

__all__ = ["main"]


def _say(text: str) -> None:
    sys.stderr.write(f"refserver: {text}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; return its exit status (0 normal, 2 bad configuration, 1 failure)."""
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as error:
        _say(f"error: {error}")
        return 2
    parent_at_start = os.getppid()
    stopper = Stopper()
    stopper.install_signal_handlers(ignore_sigterm=config.has_fault("ignore-sigterm"))
    workers = Workers(orphan=config.has_fault("orphan-worker"))
    mcp = McpServer(ToolBox(workers, stopper.stopping))
    transport: HttpTransport | None = None
    if config.bind is not None:
        from pytest_leanhost.refserver.streamable_http import HttpTransport

        try:
            transport = HttpTransport(config, mcp, stopper)
        except OSError as exc:
            _say(f"error: cannot bind {config.bind.host} port {config.bind.port}: {exc}")
            return 1
    try:
        registration = register(config, None if transport is None else transport.address)
    except (RegistryError, RecordError, OSError) as exc:
        if transport is not None:
            transport.close()
        _say(f"error: cannot write the process record: {exc}")
        return 2 if isinstance(exc, RegistryError) else 1
    return _serve(config, stopper, mcp, workers, registration, transport, parent_at_start)


def _serve(
    config: Config,
    stopper: Stopper,
    mcp: McpServer,
    workers: Workers,
    registration: ServerProcessRegistration,
    transport: HttpTransport | None,
    parent_at_start: int,
) -> int:
    # Whatever happens in here, the workers are stopped and the record removed (rule 2 and 6).
    try:
        if transport is None:
            sys.stdout = sys.stderr  # stdout carries protocol messages only
            output = LineOutput()
            start_stdio(mcp, stopper, output, ignore_eof=config.has_fault("ignore-stdin-eof"))
            watch = None if config.has_fault("ignore-parent-loss") else parent_at_start
            stopper.wait(watch, config.parent_poll_seconds)
            output.close()
        else:
            transport.start()
            _say(f"listening on http://{transport.address}{config.http_path}")
            stopper.wait()
            transport.shutdown()
        exit_code = stopper.exit_code
    except BaseException:
        stopper.stopping.set()
        _say(f"unexpected failure:\n{traceback.format_exc().rstrip()}")
        exit_code = 1
    finally:
        workers.stop()
        release(registration, config)
    return exit_code
