"""The reference server's command line: what it accepts, what it refuses, how fast it starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_leanhost.record import REGISTRY_ENV
from pytest_leanhost.refserver import FAULTS
from pytest_leanhost.refserver.cli import BindAddress, Config, ConfigError, parse_config
from tests.refserver_helpers import SERVER_COMMAND, registry_files


def run_server(
    args: list[str], registry: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the server to completion (stdin is /dev/null: a valid stdio server sees EOF at once)."""
    return subprocess.run(
        [*SERVER_COMMAND, *args],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, REGISTRY_ENV: str(registry), **(env or {})},
        timeout=30,
    )


BAD_CONFIGURATIONS = {
    "non-loopback IPv4": (["--bind", "0.0.0.0:80"], {}),
    "private address": (["--bind", "192.168.1.10:8765"], {}),
    "IPv6 any": (["--bind", "[::]:80"], {}),
    "IPv6 other": (["--bind", "[::2]:80"], {}),
    "host name": (["--bind", "example.com:80"], {}),
    "no port": (["--bind", "127.0.0.1"], {}),
    "empty host": (["--bind", ":80"], {}),
    "port too big": (["--bind", "127.0.0.1:65536"], {}),
    "port not a number": (["--bind", "127.0.0.1:http"], {}),
    "IPv6 without brackets": (["--bind", "::1:80"], {}),
    "bad IPv4": (["--bind", "127.0.0.256:80"], {}),
    "path without bind": (["--http-path", "/mcp"], {}),
    "json-response without bind": (["--json-response"], {}),
    "path without slash": (["--bind", "127.0.0.1:0", "--http-path", "mcp"], {}),
    "path with query": (["--bind", "127.0.0.1:0", "--http-path", "/mcp?x=1"], {}),
    "path with fragment": (["--bind", "127.0.0.1:0", "--http-path", "/mcp#x"], {}),
    "path with star": (["--bind", "127.0.0.1:0", "--http-path", "/mcp/*"], {}),
    "path with brace": (["--bind", "127.0.0.1:0", "--http-path", "/{id}"], {}),
    "path with closing brace": (["--bind", "127.0.0.1:0", "--http-path", "/id}"], {}),
    "path with space": (["--bind", "127.0.0.1:0", "--http-path", "/a b"], {}),
    "unknown fault": (["--fault", "no-such-fault"], {}),
    "unknown option": (["--no-such-option"], {}),
    "stray argument": (["serve"], {}),
    "bind from env": ([], {"LEAN_HOST_MCP_BIND": "10.0.0.1:80"}),
    "path from env": ([], {"LEAN_HOST_MCP_BIND": "127.0.0.1:0", "LEAN_HOST_MCP_HTTP_PATH": "x"}),
    "path from env without bind": ([], {"LEAN_HOST_MCP_HTTP_PATH": "/mcp"}),
    "parent poll not a number": ([], {"LEANHOST_REFSERVER_PARENT_POLL": "soon"}),
    "parent poll zero": ([], {"LEANHOST_REFSERVER_PARENT_POLL": "0"}),
    "parent poll infinite": ([], {"LEANHOST_REFSERVER_PARENT_POLL": "inf"}),
}


@pytest.mark.parametrize(
    ("args", "env"), list(BAD_CONFIGURATIONS.values()), ids=list(BAD_CONFIGURATIONS)
)
def test_bad_configuration_exits_2_with_one_stderr_line_and_no_record(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    result = run_server(args, registry, env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("refserver: error: ")
    assert registry_files(registry) == []


def test_refusal_names_the_option_and_the_value() -> None:
    with pytest.raises(ConfigError, match=r"^--bind 0\.0\.0\.0:80 is not a loopback address$"):
        parse_config(["--bind", "0.0.0.0:80"], {})
    with pytest.raises(ConfigError, match=r"^LEAN_HOST_MCP_BIND=0\.0\.0\.0:80 is not a loopback"):
        parse_config([], {"LEAN_HOST_MCP_BIND": "0.0.0.0:80"})
    with pytest.raises(ConfigError, match=r"^--http-path /a\?b must not contain '\?'$"):
        parse_config(["--bind", "127.0.0.1:0", "--http-path", "/a?b"], {})


def test_empty_registry_variable_is_a_configuration_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SERVER_COMMAND],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, REGISTRY_ENV: ""},
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_port_in_use_exits_non_zero_with_one_line_and_no_record(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server(["--bind", f"127.0.0.1:{port}"], registry)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"refserver: error: cannot bind 127.0.0.1 port {port}")
    assert registry_files(registry) == []


def test_no_arguments_means_stdio_with_defaults() -> None:
    assert parse_config([], {}) == Config()
    assert Config().transport == "stdio"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8765", BindAddress("127.0.0.1", 8765, ipv6=False)),
        ("127.4.5.6:0", BindAddress("127.4.5.6", 0, ipv6=False)),
        ("localhost:65535", BindAddress("localhost", 65535, ipv6=False)),
        ("LocalHost:1", BindAddress("localhost", 1, ipv6=False)),
        ("[::1]:8765", BindAddress("::1", 8765, ipv6=True)),
        ("[0:0:0:0:0:0:0:1]:9", BindAddress("::1", 9, ipv6=True)),
    ],
)
def test_loopback_binds_are_accepted(text: str, expected: BindAddress) -> None:
    config = parse_config(["--bind", text], {})
    assert config.bind == expected
    assert config.transport == "http"
    assert config.http_path == "/mcp"


def test_options_win_over_environment_and_empty_variables_count_as_unset() -> None:
    env = {"LEAN_HOST_MCP_BIND": "127.0.0.2:1", "LEAN_HOST_MCP_HTTP_PATH": "/env"}
    from_env = parse_config([], env)
    assert from_env.bind == BindAddress("127.0.0.2", 1, ipv6=False)
    assert from_env.http_path == "/env"
    from_options = parse_config(["--bind", "127.0.0.3:2", "--http-path", "/opt"], env)
    assert from_options.bind == BindAddress("127.0.0.3", 2, ipv6=False)
    assert from_options.http_path == "/opt"
    assert parse_config([], {"LEAN_HOST_MCP_BIND": "", "LEAN_HOST_MCP_HTTP_PATH": ""}) == Config()


def test_faults_repeat_and_json_response_and_parent_poll_are_parsed() -> None:
    config = parse_config(
        [
            *("--bind", "127.0.0.1:0", "--json-response"),
            *("--fault", "keep-record", "--fault", "orphan-worker", "--fault", "keep-record"),
        ],
        {"LEANHOST_REFSERVER_PARENT_POLL": "0.05"},
    )
    assert config.json_response
    assert config.faults == {"keep-record", "orphan-worker"}
    assert config.parent_poll_seconds == 0.05


def test_help_documents_every_option_variable_and_fault(tmp_path: Path) -> None:
    result = run_server(["--help"], tmp_path / "registry")
    assert result.returncode == 0
    for word in [
        "--bind",
        "--http-path",
        "--json-response",
        "--fault",
        "LEAN_HOST_MCP_BIND",
        "LEAN_HOST_MCP_HTTP_PATH",
        "LEANHOST_REFSERVER_PARENT_POLL",
        REGISTRY_ENV,
        "exit status",
        *FAULTS,
    ]:
        assert word in result.stdout
    assert registry_files(tmp_path / "registry") == []


def test_importing_the_package_loads_neither_pytest_nor_psutil_nor_http() -> None:
    code = (
        "import sys, pytest_leanhost.refserver\n"
        "print(sorted(m for m in ('pytest', '_pytest', 'psutil', 'http.server', 'subprocess')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_stdio_server_never_imports_the_http_machinery(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pytest_leanhost.refserver import main\n"
        "status = main([])\n"
        "sys.stderr.write(f'status={status} http={\"http.server\" in sys.modules}\\n')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, REGISTRY_ENV: str(tmp_path / "registry")},
    )
    assert result.stderr.strip() == "status=0 http=False"
