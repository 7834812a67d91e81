"""The plugin serves any server: here one built with the official MCP Python SDK."""

from __future__ import annotations

import pytest

from pytest_leanhost.plugin.fixtures import ServerFactory


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_sdk_server_tools(leanhost_server: ServerFactory, transport: str) -> None:
    server = leanhost_server(transport=transport)
    server.initialize()
    assert {tool["name"] for tool in server.list_tools()} >= {"echo", "add"}
    result = server.call_tool("add", {"a": 2, "b": 40})
    assert result["content"][0]["text"] == "42"
    assert server.record.transport == transport
