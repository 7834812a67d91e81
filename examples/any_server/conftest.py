"""Point pytest-leanhost at a server nobody here wrote: three lines in a conftest.

Here it is ``@modelcontextprotocol/server-everything`` when ``npm ci --prefix tests/node``
installed it, else the plain SDK server next to this file; either writes no process record.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_EVERYTHING = _HERE.parent.parent / (
    "tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
)
_NODE = shutil.which("node")


@pytest.fixture
def leanhost_server_command() -> list[str]:
    if _NODE is not None and _EVERYTHING.is_file():
        return [_NODE, str(_EVERYTHING)]
    return [sys.executable, str(_HERE / "plain_sdk_server.py")]


@pytest.fixture
def everything(leanhost_server_command: list[str]) -> bool:
    """Whether the suite drives server-everything (else the plain SDK server)."""
    return leanhost_server_command[0] == _NODE
