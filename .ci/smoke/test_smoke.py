"""A user's first suite, run from the built wheel outside the repository (``.ci/run``).

``.ci/run wheel-smoke`` copies this file into an empty temporary folder and runs it
with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 pytest -p leanhost`` in a virtual environment
holding only the wheel and its dependencies, with HOME and XDG_CACHE_HOME pointed
at temporary folders.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pytest_leanhost


def test_the_package_comes_from_the_wheel_not_a_checkout() -> None:
    origin = Path(pytest_leanhost.__file__).resolve()
    assert "site-packages" in origin.parts, origin
    assert (origin.parent / "py.typed").is_file()


def test_the_reference_server_echoes(leanhost_server: Callable[..., Any]) -> None:
    server = leanhost_server()
    server.initialize()
    assert server.call_tool("echo", {"text": "hi"})["content"][0]["text"] == "hi"


def test_each_test_gets_its_own_registry(leanhost_registry: Path) -> None:
    assert os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"] == str(leanhost_registry)
    assert leanhost_registry.is_dir()


def test_the_report_schema_is_package_data() -> None:
    resource = importlib.resources.files("pytest_leanhost") / "schemas" / "report.schema.json"
    schema = json.loads(resource.read_text(encoding="utf-8"))
    from pytest_leanhost.plugin.report import REPORT_SCHEMA_VERSION

    # The shipped schema describes the reports this very wheel writes.
    assert REPORT_SCHEMA_VERSION == 3
    assert max(schema["properties"]["schema_version"]["enum"]) == REPORT_SCHEMA_VERSION


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_both_transports(leanhost_server: Callable[..., Any], transport: str) -> None:
    server = leanhost_server(transport=transport)
    server.initialize()
    assert {tool["name"] for tool in server.list_tools()} >= {"echo"}
