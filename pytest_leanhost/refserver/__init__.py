"""pytest-leanhost's reference MCP server, ``python -m pytest_leanhost.refserver``.

A real MCP server (stdio, or Streamable HTTP with ``--bind``) built on the
standard library and :mod:`pytest_leanhost.record`, keeping lean-host-mcp's
lifecycle contract; ``--fault NAME`` breaks one rule at a time so the plugin's
own tests can prove each leak is caught. Importing this package loads what a
stdio server needs to register (never pytest, psutil or the HTTP machinery),
so ``spawn -> record written`` costs little more than this import.
"""

from __future__ import annotations

from pytest_leanhost.refserver.cli import FAULTS, Config, ConfigError, parse_config
from pytest_leanhost.refserver.protocol import (
    LATEST_PROTOCOL_VERSION,
    SERVER_NAME,
    SUPPORTED_PROTOCOL_VERSIONS,
)
from pytest_leanhost.refserver.server import main

__all__ = [
    "FAULTS",
    "LATEST_PROTOCOL_VERSION",
    "SERVER_NAME",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "Config",
    "ConfigError",
    "main",
    "parse_config",
]
