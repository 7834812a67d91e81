"""Leaks that got out of the run's sight, one way each, for the documentation's examples.

Each test starts a process and forgets it; the plugin finds each at session end
(by lineage when the marker is gone) and says how it escaped.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys

from mcp.client.stdio import get_default_environment

from pytest_leanhost.plugin.fixtures import reference_server_command

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]
HELD: list[subprocess.Popen[bytes]] = []
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "docs", "version": "0"},
    },
}


@atexit.register
def _release_held() -> None:
    """After the leak check, close what the tests held (the plugin stopped the processes)."""
    for held in HELD:
        with contextlib.suppress(Exception):
            held.__exit__(None, None, None)


def test_server_launched_like_an_sdk_client() -> None:
    """The environment the MCP SDKs give a stdio server: no registry variable, no marker."""
    env = get_default_environment()  # the official Python SDK's own choice of variables
    server = subprocess.Popen(
        reference_server_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    HELD.append(server)
    assert server.stdin is not None
    assert server.stdout is not None
    server.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
    server.stdin.flush()
    assert json.loads(server.stdout.readline())["id"] == 1  # it answered, as to an SDK client


def test_child_in_a_new_session() -> None:
    """``setsid``: a new session, so a new process group too."""
    HELD.append(subprocess.Popen(SLEEPER, start_new_session=True))


def test_child_in_a_new_process_group() -> None:
    """``setpgid``: a process group of its own, as shells do for a background job."""
    HELD.append(subprocess.Popen(SLEEPER, preexec_fn=os.setpgrp))  # noqa: PLW1509
