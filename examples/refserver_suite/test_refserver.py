"""A server test suite as a user writes it, here against the built-in reference server."""

from __future__ import annotations

import pytest

from pytest_leanhost.client.spawn import ServerProcess
from pytest_leanhost.plugin.fixtures import RegistryDoctor, ServerFactory


@pytest.fixture(params=["stdio", "http"])
def server(request: pytest.FixtureRequest, leanhost_server: ServerFactory) -> ServerProcess:
    """A started, initialized server over each transport; stopped and checked at teardown."""
    started: ServerProcess = leanhost_server(transport=request.param)
    started.initialize()
    return started


def test_lists_its_tools(server: ServerProcess) -> None:
    names = {tool["name"] for tool in server.list_tools()}
    assert {"echo", "sleep", "spawn_worker"} <= names


def test_echo_returns_its_text(server: ServerProcess) -> None:
    result = server.call_tool("echo", {"text": "héllo"})
    assert result["content"] == [{"type": "text", "text": "héllo"}]
    assert result["isError"] is False


def test_server_registered_with_its_transport(server: ServerProcess) -> None:
    assert server.record.pid == server.pid
    assert server.record.transport == server.transport
    if server.transport == "http":
        assert server.url is not None
        assert server.url.endswith("/mcp")


def test_workers_end_with_their_server(leanhost_server: ServerFactory) -> None:
    server = leanhost_server()
    server.initialize()
    worker = server.call_tool("spawn_worker", {})["structuredContent"]["pid"]
    assert worker in server.child_pids()
    result = server.stop()
    assert (result.rung, result.returncode, result.record_removed) == ("stdin_eof", 0, True)
    assert result.surviving_workers == ()


def test_the_registry_is_clean_after_a_stop(
    leanhost_server: ServerFactory, leanhost_doctor: RegistryDoctor
) -> None:
    server = leanhost_server()
    assert len(leanhost_doctor.inspect()) == 1
    server.stop()
    leanhost_doctor.assert_clean()
    assert leanhost_doctor.inspect() == []
