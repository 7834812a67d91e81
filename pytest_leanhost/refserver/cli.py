"""The reference server's command line: options, environment variables and their validation.

Everything here is checked before the server registers, so a bad configuration
exits with status 2 and ONE line on stderr, and never leaves a record behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import NoReturn

__all__ = [
    "BIND_ENV",
    "DEFAULT_HTTP_PATH",
    "DEFAULT_PARENT_POLL_SECONDS",
    "FAULTS",
    "HTTP_PATH_ENV",
    "PARENT_POLL_ENV",
    "BindAddress",
    "Config",
    "ConfigError",
    "build_parser",
    "parse_bind",
    "parse_config",
    "validate_http_path",
]

#: Environment variables, as lean-host-mcp names them (the command line wins over them).
BIND_ENV = "LEAN_HOST_MCP_BIND"
HTTP_PATH_ENV = "LEAN_HOST_MCP_HTTP_PATH"
#: Seconds between parent checks in stdio mode (a float; tests shorten it).
PARENT_POLL_ENV = "LEANHOST_REFSERVER_PARENT_POLL"

DEFAULT_HTTP_PATH = "/mcp"
DEFAULT_PARENT_POLL_SECONDS = 1.0

#: Each fault breaks exactly one lifecycle rule; the text is what ``--help`` says about it.
FAULTS: dict[str, str] = {
    "ignore-stdin-eof": "keep running after stdin EOF (stdio); SIGTERM still stops it cleanly",
    "ignore-parent-loss": "do not exit when the launching parent dies (stdio)",
    "keep-record": "shut down normally (exit 0) but leave the record behind",
    "orphan-worker": "workers survive the server (reparented, no record; each ends after 120 s)",
    "ignore-sigterm": "ignore SIGTERM (SIGINT and stdin EOF still stop the server)",
    "corrupt-record": "write the first half of the record's bytes instead of a valid record",
    "bind-all": "listen on every interface (0.0.0.0 or ::, same port) instead of loopback (HTTP)",
}

# Characters a path may not hold: lean-host-mcp's rule, plus whitespace and control characters,
# which no HTTP request line can carry.
_FORBIDDEN_PATH_CHARACTERS = "?#*{}"


class ConfigError(Exception):
    """A configuration the server refuses; the message is the one line printed on stderr."""


@dataclasses.dataclass(frozen=True)
class BindAddress:
    """A validated loopback ``HOST:PORT``; ``host`` is what to bind (IPv6 without brackets)."""

    host: str
    port: int
    ipv6: bool


@dataclasses.dataclass(frozen=True)
class Config:
    """The server's validated configuration; ``bind`` None means stdio."""

    bind: BindAddress | None = None
    http_path: str = DEFAULT_HTTP_PATH
    json_response: bool = False
    faults: frozenset[str] = frozenset()
    parent_poll_seconds: float = DEFAULT_PARENT_POLL_SECONDS

    @property
    def transport(self) -> str:
        """``http`` with a bind address, else ``stdio`` (the record's transport field)."""
        return "stdio" if self.bind is None else "http"

    def has_fault(self, name: str) -> bool:
        """Whether ``--fault name`` was given."""
        return name in self.faults


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and an exception, not usage and an exit."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser; its ``--help`` documents every option, variable, fault and exit code."""
    faults = "\n".join(f"  {name:<20} {text}" for name, text in FAULTS.items())
    parser = _Parser(
        prog="python -m pytest_leanhost.refserver",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "pytest-leanhost's reference MCP server. It keeps lean-host-mcp's lifecycle\n"
            "contract: it writes its process record into the registry\n"
            "($LEAN_HOST_MCP_PROCESS_REGISTRY_DIR, else <user cache>/lean-host-mcp/processes)\n"
            "after validating its configuration, and removes it on every normal shutdown.\n"
            "Without --bind it speaks newline-delimited JSON-RPC on stdin/stdout and exits\n"
            "on stdin EOF, on SIGTERM/SIGINT and when its launching parent dies. With\n"
            "--bind it serves Streamable HTTP until SIGTERM or SIGINT.\n\n"
            "Tools: echo {text}, sleep {ms: 0..60000}, spawn_worker {} (a child process\n"
            "that the server owns and that exits with it)."
        ),
        epilog=(
            f"faults (--fault NAME, repeatable; each breaks exactly one rule):\n{faults}\n\n"
            "environment:\n"
            f"  {BIND_ENV:<33} default for --bind\n"
            f"  {HTTP_PATH_ENV:<33} default for --http-path\n"
            f"  {PARENT_POLL_ENV:<33} seconds between parent checks (stdio; default"
            f" {DEFAULT_PARENT_POLL_SECONDS:g})\n"
            "  LEAN_HOST_MCP_PROCESS_REGISTRY_DIR  the registry directory\n\n"
            "exit status: 0 on every normal shutdown, 2 on a configuration error\n"
            "(one line on stderr, no record written), 1 on an unexpected failure."
        ),
    )
    parser.add_argument(
        "--bind",
        metavar="HOST:PORT",
        help=(
            "serve Streamable HTTP on this loopback address (127.0.0.0/8, [::1] or localhost;"
            " port 0 picks a free port, the record holds the real one)"
        ),
    )
    parser.add_argument(
        "--http-path",
        metavar="PATH",
        help=(
            f"the HTTP endpoint path (default {DEFAULT_HTTP_PATH}; requires --bind; must start"
            " with / and hold no ?, #, *, { or })"
        ),
    )
    parser.add_argument(
        "--json-response",
        action="store_true",
        help="answer HTTP POSTs with application/json instead of text/event-stream (needs --bind)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=sorted(FAULTS),
        metavar="NAME",
        help="break one lifecycle rule on purpose (see below); repeatable",
    )
    return parser


def parse_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Parse and validate the command line and environment; raise :class:`ConfigError` if bad.

    ``--help`` prints the help and raises ``SystemExit(0)`` as argparse does.
    An empty environment variable counts as unset.
    """
    args = build_parser().parse_args(list(argv))
    bind_text, bind_source = _pick(args.bind, "--bind", environ, BIND_ENV)
    path_text, path_source = _pick(args.http_path, "--http-path", environ, HTTP_PATH_ENV)
    bind = None if bind_text is None else parse_bind(bind_text, bind_source)
    if bind is None and path_text is not None:
        raise ConfigError(f"{_shown(path_source, path_text)} requires --bind")
    if bind is None and args.json_response:
        raise ConfigError("--json-response requires --bind")
    http_path = DEFAULT_HTTP_PATH
    if path_text is not None:
        http_path = validate_http_path(path_text, path_source)
    return Config(
        bind=bind,
        http_path=http_path,
        json_response=bool(args.json_response),
        faults=frozenset(args.fault),
        parent_poll_seconds=_parent_poll(environ),
    )


def _pick(
    value: str | None, option: str, environ: Mapping[str, str], variable: str
) -> tuple[str | None, str]:
    # The option wins; an empty variable is treated as unset (as clap does).
    if value is not None:
        return value, option
    from_env = environ.get(variable) or None
    return from_env, f"{variable}="


def _shown(source: str, value: str) -> str:
    return f"{source}{value}" if source.endswith("=") else f"{source} {value}"


def parse_bind(text: str, source: str = "--bind") -> BindAddress:
    """Parse ``HOST:PORT`` and insist on a loopback host; raise :class:`ConfigError` if not.

    Loopback is 127.0.0.0/8, ``[::1]`` and ``localhost``; an IPv6 address needs brackets.
    No name other than ``localhost`` is resolved: any other host name is refused.
    """
    shown = _shown(source, text)
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text:
        raise ConfigError(f"{shown} is malformed: expected HOST:PORT, e.g. 127.0.0.1:8765")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ConfigError(f"{shown} is malformed: the port must be a number from 0 to 65535")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        return BindAddress(_loopback_ipv6(host[1:-1], shown), port, ipv6=True)
    if ":" in host or "[" in host or "]" in host:
        raise ConfigError(f"{shown} is malformed: write an IPv6 address in brackets, e.g. [::1]:0")
    if host.lower() == "localhost":
        return BindAddress("localhost", port, ipv6=False)
    import ipaddress  # only here: stdio start-up never pays for it

    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        if all(part.isdigit() for part in host.split(".")):
            raise ConfigError(f"{shown} is malformed: {host} is not an IPv4 address") from None
        raise ConfigError(
            f"{shown} is not a loopback address (host names other than localhost are refused)"
        ) from None
    if not address.is_loopback:
        raise ConfigError(f"{shown} is not a loopback address")
    return BindAddress(str(address), port, ipv6=False)


def _loopback_ipv6(host: str, shown: str) -> str:
    import ipaddress

    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        raise ConfigError(f"{shown} is malformed: {host} is not an IPv6 address") from None
    if address != ipaddress.IPv6Address("::1"):
        raise ConfigError(f"{shown} is not a loopback address")
    return "::1"


def validate_http_path(text: str, source: str = "--http-path") -> str:
    """Return ``text`` if it is a valid endpoint path, else raise :class:`ConfigError`.

    The path starts with ``/`` and holds no query, fragment, ``*``, ``{`` or ``}``
    (lean-host-mcp's rule), and no whitespace or control character.
    """
    shown = _shown(source, text)
    if not text.startswith("/"):
        raise ConfigError(f"{shown} must start with /")
    for character in text:
        if character in _FORBIDDEN_PATH_CHARACTERS:
            raise ConfigError(f"{shown} must not contain {character!r}")
        if character.isspace() or not character.isprintable():
            raise ConfigError(f"{shown} must not contain whitespace or control characters")
    return text


def _parent_poll(environ: Mapping[str, str]) -> float:
    text = environ.get(PARENT_POLL_ENV) or None
    if text is None:
        return DEFAULT_PARENT_POLL_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{PARENT_POLL_ENV}={text} must be a positive number of seconds")
    return seconds
