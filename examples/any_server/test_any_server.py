"""A short suite for an MCP server that writes no record, over stdio (and HTTP when it can)."""

from __future__ import annotations

import pytest

from pytest_leanhost.plugin.fixtures import ServerFactory


def test_lists_and_calls_its_tools(leanhost_server: ServerFactory, everything: bool) -> None:
    # Ready once it answered MCP initialize (ready="auto"): list_tools() works at once.
    server = leanhost_server("stdio") if everything else leanhost_server()
    names = [tool["name"] for tool in server.list_tools()]
    assert names
    if everything:
        assert server.call_tool("echo", {"message": "hi"})["content"][0]["text"] == "Echo: hi"
    else:
        assert server.call_tool("add", {"a": 1, "b": 2})["structuredContent"] == {"result": 3}
    # At teardown: stdin closed, exit 0 expected (rule 3), no worker left (rule 6).


def test_streamable_http_with_port_from_the_environment(
    leanhost_server: ServerFactory, everything: bool
) -> None:
    if not everything:
        pytest.skip("server-everything is not installed (npm ci --prefix tests/node)")
    # server-everything takes its port from PORT. It listens on every interface and has no
    # SIGTERM handler, so rule 5 is left out here: the suite runs green and stays honest.
    server = leanhost_server("streamableHttp", transport="http", port_env="PORT", rules="3,6")
    assert "echo" in [tool["name"] for tool in server.list_tools()]
