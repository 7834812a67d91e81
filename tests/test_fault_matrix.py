"""The fault matrix: each reference-server fault, over each transport it applies to, alone
and under pytest-xdist, gives exactly its leak kind; the same steps without it give nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.inner_runs import InnerPytest

# Each inner test runs the same steps with and without its fault ("fault"/"control").
SUITE = '''
import os, subprocess, sys, time
from pathlib import Path
import pytest
from pytest_leanhost.plugin.fixtures import reference_server_command
from pytest_leanhost.client.spawn import spawn_server

HELD = []
BOTH = pytest.mark.parametrize("transport", ["stdio", "http"])
FAULTY = pytest.mark.parametrize("faulty", [True, False], ids=["fault", "control"])
LAUNCHER = """
import os, subprocess, sys, time
server = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
record = os.path.join(sys.argv[1], f"{server.pid}.json")
while not os.path.exists(record):
    time.sleep(0.005)
"""

def registry():
    return os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"]

def command(fault, faulty):
    return [*reference_server_command(), *(["--fault", fault] if faulty else [])]

def start(transport, fault, faulty):
    server = spawn_server(command(fault, faulty), transport=transport, registry=registry())
    HELD.append(server)
    return server

@FAULTY
def test_ignore_stdin_eof(faulty):
    start("stdio", "ignore-stdin-eof", faulty).close_stdin()

@FAULTY
def test_ignore_parent_loss(faulty):
    env = {**os.environ, "LEANHOST_REFSERVER_PARENT_POLL": "0.05"}
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, registry(), *command("ignore-parent-loss", faulty)],
        stdin=subprocess.PIPE, env=env,
    )
    assert launcher.wait(30) == 0
    HELD.append(launcher)  # holds the orphan's stdin open: only the parent's loss can end it

@BOTH
@FAULTY
def test_keep_record(transport, faulty):
    start(transport, "keep-record", faulty).stop()

@BOTH
@FAULTY
def test_orphan_worker(transport, faulty):
    server = start(transport, "orphan-worker", faulty)
    server.initialize()
    server.call_tool("spawn_worker", {})
    server.stop()

@BOTH
@FAULTY
def test_ignore_sigterm(transport, faulty):
    start(transport, "ignore-sigterm", faulty).terminate()

@BOTH
@FAULTY
def test_corrupt_record(transport, faulty):
    args = ["--bind", "127.0.0.1:0"] if transport == "http" else []
    with subprocess.Popen(
        [*command("corrupt-record", faulty), *args],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as server:
        record = Path(registry(), f"{server.pid}.json")
        deadline = time.monotonic() + 30
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # let the atomic write land; SIGKILL then leaves it as it is
        server.kill()
'''

# What each fault leaves, per transport; the control twin of every test leaves nothing
# (corrupt-record's control, killed outright, leaves a valid record of a dead PID).
EXPECTED = {
    ("test_ignore_stdin_eof[fault]", "leaked_server", "terminated"),
    ("test_ignore_parent_loss[fault]", "orphaned_server", "terminated"),
    ("test_keep_record[fault-stdio]", "stale_record", "record_removed"),
    ("test_keep_record[fault-http]", "stale_record", "record_removed"),
    ("test_orphan_worker[fault-stdio]", "leaked_process", "terminated"),
    ("test_orphan_worker[fault-http]", "leaked_process", "terminated"),
    ("test_ignore_sigterm[fault-stdio]", "leaked_server", "killed"),
    ("test_ignore_sigterm[fault-http]", "leaked_server", "killed"),
    ("test_corrupt_record[fault-stdio]", "corrupt_record", "record_removed"),
    ("test_corrupt_record[fault-http]", "corrupt_record", "record_removed"),
    ("test_corrupt_record[control-stdio]", "stale_record", "record_removed"),
    ("test_corrupt_record[control-http]", "stale_record", "record_removed"),
}


def run_matrix(inner: InnerPytest, *args: str) -> dict[str, Any]:
    inner.pytester.makepyfile(test_matrix=SUITE)
    run = inner.run("-o", "leanhost_shutdown_timeout=0.5", "-o", "leanhost_grace=0.5", *args)
    assert run.result.ret == 1, run.result.stdout.str()
    run.result.assert_outcomes(passed=20)
    inner.assert_nothing_left(run)
    return run.report


@pytest.mark.parametrize("xdist", [[], ["-p", "xdist", "-n", "2"]], ids=["single", "xdist"])
def test_each_fault_gives_exactly_its_leak_kind(
    pytester: pytest.Pytester, inner: InnerPytest, xdist: list[str]
) -> None:
    data = run_matrix(inner, *xdist)
    found = {(f["nodeid"].split("::")[1], f["kind"], f["action"]) for f in data["findings"]}
    assert found == EXPECTED
    assert len(data["findings"]) == len(EXPECTED)  # each leak once, nothing else
