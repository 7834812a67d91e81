"""Under pytest-xdist: one verdict on the controller, every leak once, crashed workers included."""

from __future__ import annotations

from typing import Any

import pytest

from tests.inner_runs import InnerPytest

LEAKY = """
import os, subprocess, sys
import pytest

HELD = []

@pytest.mark.parametrize("n", range(4))
def test_leaks_a_server(leanhost_server, n):
    from pytest_leanhost.plugin.fixtures import reference_server_command
    from pytest_leanhost.client.spawn import spawn_server
    registry = os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"]
    transport = "http" if n % 2 else "stdio"
    HELD.append(spawn_server(reference_server_command(), transport=transport, registry=registry))

@pytest.mark.parametrize("n", range(4))
def test_leaks_a_process(n):
    HELD.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))

@pytest.mark.parametrize("n", range(8))
def test_clean(leanhost_server, n):
    leanhost_server(transport="http" if n % 2 else "stdio").initialize()
"""

CLEAN = """
import pytest

@pytest.mark.parametrize("n", range(12))
def test_clean(leanhost_server, n):
    server = leanhost_server(transport="http" if n % 3 == 0 else "stdio")
    server.initialize()
    server.call_tool("echo", {"text": str(n)})
"""

# The crashed test leaves a registered server that nothing but a signal can end: it
# watches neither its stdin nor its parent and writes nothing after registering (a
# write to a pipe whose reader died would end it, as the reference server's first
# stderr line did once the worker's pipe reader was gone). So it is still a live
# leaked_server when the controller looks, however loaded the machine is.
CRASH = """
import os, subprocess, sys, time
from pathlib import Path

HELD = []

SERVER = (
    "import threading\\n"
    "from pytest_leanhost.record import register_server_process\\n"
    "register_server_process('http', '127.0.0.1:9', '/mcp', install_signal_handlers=True)\\n"
    "threading.Event().wait()\\n"
)

def test_crashes_its_worker():
    registry = Path(os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"])
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    HELD.append(server)
    while not (registry / f"{server.pid}.json").exists():
        assert server.poll() is None, "the server exited before it registered"
        time.sleep(0.01)
    HELD.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
    os._exit(1)  # the worker dies: no teardown, no worker output

def test_after_the_crash():
    pass
"""


def run(inner: InnerPytest, *args: str) -> tuple[Any, dict[str, Any]]:
    outcome = inner.run("-p", "xdist", *args)
    inner.assert_nothing_left(outcome)
    return outcome.result, outcome.report


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "2"],
        ["-n", "4"],
        ["-n", "2", "--dist", "loadscope"],
        ["-n", "2", "--dist", "loadgroup"],
    ],
    ids=["n2", "n4", "loadscope", "loadgroup"],
)
def test_leaks_spread_over_workers_are_reported_once_each(
    pytester: pytest.Pytester, inner: InnerPytest, args: list[str]
) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result, data = run(inner, *args)
    assert result.ret == 1
    found = sorted((f["nodeid"], f["kind"]) for f in data["findings"])
    assert found == sorted(
        [(f"test_leaky.py::test_leaks_a_server[{n}]", "leaked_server") for n in range(4)]
        + [(f"test_leaky.py::test_leaks_a_process[{n}]", "leaked_process") for n in range(4)]
    )
    assert all(f["worker"] and f["worker"].startswith("gw") for f in data["findings"])
    assert data["registries_checked"] == 12  # 4 leaky + 8 clean server tests, all workers
    assert result.stdout.str().count("= leanhost =") == 1


def test_a_clean_suite_under_four_workers_never_raises_a_false_alarm(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_clean=CLEAN)
    for _ in range(10):
        result, data = run(inner, "-n", "4")
        assert result.ret == 0, result.stdout.str()
        assert data["findings"] == []
        assert data["registries_checked"] == 12


def test_a_crashed_worker_loses_no_finding(pytester: pytest.Pytester, inner: InnerPytest) -> None:
    pytester.makepyfile(test_crash=CRASH)
    result, data = run(inner, "-n", "2")
    assert result.ret == 1
    found = sorted((f["nodeid"], f["kind"]) for f in data["findings"])
    assert found == [
        ("test_crash.py::test_crashes_its_worker", "leaked_process"),
        ("test_crash.py::test_crashes_its_worker", "leaked_server"),
    ]
    assert {f["action"] for f in data["findings"]} == {"terminated"}
