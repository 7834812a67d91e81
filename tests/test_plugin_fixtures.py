"""The plugin's fixtures, used as a suite uses them, in real pytest runs with real servers.

Each test writes a small inner suite, runs it with ``-p leanhost`` in a pytest
subprocess, and reads the run's output and JSON report: what the fixtures gave
the inner tests, the errors they raised at teardown, the session-end findings,
and that afterwards no process carrying the run's session id is alive.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from tests.inner_runs import InnerPytest

SDK_SERVER = Path(__file__).resolve().parent.parent / "examples" / "sdk_server" / "server.py"
REFSERVER = [sys.executable, "-m", "pytest_leanhost.refserver"]


def read_pid(pytester: pytest.Pytester, name: str) -> int:
    """A PID that an inner test wrote into ``name`` in the run's directory."""
    return int((pytester.path / name).read_text())


# --- leanhost_server: both transports, end to end --------------------------------------

BOTH_TRANSPORTS = """
import os
import pytest
from pytest_leanhost.record import ProcessRecord

STARTED = []

@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_server(leanhost_server, leanhost_registry, transport):
    server = leanhost_server() if transport == "stdio" else leanhost_server(transport="http")
    assert server.transport == transport
    assert server.initialize()["serverInfo"]["name"] == "pytest-leanhost-refserver"
    assert {"echo", "sleep", "spawn_worker"} <= {tool["name"] for tool in server.list_tools()}
    result = server.call_tool("echo", {"text": "hi " + transport})
    assert result["content"] == [{"type": "text", "text": "hi " + transport}]
    assert os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"] == str(leanhost_registry)
    assert leanhost_registry.parent.name == "registries"
    assert [path.name for path in leanhost_registry.iterdir()] == [f"{server.pid}.json"]
    record = ProcessRecord.from_json_bytes(server.record_path.read_bytes())
    assert (record.pid, record.transport) == (server.pid, transport)
    if transport == "http":
        assert record.http_path == "/mcp"
        assert server.url == f"http://{record.bind}/mcp"
    STARTED.append((server, leanhost_registry))

def test_teardown_stopped_them_by_the_contract():
    expected = {"stdio": "stdin_eof", "http": "sigterm"}
    assert [server.transport for server, _ in STARTED] == ["stdio", "http"]
    for server, registry in STARTED:
        result = server.stop()  # idempotent: the teardown's own result
        assert result.rung == expected[server.transport]
        assert (result.returncode, result.record_removed) == (0, True)
        assert result.surviving_workers == ()
        assert list(registry.iterdir()) == []
"""


def test_leanhost_server_speaks_mcp_over_stdio_and_http_and_stops_cleanly(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    """Both transports: handshake, tools, echo, the record in the test's registry; teardown
    stops each server by its rung (stdin EOF, SIGTERM) with status 0 and no record left."""
    pytester.makepyfile(test_both=BOTH_TRANSPORTS)
    run = inner.run("-v")
    assert run.result.ret == 0, run.result.stdout.str()
    run.result.assert_outcomes(passed=3)
    assert run.report["findings"] == []
    assert run.report["registries_checked"] == 2
    assert run.report["records_checked"] == 0
    run.result.stdout.fnmatch_lines(
        ["leanhost: no leaks (* tests, * processes seen, 2 registries, checked in * ms)"]
    )
    inner.assert_nothing_left(run)


# --- the per-test contract check at teardown ---------------------------------------

FAULTY = """
import json, pathlib

def test_breaks_a_rule(leanhost_server):
    server = leanhost_server("--fault", "{fault}", transport="{transport}")
    server.initialize()
    pathlib.Path("server.pid").write_text(str(server.pid))
    if "{fault}" == "orphan-worker":
        worker = server.call_tool("spawn_worker", {{}})["structuredContent"]["pid"]
        pathlib.Path("worker.pid").write_text(str(worker))

def test_after():
    pass
"""


@pytest.mark.parametrize(
    ("fault", "transport", "rule_line", "kinds"),
    [
        pytest.param(
            "ignore-stdin-eof",
            "stdio",
            "rule 3: server pid={pid} (stdio) did not exit on stdin EOF within 0.5s"
            " (ended by SIGTERM)",
            [],
            id="ignore-stdin-eof",
        ),
        pytest.param(
            "keep-record",
            "stdio",
            "rule 2: server pid={pid} (stdio) did not remove its record */{pid}.json",
            ["stale_record"],
            id="keep-record",
        ),
        pytest.param(
            "orphan-worker",
            "stdio",
            "rule 6: server pid={pid} (stdio) left worker children alive: {worker}",
            ["leaked_process"],
            id="orphan-worker",
        ),
        pytest.param(
            "ignore-sigterm",
            "http",
            "rule 5: server pid={pid} (http) did not exit on SIGTERM within 0.5s",
            ["stale_record"],  # SIGKILL leaves the record: stale at session end
            id="ignore-sigterm",
        ),
    ],
)
def test_a_broken_rule_is_an_error_at_teardown_naming_rule_pid_and_stderr(
    pytester: pytest.Pytester,
    inner: InnerPytest,
    fault: str,
    transport: str,
    rule_line: str,
    kinds: list[str],
) -> None:
    """The teardown error names the rule and the PID and shows the stderr tail; what the
    server left is still listed at session end for that test; nothing stays alive."""
    pytester.makepyfile(test_faulty=FAULTY.format(fault=fault, transport=transport))
    run = inner.run("-o", "leanhost_shutdown_timeout=0.5")
    assert run.result.ret == 1, run.result.stdout.str()
    run.result.assert_outcomes(passed=2, errors=1)
    pid = read_pid(pytester, "server.pid")
    worker = read_pid(pytester, "worker.pid") if fault == "orphan-worker" else None
    run.result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_breaks_a_rule*",
            "leanhost: server broke the lifecycle contract:",
            rule_line.format(pid=pid, worker=worker),
            "*stderr tail:",
        ]
    )
    nodeid = "test_faulty.py::test_breaks_a_rule"
    assert [(kind, node) for kind, node, _ in run.findings] == [(kind, nodeid) for kind in kinds]
    for finding in run.report["findings"]:
        if finding["kind"] == "leaked_process":
            assert (finding["pid"], finding["action"]) == (worker, "terminated")
        else:
            assert (finding["pid"], finding["action"]) == (pid, "record_removed")
    if fault == "ignore-stdin-eof":
        run.result.stdout.fnmatch_lines(["stderr tail:", "refserver: stdin EOF ignored*"])
    if fault == "ignore-sigterm":  # the record SIGKILL left is not a rule 2 breach of its own
        assert "rule 2:" not in run.result.stdout.str()
    inner.assert_nothing_left(run)


# --- leanhost_server_command -------------------------------------------------------

COMMAND_SUITE = """
import sys

def test_command(leanhost_server_command, leanhost_server):
    assert leanhost_server_command == {expected!r}
    server = leanhost_server({extra})
    assert server.command[: len(leanhost_server_command)] == tuple(leanhost_server_command)
    assert server.initialize()["serverInfo"]["name"] == {server_name!r}
    assert server.call_tool("echo", {{"text": "x"}})["content"][0]["text"] == "x"
    {check}
"""

DEFAULT_COMMAND_CHECK = (
    "assert leanhost_server_command == [sys.executable, '-m', 'pytest_leanhost.refserver']"
)


def test_the_default_server_command_is_the_reference_server_with_this_python(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    """Without option, ini or override, the fixture names the reference server run by the
    inner run's own Python, and a conftest that overrides the fixture changes what starts."""
    pytester.makepyfile(
        test_default=COMMAND_SUITE.format(
            expected=REFSERVER,
            extra="",
            server_name="pytest-leanhost-refserver",
            check=DEFAULT_COMMAND_CHECK,
        )
    )
    overridden = [*REFSERVER, "--http-path", "/from-conftest"]
    sub = pytester.mkpydir("overridden")
    (sub / "conftest.py").write_text(
        "import pytest\n\n"
        "@pytest.fixture\n"
        f"def leanhost_server_command():\n    return {overridden!r}\n"
    )
    (sub / "test_overridden.py").write_text(
        COMMAND_SUITE.format(
            expected=overridden,
            extra="transport='http'",
            server_name="pytest-leanhost-refserver",
            check="assert server.record.http_path == '/from-conftest'",
        )
    )
    run = inner.run()
    assert run.result.ret == 0, run.result.stdout.str()
    run.result.assert_outcomes(passed=2)
    assert run.report["findings"] == []
    inner.assert_nothing_left(run)


def test_the_ini_option_sets_the_server_command(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    command = [*REFSERVER, "--http-path", "/from-ini"]
    pytester.makeini(f"[pytest]\nleanhost_server_command = {shlex.join(command)}\n")
    pytester.makepyfile(
        test_ini=COMMAND_SUITE.format(
            expected=command,
            extra="transport='http'",
            server_name="pytest-leanhost-refserver",
            check="assert server.record.http_path == '/from-ini'",
        )
    )
    run = inner.run()
    assert run.result.ret == 0, run.result.stdout.str()
    run.result.assert_outcomes(passed=1)
    assert run.report["findings"] == []
    inner.assert_nothing_left(run)


def test_the_command_line_option_sets_the_server_command_and_wins_over_the_ini(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    """``--leanhost-server-cmd`` starts the SDK example server, although the ini names
    the reference server."""
    pytester.makeini(f"[pytest]\nleanhost_server_command = {shlex.join(REFSERVER)}\n")
    command = [sys.executable, str(SDK_SERVER)]
    pytester.makepyfile(
        test_cmd=COMMAND_SUITE.format(
            expected=command,
            extra="",
            server_name="leanhost-sdk-example",
            check="assert 'add' in {tool['name'] for tool in server.list_tools()}",
        )
    )
    run = inner.run("--leanhost-server-cmd", shlex.join(command))
    assert run.result.ret == 0, run.result.stdout.str()
    run.result.assert_outcomes(passed=1)
    assert run.report["findings"] == []
    inner.assert_nothing_left(run)


# --- leanhost_doctor ---------------------------------------------------------------

DOCTOR_SUITE = """
import subprocess, sys
import pytest
from pytest_leanhost.files import write_atomically
from pytest_leanhost.record import ProcessRecord

def plant_stale_record(registry):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)  # exited and reaped: a dead PID
    record = ProcessRecord(pid, sys.executable, "/", 1, None, None, "stdio")
    path = registry / f"{pid}.json"
    write_atomically(path, record.to_json_bytes())
    return pid, path

def test_inspect_text_cleanup(leanhost_server, leanhost_doctor, leanhost_registry):
    server = leanhost_server()
    (judged,) = leanhost_doctor.inspect()
    assert (judged.verdict, judged.alive, judged.entry.record.pid) == ("alive", True, server.pid)
    leanhost_doctor.assert_clean()
    cli = subprocess.run(
        [sys.executable, "-m", "pytest_leanhost.core.cli", "doctor", "processes",
         "--registry", str(leanhost_registry)],
        capture_output=True, text=True, check=True,
    )
    assert leanhost_doctor.text() == cli.stdout
    assert cli.stdout.startswith(f"pid={server.pid} alive=true ")
    pid, path = plant_stale_record(leanhost_registry)
    assert f"pid={pid} alive=false " in leanhost_doctor.text()
    result = leanhost_doctor.cleanup()
    assert result.removed == (str(path),)
    assert result.failed == ()
    assert sorted(leanhost_registry.iterdir()) == [server.record_path]
    assert server.returncode is None  # cleanup never touches a live server

def test_assert_clean_fails_on_a_stale_record(leanhost_doctor, leanhost_registry):
    plant_stale_record(leanhost_registry)
    leanhost_doctor.assert_clean()
"""


def test_leanhost_doctor_inspects_shows_cleans_and_asserts(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    """``inspect()`` sees the live server, ``text()`` is what the command prints,
    ``cleanup()`` removes only a planted stale record, ``assert_clean()`` fails with the
    doctor lines; the stale record it failed on is still a finding of that test."""
    pytester.makepyfile(test_doctor=DOCTOR_SUITE)
    run = inner.run()
    assert run.result.ret == 1, run.result.stdout.str()
    run.result.assert_outcomes(passed=1, failed=1)
    run.result.stdout.fnmatch_lines(
        [
            "*_ test_assert_clean_fails_on_a_stale_record _*",
            "leanhost: registry is not clean:",
            "pid=* alive=false executable_match=* transport=stdio bind=- http_path=- cwd=/ *",
            "  stale_record_cleanup=lean-host-mcp doctor processes --cleanup-stale-records",
        ]
    )
    assert run.findings == [
        (
            "stale_record",
            "test_doctor.py::test_assert_clean_fails_on_a_stale_record",
            "record_removed",
        )
    ]
    inner.assert_nothing_left(run)


# --- a server that never registers -------------------------------------------------


def test_a_server_that_never_registers_is_one_clear_error(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    """The test fails once, saying the server did not register within the ready timeout;
    the server was stopped before the error, so nothing is left for the session end."""
    pytester.makepyfile(
        test_never="def test_never_ready(leanhost_server):\n    leanhost_server()\n"
    )
    command = shlex.join([sys.executable, "-c", "import time; time.sleep(30)"])
    run = inner.run("--leanhost-server-cmd", command, "-o", "leanhost_ready_timeout=0.5")
    assert run.result.ret == 1
    run.result.assert_outcomes(failed=1, errors=0)
    run.result.stdout.fnmatch_lines(
        [
            "leanhost: server * (pid *, registry *) not ready within 0.5 s"
            " (waiting for ready=auto: a process record or an answer to MCP initialize)*"
            " (ini leanhost_ready_timeout)"
        ]
    )
    assert run.report["findings"] == []
    inner.assert_nothing_left(run)
