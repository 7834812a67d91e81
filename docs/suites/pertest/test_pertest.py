"""Per-test verdicts: one test forgets a child, the others are clean."""

from __future__ import annotations

import subprocess
import sys

from pytest_leanhost.plugin.fixtures import ServerFactory

FORGOTTEN: list[subprocess.Popen[bytes]] = []


def test_calls_a_tool(leanhost_server: ServerFactory) -> None:
    server = leanhost_server()
    server.initialize()
    assert server.call_tool("echo", {"text": "hi"})["content"][0]["text"] == "hi"


def test_forgets_a_child() -> None:
    FORGOTTEN.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]))


def test_after_it() -> None:
    assert True
