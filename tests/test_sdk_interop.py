"""Interop with the official MCP Python SDK, both ways, over stdio and Streamable HTTP.

Our client drives the SDK example server (examples/sdk_server/server.py, which
registers itself), and the SDK's own client drives the reference server: it lists
and calls tools and closes, and the reference server exits on that close as the
contract says (stdio: on stdin EOF, well inside the SDK's 2 s grace before SIGTERM).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from pytest_leanhost.client.mcp import McpError
from pytest_leanhost.core.processes import PinnedProcess, wait_gone
from pytest_leanhost.record import REGISTRY_ENV, ProcessRecord
from pytest_leanhost.stopping import stop_ladder
from tests.children import Started, poll

SDK_SERVER = [
    sys.executable,
    str(Path(__file__).parents[1] / "examples" / "sdk_server" / "server.py"),
]
SDK_STDIO_GRACE = 2.0  # the SDK's stdio client waits this long after closing stdin


# --- our client, the SDK's server ---------------------------------------------------


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_our_client_drives_the_sdk_server(started: Started, transport: str) -> None:
    server = started.spawn(SDK_SERVER, transport=transport)
    assert server.record.pid == server.pid
    assert server.record.transport == transport
    result = server.initialize()
    assert result["protocolVersion"] == "2025-06-18"
    assert result["serverInfo"]["name"] == "leanhost-sdk-example"
    assert {tool["name"] for tool in server.list_tools()} == {"echo", "add"}
    assert server.call_tool("echo", {"text": "hi"})["content"][0]["text"] == "hi"
    assert server.call_tool("add", {"a": 2, "b": 3})["structuredContent"] == {"result": 5}
    server.notify("notifications/progress", {"progressToken": "t", "progress": 1})
    assert server.request("ping") == {}
    with pytest.raises(McpError) as caught:
        server.request("no/such/method")
    assert caught.value.code == -32601
    stop = server.stop()
    expected_rung = "stdin_eof" if transport == "stdio" else "sigterm"
    assert (stop.rung, stop.returncode, stop.record_removed) == (expected_rung, 0, True)


# --- the SDK's client, the reference server -----------------------------------------


async def _use(client: Client) -> tuple[set[str], Any]:
    tools = await client.list_tools()
    called = await client.call_tool("echo", {"text": "from the SDK"})
    return {tool.name for tool in tools.tools}, called


def test_sdk_stdio_client_drives_the_refserver_which_exits_on_close(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pytest_leanhost.refserver"],
        env={REGISTRY_ENV: str(registry)},
    )
    servers: list[psutil.Process] = []

    async def main() -> float:
        with (tmp_path / "stderr.txt").open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                # the one record in this registry is the server the SDK launched
                assert poll(lambda: len(list(registry.glob("*.json"))) == 1)
                (path,) = registry.glob("*.json")
                servers.append(psutil.Process(ProcessRecord.from_json_bytes(path.read_bytes()).pid))
                names, called = await _use(client)
                assert names >= {"echo", "sleep", "spawn_worker"}
                assert called.content[0].text == "from the SDK"
                closing = time.monotonic()
        return time.monotonic() - closing

    try:
        closed_in = anyio.run(main)
        assert closed_in < SDK_STDIO_GRACE  # it left on stdin EOF; no SIGTERM was needed
        assert wait_gone(servers, 2) == []
        assert list(registry.glob("*.json")) == []
    finally:
        for proc in servers:
            stop_ladder([PinnedProcess.of(proc)], 2.0)


def test_sdk_http_client_drives_the_refserver(started: Started) -> None:
    server = started.spawn([sys.executable, "-m", "pytest_leanhost.refserver"], transport="http")
    url = server.url
    assert url is not None

    async def main() -> tuple[set[str], Any]:
        async with Client(url) as client:
            return await _use(client)

    names, called = anyio.run(main)
    assert names >= {"echo", "sleep", "spawn_worker"}
    assert called.content[0].text == "from the SDK"
    assert server.returncode is None  # an HTTP server outlives its clients
    stop = server.stop()
    assert (stop.rung, stop.returncode, stop.record_removed) == ("sigterm", 0, True)
