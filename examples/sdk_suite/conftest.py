"""Point the plugin's fixtures at a server written with the official MCP Python SDK."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SDK_SERVER = Path(__file__).resolve().parent.parent / "sdk_server" / "server.py"


@pytest.fixture
def leanhost_server_command() -> list[str]:
    """Our own server instead of the reference server: overriding this fixture is enough."""
    return [sys.executable, str(SDK_SERVER)]
