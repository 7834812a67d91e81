"""Servers nobody here wrote: ``@modelcontextprotocol/server-everything`` and a plain SDK server.

server-everything is installed by ``.ci/run`` (``npm ci`` in ``tests/node``). When node
or the package is missing, its tests skip with one reason, except under ``CI=true``,
where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVERYTHING_VERSION = "2026.8.31"
EVERYTHING_JS = (
    ROOT / "tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
)
PLAIN_SDK_SERVER = [sys.executable, str(ROOT / "examples/any_server/plain_sdk_server.py")]


def everything_command() -> list[str]:
    """``node .../server-everything/dist/index.js``; skip (or, under CI, fail) if missing."""
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed"
    elif not EVERYTHING_JS.is_file():
        missing = "server-everything is not installed (run: npm ci --prefix tests/node)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}", pytrace=False)
        pytest.skip(f"server-everything tests need node and npm ci: {missing}")
    assert node is not None
    return [node, str(EVERYTHING_JS)]
