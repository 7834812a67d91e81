"""An MCP server on the official Python SDK that writes no process record (stdio).

Most MCP servers look like this: nothing in it knows about pytest-leanhost. The
fixtures start it with ``ready="initialize"`` (or the default ``auto``): it is ready
once it answers MCP ``initialize``.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer("leanhost-plain-sdk", version="0.1.0")


@server.tool()
def add(a: int, b: int) -> int:
    """Return the sum of two integers."""
    return a + b


if __name__ == "__main__":
    server.run()  # stdio until stdin EOF
