"""pytest-xdist workers on other machines: each stands on its own, each finding names its host.

Every "machine" is a namespace made by :mod:`tests.remote_machines` (its own
PIDs, host name and private temporary root; root needed, as in CI). A worker
there never sees the controller's session root; what it found reaches the
controller through ``workeroutput`` only. The inner tests write down what they
leak as their machine sees it, and check with their own eyes, after their
worker's check, that it is gone; the outer tests check that every namespace
died with its init, so nothing of a run is left anywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_leanhost.core.machine import Machine, this_machine
from tests.children import Children, poll
from tests.inner_runs import InnerPytest, InnerRun
from tests.remote_machines import RemoteMachines

pytest.importorskip("xdist")

# Each test notes what it leaks as its own machine sees it; after its worker's
# check (session finish), the worker looks again with its own eyes, in /proc.
CONFTEST = r'''
import json, os, subprocess
from pathlib import Path

OUT = Path(os.environ["LH_OUT"])
HELD = []

def start_of(pid):
    try:
        data = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return fields[19].decode(), fields[0].decode()

def note(name, pid):
    """Write down a leaked PID as this machine sees it: PID, start, host, PID namespace."""
    noted = {"pid": pid, "start": start_of(pid)[0], "host": os.uname().nodename,
             "ns": os.readlink("/proc/self/ns/pid")}
    (OUT / name).write_text(json.dumps(noted))

def pytest_sessionstart(session):
    """On the controller, with LH_CONTROLLER_LEAKS: a leak of its own, outside any test."""
    if hasattr(session.config, "workerinput") or "LH_CONTROLLER_LEAKS" not in os.environ:
        return
    child = subprocess.Popen(["sleep", "300"])
    HELD.append(child)
    note("controller", child.pid)

def pytest_sessionfinish(session):
    """After this process's leak check: is each PID noted on this machine still that process?

    With LH_DROP_REPORT, a worker's leanhost report is lost on its way.
    """
    if "LH_DROP_REPORT" in os.environ and hasattr(session.config, "workeroutput"):
        session.config.workeroutput.pop("leanhost", None)
    here = os.readlink("/proc/self/ns/pid")
    for path in OUT.glob("test_*"):
        if path.suffix:
            continue
        noted = json.loads(path.read_text())
        if noted["ns"] == here:
            found = start_of(noted["pid"])
            alive = found is not None and found[0] == noted["start"] and found[1] not in "ZX"
            (OUT / (path.name + ".after")).write_text("alive" if alive else "gone")
'''

SUITE = r'''
import os, subprocess, sys, threading
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from conftest import HELD, note

def home_records():
    """The servers registered where a launcher that scrubs the environment puts them."""
    registry = Path(os.environ["HOME"], ".cache", "lean-host-mcp", "processes")
    return {int(path.stem) for path in registry.glob("*.json")}

def refserver():
    return StdioServerParameters(command=sys.executable, args=["-m", "pytest_leanhost.refserver"])

async def initialize(ready=None):
    async with stdio_client(refserver()) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            if ready is not None:
                ready.set()
                await anyio.sleep_forever()

def test_forgets_a_sleep():
    child = subprocess.Popen(["sleep", "300"])
    HELD.append(child)
    note("test_forgets_a_sleep", child.pid)

def test_forgets_a_sleep_twin():
    child = subprocess.Popen(["sleep", "300"])
    child.kill()
    child.wait()

def test_leaks_a_server_through_the_sdk():
    before = home_records()
    ready = threading.Event()
    threading.Thread(target=anyio.run, args=(initialize, ready), daemon=True).start()
    assert ready.wait(60)
    (pid,) = home_records() - before
    note("test_leaks_a_server_through_the_sdk", pid)

def test_leaks_a_server_through_the_sdk_twin():
    anyio.run(initialize)
'''


@pytest.fixture
def machines(
    inner: InnerPytest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[RemoteMachines]:
    """Machines for this test's inner runs; whatever a broken run left in them is ended."""
    made = RemoteMachines(inner.pytester.path, monkeypatch)
    out = tmp_path / "noted"
    out.mkdir()
    monkeypatch.setenv("LH_OUT", str(out))
    inner.pytester.makeconftest(CONFTEST)
    try:
        yield made
    finally:
        made.close()


def noted(name: str) -> dict[str, Any]:
    return dict(json.loads((Path(os.environ["LH_OUT"]) / name).read_text()))


def after(name: str) -> str:
    """What the leaking test's own machine saw after its worker's check: gone, or alive."""
    return (Path(os.environ["LH_OUT"]) / f"{name}.after").read_text()


def run(inner: InnerPytest, machines: RemoteMachines, *args: str) -> InnerRun:
    outcome = inner.run("-p", "xdist", f"--basetemp={machines.basetemp}", *args)
    output = outcome.result.stdout.str() + outcome.result.stderr.str()
    assert "INTERNALERROR" not in output, output
    return outcome


def host_of(finding: dict[str, Any]) -> Machine:
    return Machine.from_json(finding["host"])


@pytest.mark.parametrize("where", ["remote", "local"])
def test_leaks_on_two_machines_are_found_once_each_with_their_test_and_host(
    pytester: pytest.Pytester, inner: InnerPytest, machines: RemoteMachines, where: str
) -> None:
    """The same suite, workers on two other machines or plain ``-n 2``: the same findings."""
    pytest.importorskip("mcp")
    pytester.makepyfile(test_suite=SUITE)
    if where == "remote":
        hosts = {"gw0": "remote-1", "gw1": "remote-2"}
        txs = [f"--tx=popen//python={machines.wrapper(host)}" for host in hosts.values()]
        outcome = run(inner, machines, *txs, "--dist=load")
        assert_suite_findings(outcome, hosts)
        assert sorted(machines.namespaces()) == ["remote-1", "remote-2"]
        machines.assert_all_gone()
    else:
        outcome = run(inner, machines, "-n", "2")
        assert_suite_findings(outcome, None)
    inner.assert_nothing_left()


def test_a_worker_through_an_execnet_socket_server_on_another_machine_stands_on_its_own(
    pytester: pytest.Pytester, inner: InnerPytest, machines: RemoteMachines
) -> None:
    """``--tx socket=``: the worker runs inside a socket server started on that machine."""
    pytest.importorskip("mcp")
    pytester.makepyfile(test_suite=SUITE)
    with subprocess.Popen(
        [machines.wrapper("remote-1"), "-u", "-m", "execnet.script.socketserver", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            line = server.stdout.readline()  # ... Entering Accept loop ('127.0.0.1', PORT)
            port = int(line.rstrip().rstrip(")").rpartition(" ")[2])
            # xdist takes a socket worker's path arguments for ones to copy: none is given.
            tx = f"--tx=socket=127.0.0.1:{port}//chdir={pytester.path}"
            outcome = run(inner, machines, tx, "--dist=load", "-o", "testpaths=test_suite.py")
            assert_suite_findings(outcome, {"gw0": "remote-1"})
        finally:
            machines.close()  # the server's machine, and the server with it
    machines.assert_all_gone()
    inner.assert_nothing_left()


def assert_suite_findings(outcome: InnerRun, hosts: dict[str, str] | None) -> None:
    """SUITE's two leaks, once each, with their test, PID and host (``hosts`` by worker, or
    None: this machine); both gone on their own machine; no clean twin named."""
    result, findings = outcome.result, outcome.report["findings"]
    out = result.stdout.str()
    assert result.ret == 1, out
    assert sorted((f["kind"], f["nodeid"]) for f in findings) == [
        ("leaked_process", "test_suite.py::test_forgets_a_sleep"),
        ("leaked_server", "test_suite.py::test_leaks_a_server_through_the_sdk"),
    ], out
    for finding in findings:
        name = finding["nodeid"].split("::")[1]
        assert finding["pid"] == noted(name)["pid"]
        assert finding["action"] == "terminated"
        assert after(name) == "gone"  # its own machine saw it end, after its worker's check
        assert host_of(finding).hostname == noted(name)["host"]
        if hosts is None:
            assert host_of(finding) == this_machine()
        else:
            assert host_of(finding).hostname == hosts[finding["worker"]]
            assert host_of(finding).pid_namespace == noted(name)["ns"]
            assert f"worker={finding['worker']} host={hosts[finding['worker']]}" in out
    if hosts is None:
        assert " host=" not in out


ONE_SLEEP = r"""
import subprocess
from conftest import HELD, note

def test_forgets_a_sleep():
    child = subprocess.Popen(["sleep", "300"])
    HELD.append(child)
    note("test_forgets_a_sleep", child.pid)
"""


def test_a_worker_in_a_pid_namespace_of_its_own_is_told_apart_under_the_same_host_name(
    pytester: pytest.Pytester, inner: InnerPytest, machines: RemoteMachines
) -> None:
    """The issue's "pid=4, on which machine?": the line names the worker's PID namespace."""
    pytester.makepyfile(test_one=ONE_SLEEP)
    here = this_machine()
    tx = f"--tx=popen//python={machines.wrapper(here.hostname)}"
    outcome = run(inner, machines, tx, "--dist=load")
    out = outcome.result.stdout.str()

    assert outcome.result.ret == 1, out
    (finding,) = outcome.report["findings"]
    sleep = noted("test_forgets_a_sleep")
    assert finding["nodeid"] == "test_one.py::test_forgets_a_sleep"
    assert finding["pid"] == sleep["pid"]
    assert host_of(finding).hostname == here.hostname
    assert host_of(finding).pid_namespace == sleep["ns"] != here.pid_namespace
    assert f"pid={sleep['pid']} transport=- action=terminated worker=gw0" in out
    assert f"worker=gw0 host={here.hostname}({sleep['ns']})" in out
    assert after("test_forgets_a_sleep") == "gone"
    machines.assert_all_gone()
    inner.assert_nothing_left()


DIES = r"""
import os, signal, subprocess
from conftest import HELD, note

def test_before():
    pass

def test_dies_with_a_sleep():
    child = subprocess.Popen(["sleep", "300"])
    HELD.append(child)
    note("test_dies_with_a_sleep", child.pid)
    os.kill(os.getpid(), signal.SIGKILL)

def test_after():
    pass
"""


def test_a_remote_worker_killed_in_a_test_is_named_with_its_host_and_fails_the_run(
    pytester: pytest.Pytester, inner: InnerPytest, machines: RemoteMachines
) -> None:
    pytester.makepyfile(test_dies=DIES)
    tx = f"--tx=popen//python={machines.wrapper('remote-1')}"
    outcome = run(inner, machines, tx, "--dist=load", "-p", "no:randomly")
    out = outcome.result.stdout.str()

    assert outcome.result.ret == 1, out
    line = (
        "leanhost: worker gw0 on remote-1 died while running test_dies.py::test_dies_with_a_sleep;"
        " its processes there cannot be checked from this machine, so its leaks are unknown"
    )
    assert out.splitlines().count(line) == 1, out
    assert [li for li in out.splitlines() if li.startswith("leanhost: worker")] == [line]
    # Nothing of that machine is reported from here: its PIDs mean nothing on this one.
    assert outcome.report["findings"] == []
    assert noted("test_dies_with_a_sleep")["host"] == "remote-1"
    assert len(machines.namespaces()["remote-1"]) == 2  # xdist replaced the dead worker
    machines.assert_all_gone()  # its machine went down with its init, the sleep with it
    inner.assert_nothing_left()


def test_a_remote_worker_whose_report_is_lost_fails_the_run(
    pytester: pytest.Pytester,
    inner: InnerPytest,
    machines: RemoteMachines,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LH_DROP_REPORT", "1")
    pytester.makepyfile(test_clean="def test_clean():\n    pass\n")
    tx = f"--tx=popen//python={machines.wrapper('remote-1')}"
    outcome = run(inner, machines, tx, "--dist=load")
    out = outcome.result.stdout.str()

    assert outcome.result.ret == 1, out
    assert (
        "leanhost: worker gw0 on remote-1 sent no report; its processes there cannot be"
        " checked from this machine, so its leaks are unknown"
    ) in out.splitlines()
    machines.assert_all_gone()


SAME_PIDS = r'''
import os, subprocess
from pathlib import Path
from conftest import HELD, OUT, note

def spawn_as(pid):
    """A process of this machine with PID ``pid``: the namespace's next PID, set by hand."""
    for _ in range(50):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        child = subprocess.Popen(["sleep", "300"])
        if child.pid == pid:
            HELD.append(child)
            return child
        child.kill()
        child.wait()
    raise AssertionError(f"no process got PID {pid} here")

def test_leaks_the_pid_of_a_bystander_over_there():
    child = spawn_as(int(os.environ["LH_BYSTANDER_PID"]))
    note("test_leaks_the_pid_of_a_bystander_over_there", child.pid)

def test_leaks_the_pid_of_the_controller_s_own_leak():
    child = spawn_as(int(__import__("json").loads((OUT / "controller").read_text())["pid"]))
    note("test_leaks_the_pid_of_the_controller_s_own_leak", child.pid)
'''

# A process that writes down every signal it gets (SIGKILL cannot be caught: it would be gone).
BYSTANDER = r"""
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
for number in set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}:
    signal.signal(number, lambda n, frame: log.write(f"{n}\n"))
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_a_pid_from_another_machine_is_never_signalled_nor_taken_for_a_local_one(
    pytester: pytest.Pytester,
    inner: InnerPytest,
    machines: RemoteMachines,
    monkeypatch: pytest.MonkeyPatch,
    children: Children,
    tmp_path: Path,
) -> None:
    """A remote worker leaks PID P and PID Q of its machine; on this one, P is a bystander
    and Q the controller's own leak: P is never signalled, and Q is still the controller's."""
    signals = tmp_path / "signals.log"
    signals.touch()
    # Not of the inner run: no PID log, no leanhost marker of it.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LEANHOST_")}
    bystander = children.track(
        subprocess.Popen(
            [sys.executable, "-c", BYSTANDER, str(signals)],
            stdout=subprocess.PIPE,
            text=True,
            env=environ,
        )
    )
    assert bystander.stdout is not None
    assert bystander.stdout.readline() == "ready\n"
    pinned = psutil.Process(bystander.pid)
    monkeypatch.setenv("LH_BYSTANDER_PID", str(bystander.pid))
    monkeypatch.setenv("LH_CONTROLLER_LEAKS", "1")
    pytester.makepyfile(test_same_pids=SAME_PIDS)
    tx = f"--tx=popen//python={machines.wrapper('remote-1')}"

    outcome = run(inner, machines, tx, "--dist=load", "-p", "no:randomly")

    out = outcome.result.stdout.str()
    assert outcome.result.ret == 1, out
    q = noted("controller")["pid"]
    here = this_machine().hostname
    found = sorted(
        (host_of(f).hostname, f["pid"], f["action"], f["nodeid"])
        for f in outcome.report["findings"]
        if host_of(f).hostname == "remote-1"
    )
    assert found == [
        ("remote-1", pid, "terminated", f"test_same_pids.py::{name}")
        for pid, name in sorted(
            [
                (bystander.pid, "test_leaks_the_pid_of_a_bystander_over_there"),
                (q, "test_leaks_the_pid_of_the_controller_s_own_leak"),
            ]
        )
    ], out
    # The controller's own leak is still its own, not hidden by a remote finding's PID.
    (own,) = [f for f in outcome.report["findings"] if host_of(f).hostname != "remote-1"]
    assert (host_of(own), own["pid"], own["action"]) == (this_machine(), q, "terminated")
    assert f"host={here}" not in out
    assert after("test_leaks_the_pid_of_a_bystander_over_there") == "gone"  # over there
    assert pinned.is_running()  # and here, alive
    assert pinned.status() != psutil.STATUS_ZOMBIE
    assert signals.read_text() == ""  # never signalled
    assert poll(lambda: not psutil.pid_exists(q) or _gone(q, noted("controller")["start"]))
    machines.assert_all_gone()
    inner.assert_nothing_left()
    bystander.send_signal(signal.SIGTERM)  # the log's own check: a signal is written down
    assert poll(lambda: signals.read_text() == f"{int(signal.SIGTERM)}\n")


def _gone(pid: int, start: str) -> bool:
    """Whether ``pid`` is no longer the process that started at tick ``start`` (or a zombie)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[19].decode() != start or fields[0] in (b"Z", b"X")
