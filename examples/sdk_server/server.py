"""A small MCP server written with the official MCP Python SDK that registers itself.

It shows how a user's own server joins the process registry: it writes its record with
``register_server_process`` before serving and removes it on every normal shutdown.
No arguments: stdio. ``--bind HOST:PORT`` (loopback) selects Streamable HTTP, served by
uvicorn on a socket this script binds itself, so the record names the real port;
``--http-path PATH`` (default ``/mcp``) and ``--json-response`` tune it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import types

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer

from pytest_leanhost.record import register_server_process

server: MCPServer = MCPServer("leanhost-sdk-example", version="0.1.0")


@server.tool()
def echo(text: str) -> str:
    """Return ``text`` unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Return the sum of two integers."""
    return a + b


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdk_server", description=__doc__)
    parser.add_argument("--bind", help="HOST:PORT to serve Streamable HTTP on (loopback)")
    parser.add_argument("--http-path", default=None, help="HTTP path (default /mcp)")
    parser.add_argument("--json-response", action="store_true", help="answer application/json")
    args = parser.parse_args(argv)
    if args.http_path is not None and args.bind is None:
        parser.error("--http-path requires --bind")
    return args


def _bound_socket(bind: str) -> socket.socket:
    """Bind a listening socket on ``bind``; port 0 picks a free one."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    return sock


def _serve_http(bind: str, http_path: str, json_response: bool) -> None:
    sock = _bound_socket(bind)
    host, port = sock.getsockname()[:2]
    real_bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    app = server.streamable_http_app(
        streamable_http_path=http_path, json_response=json_response, host=host
    )
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    # Registered only once the socket is bound, so the record names the real port;
    # uvicorn turns SIGTERM and SIGINT into a graceful shutdown, and leaving the
    # ``with`` removes the record.
    with sock, register_server_process("http", real_bind, http_path):
        anyio.run(uvicorn.Server(config).serve, [sock])


def _exit_cleanly(signum: int, frame: types.FrameType | None) -> None:
    """SIGTERM and SIGINT end the server with status 0; unwinding removes the record."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Run the server until stdin EOF (stdio) or SIGTERM/SIGINT (HTTP); return 0."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    # Rule: every normal shutdown path unwinds through the registration's ``with``.
    # uvicorn captures SIGTERM/SIGINT while it serves and re-raises them after its
    # graceful shutdown; this handler turns that re-raise into a clean exit.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    if args.bind is None:
        with register_server_process("stdio") as registration:
            # The SDK's stdio loop reads stdin in a worker thread that a SystemExit cannot
            # interrupt: on a signal, remove the record and leave at once with status 0.
            def _stop_stdio(signum: int, frame: types.FrameType | None) -> None:
                registration.close()
                os._exit(0)

            signal.signal(signal.SIGTERM, _stop_stdio)
            signal.signal(signal.SIGINT, _stop_stdio)
            server.run()
    else:
        _serve_http(args.bind, args.http_path or "/mcp", args.json_response)
    return 0


if __name__ == "__main__":
    sys.exit(main())
