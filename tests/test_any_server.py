"""Any MCP server, not only one that registers: readiness modes, port conventions, the
contract checked from outside, and servers nobody here wrote (server-everything, SDK)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import psutil
import pytest

from pytest_leanhost.client.contract import check_running, check_stopped, parse_rules
from pytest_leanhost.client.spawn import ServerProcess, ServerStartError, spawn_server
from tests.any_servers import EVERYTHING_VERSION, PLAIN_SDK_SERVER, ROOT, everything_command
from tests.children import Started
from tests.inner_runs import InnerPytest

REFSERVER = [sys.executable, "-m", "pytest_leanhost.refserver"]

# A server that registers and then only reads stdin: it never answers initialize.
REGISTERS_ONLY = """
import sys
from pytest_leanhost.record import register_server_process
with register_server_process("stdio"):
    sys.stdin.buffer.read()
"""

# Three ways servers take their port; each hands over to the reference server's --bind.
PORT_ENV = """
import os, sys
bind = "127.0.0.1:" + os.environ["PORT"]
os.execv(sys.executable, [sys.executable, "-m", "pytest_leanhost.refserver", "--bind", bind])
"""
PORT_ARG = """
import os, sys
args = sys.argv
host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
bind = host + ":" + args[args.index("--port") + 1]
os.execv(sys.executable, [sys.executable, "-m", "pytest_leanhost.refserver", "--bind", bind])
"""


def _listening(pid: int) -> set[tuple[str, int]]:
    """What the OS says ``pid`` listens on (read here, not by the plugin's reader)."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


# --- readiness ------------------------------------------------------------------------


def test_ready_record_waits_for_the_record_and_sends_no_initialize(started: Started) -> None:
    server = started.spawn([sys.executable, "-c", REGISTERS_ONLY], ready="record")
    assert server.ready_by == "record"
    assert server.registered
    assert server.initialized is None


def test_ready_auto_takes_the_record_of_a_server_that_never_answers(started: Started) -> None:
    server = started.spawn([sys.executable, "-c", REGISTERS_ONLY], ready="auto")
    assert server.ready_by == "record"
    assert server.stop(5).rung == "stdin_eof"


def test_ready_initialize_hands_over_a_handle_ready_for_list_tools(started: Started) -> None:
    server = started.spawn(PLAIN_SDK_SERVER, ready="initialize")
    assert server.ready_by == "initialize"
    assert server.initialized is not None
    assert server.initialized["serverInfo"]["name"] == "leanhost-plain-sdk"
    assert [tool["name"] for tool in server.list_tools()] == ["add"]
    assert server.call_tool("add", {"a": 2, "b": 3})["structuredContent"] == {"result": 5}
    assert not server.registered


def test_ready_auto_falls_back_to_initialize_for_a_server_without_a_record(
    started: Started,
) -> None:
    server = started.spawn(PLAIN_SDK_SERVER)  # auto is the default
    assert server.ready_by == "initialize"
    assert server.initialize() is server.initialized or server.initialize()  # no second handshake
    assert [tool["name"] for tool in server.list_tools()] == ["add"]


def test_ready_port_waits_until_the_servers_own_port_accepts(started: Started) -> None:
    server = started.spawn(REFSERVER, transport="http", ready="port")
    assert server.ready_by == "port"
    assert server.url is not None
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    assert ("127.0.0.1", port) in _listening(server.pid)


def test_ready_port_is_refused_for_stdio(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ready='port' needs transport='http'"):
        spawn_server(REFSERVER, registry=tmp_path, ready="port")


def test_a_ready_callable_is_polled_until_it_holds(started: Started) -> None:
    calls: list[int] = []

    def third_time(server: ServerProcess) -> bool:
        calls.append(server.pid)
        return len(calls) >= 3

    server = started.spawn(REFSERVER, ready=third_time)
    assert server.ready_by == "callable"
    assert calls == [server.pid] * 3


def test_a_server_that_exits_while_starting_names_the_rung_and_its_stderr(
    tmp_path: Path,
) -> None:
    code = "import sys; sys.stderr.write('no config\\n'); sys.exit(3)"
    with pytest.raises(ServerStartError) as caught:
        spawn_server([sys.executable, "-c", code], registry=tmp_path, ready="initialize")
    assert caught.value.reason == "exited"
    message = str(caught.value)
    assert "exited with status 3 before it was ready" in message
    assert "(waiting for ready=initialize: an answer to MCP initialize)" in message
    assert "no config" in message


def test_a_server_that_never_answers_times_out_naming_the_rung(tmp_path: Path) -> None:
    code = "import sys; sys.stdin.read()"
    with pytest.raises(ServerStartError) as caught:
        spawn_server(
            [sys.executable, "-c", code], registry=tmp_path, ready="initialize", ready_timeout=0.5
        )
    assert caught.value.reason == "timeout"
    assert "not ready within 0.5 s (waiting for ready=initialize" in str(caught.value)


# --- ports handed over from outside ----------------------------------------------------


def test_port_env_hands_a_free_loopback_port_and_adds_no_bind(started: Started) -> None:
    server = started.spawn(
        [sys.executable, "-c", PORT_ENV], transport="http", port_env="PORT", ready="initialize"
    )
    assert "--bind" not in server.command
    assert server.url is not None
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    assert server.url == f"http://127.0.0.1:{port}/mcp"
    assert ("127.0.0.1", port) in _listening(server.pid)
    assert server.call_tool("echo", {"text": "env"})["content"][0]["text"] == "env"


@pytest.mark.parametrize(
    "args", [["--port", "{port}"], ["--host", "{host}", "--port", "{port}"]], ids=["port", "host"]
)
def test_port_placeholders_are_filled_and_add_no_bind(started: Started, args: list[str]) -> None:
    server = started.spawn([sys.executable, "-c", PORT_ARG, *args], transport="http")
    assert "--bind" not in server.command
    assert "{port}" not in " ".join(server.command[3:])
    port = int(server.command[server.command.index("--port") + 1])
    assert server.url == f"http://127.0.0.1:{port}/mcp"
    if "--host" in server.command:
        assert server.command[server.command.index("--host") + 1] == "127.0.0.1"
    assert ("127.0.0.1", port) in _listening(server.pid)
    server.initialize()
    assert server.call_tool("echo", {"text": "arg"})["content"][0]["text"] == "arg"


# --- the contract, from outside ----------------------------------------------------------


def test_a_server_listening_on_all_interfaces_is_a_rule_5_violation(started: Started) -> None:
    server = started.spawn([*REFSERVER, "--fault", "bind-all"], transport="http")
    assert server.url is not None
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    assert ("0.0.0.0", port) in _listening(server.pid)  # the OS agrees: every interface
    found = check_running(server)
    assert [(v.rule, v.pid, v.seen) for v in found] == [
        (5, server.pid, f"listens on 0.0.0.0:{port}, not a loopback address")
    ]
    assert check_running(server, parse_rules("none")) == []
    assert check_running(server, parse_rules("3,6")) == []


def test_a_loopback_http_server_keeps_rule_5(started: Started) -> None:
    server = started.spawn(REFSERVER, transport="http")
    assert check_running(server) == []
    result = server.stop(5)
    assert (result.rung, result.returncode) == ("sigterm", 0)
    assert check_stopped(server, result, 5) == []


def test_rules_1_and_2_do_not_apply_to_a_server_that_never_registered(
    started: Started,
) -> None:
    server = started.spawn(PLAIN_SDK_SERVER, ready="initialize")
    result = server.stop(5)
    assert (result.rung, result.returncode) == ("stdin_eof", 0)
    assert check_stopped(server, result, 5) == []


def test_a_registered_server_that_keeps_its_record_breaks_rule_2_unless_deselected(
    started: Started,
) -> None:
    server = started.spawn([*REFSERVER, "--fault", "keep-record"])
    result = server.stop(5)
    assert [v.rule for v in check_stopped(server, result, 5)] == [2]
    assert check_stopped(server, result, 5, parse_rules("1,3,5,6")) == []
    server.record_path.unlink()


@pytest.mark.parametrize("bad", ["4", "7", "x", "1,9"])
def test_a_rule_that_is_not_checked_at_teardown_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="rule"):
        parse_rules(bad)


def test_fixture_rules_and_ini_select_what_is_checked(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(
        test_rules="""
def test_default(leanhost_server):
    leanhost_server("--fault", "bind-all", transport="http").initialize()

def test_none(leanhost_server):
    leanhost_server("--fault", "bind-all", transport="http", rules="none")

def test_other_rules(leanhost_server):
    leanhost_server("--fault", "bind-all", transport="http", rules=[3, 6])
"""
    )
    run = inner.run()
    run.result.assert_outcomes(passed=3, errors=1)
    run.result.stdout.fnmatch_lines(
        ["*rule 5: server pid=* (http) listens on 0.0.0.0:*, not a loopback address*"]
    )
    assert "test_default" in run.result.stdout.str().split("short test summary")[1]
    run = inner.run("-o", "leanhost_contract_rules=none", "-k", "test_default")
    run.result.assert_outcomes(passed=1)
    inner.assert_nothing_left(run)


@pytest.mark.parametrize(
    ("ini", "line"),
    [
        ("leanhost_ready=soon", "leanhost: leanhost_ready = 'soon' must be one of record, *"),
        ("leanhost_contract_rules=4", "leanhost: leanhost_contract_rules = '4': rule 4 is not*"),
    ],
)
def test_a_bad_ready_or_rules_value_is_a_one_line_usage_error(
    pytester: pytest.Pytester, inner: InnerPytest, ini: str, line: str
) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "leanhost", "-o", ini)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {line}"])
    assert "INTERNALERROR" not in result.stderr.str()


def test_an_sdk_server_that_does_not_register_is_driven_by_the_fixtures(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(
        test_sdk="""
def test_sdk(leanhost_server):
    server = leanhost_server(ready="initialize")
    assert not server.registered
    assert [t["name"] for t in server.list_tools()] == ["add"]
"""
    )
    run = inner.run("--leanhost-server-cmd", shlex.join(PLAIN_SDK_SERVER))
    run.result.assert_outcomes(passed=1)
    assert run.report["findings"] == []
    inner.assert_nothing_left(run)


# --- server-everything, a server nobody here wrote -------------------------------------


def test_server_everything_is_the_pinned_version() -> None:
    everything_command()
    package = ROOT / "tests/node/node_modules/@modelcontextprotocol/server-everything"
    assert f'"version": "{EVERYTHING_VERSION}"' in (package / "package.json").read_text()


def test_server_everything_over_stdio_initializes_lists_calls_and_stops_cleanly(
    started: Started,
) -> None:
    server = started.spawn([*everything_command(), "stdio"])
    assert server.ready_by == "initialize"
    assert server.initialized is not None
    assert server.initialized["serverInfo"]["name"] == "mcp-servers/everything"
    assert "echo" in [tool["name"] for tool in server.list_tools()]
    assert server.call_tool("echo", {"message": "hi"})["content"] == [
        {"type": "text", "text": "Echo: hi"}
    ]
    result = server.stop(10)
    assert (result.rung, result.returncode, result.surviving_workers) == ("stdin_eof", 0, ())
    assert check_stopped(server, result, 10) == []  # rule 3 kept; 1 and 2 do not apply


def test_server_everything_over_http_listens_on_all_interfaces_and_dies_of_sigterm(
    started: Started,
) -> None:
    server = started.spawn(
        [*everything_command(), "streamableHttp"], transport="http", port_env="PORT"
    )
    assert server.url is not None
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    assert server.url == f"http://127.0.0.1:{port}/mcp"
    assert ("::", port) in _listening(server.pid)  # what it really does: *:PORT
    assert server.call_tool("echo", {"message": "hi"})["content"][0]["text"] == "Echo: hi"
    running = check_running(server)
    assert [(v.rule, v.seen) for v in running] == [
        (5, f"listens on [::]:{port}, not a loopback address")
    ]
    result = server.stop(10)
    assert (result.rung, result.returncode) == ("sigterm", -15)  # no SIGTERM handler
    assert [(v.rule, v.seen) for v in check_stopped(server, result, 10)] == [
        (5, "died of SIGTERM (no handler: no graceful shutdown), did not exit with status 0")
    ]


def test_server_everything_through_the_fixtures_and_a_forgotten_one_is_a_named_leak(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    command = everything_command()
    pytester.makepyfile(
        test_everything=f"""
import subprocess

COMMAND = {command!r}

def test_stdio(leanhost_server):
    server = leanhost_server("stdio")
    assert server.call_tool("echo", {{"message": "a"}})["content"][0]["text"] == "Echo: a"

def test_http(leanhost_server):
    server = leanhost_server("streamableHttp", transport="http", port_env="PORT")
    assert "echo" in [t["name"] for t in server.list_tools()]

def test_forgets(leanhost_server):
    FORGOTTEN.append(subprocess.Popen([*COMMAND, "stdio"], stdin=subprocess.PIPE))

FORGOTTEN = []
"""
    )
    run = inner.run("--leanhost-server-cmd", shlex.join(command))
    run.result.assert_outcomes(passed=3, errors=1)
    out = run.result.stdout.str()
    assert "rule 5: server pid=" in out
    assert "listens on [::]:" in out
    assert "died of SIGTERM (no handler: no graceful shutdown)" in out
    leaks = [f for f in run.findings if f[0] == "leaked_process"]
    assert leaks == [("leaked_process", "test_everything.py::test_forgets", "terminated")]
    inner.assert_nothing_left(run)
