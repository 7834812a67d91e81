"""A leak report a person can act on: each leaked process's command line, phase, ancestry, escape.

Every test runs a real inner pytest that leaks real processes, and reads the
finding's ``process`` object in the JSON report (validated against the shipped
schema by :class:`tests.inner_runs.InnerPytest`) and the ``leanhost`` section.
What the inner test itself observed (PIDs, parents) it writes down, so the
outer test compares the report with its own eyes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.inner_runs import InnerPytest
from tests.proc import linux_only

SLEEP = shutil.which("sleep") or "/bin/sleep"

# Phases are told apart by a process's start tick (10 ms here): after starting a
# child, the inner code waits (polling) until the clock has left that tick, so the
# phase that started it also ends after it, as any real phase that does more would.
HELPERS = f"""
import os, subprocess, time
from pathlib import Path
from pytest_leanhost.core.lineage import boottime_ticks, start_tick
from pytest_leanhost.stopping import poll_until

HELD = []

def past_start_tick(pid):
    tick = start_tick(pid)
    assert poll_until(lambda: boottime_ticks() > tick, timeout=5)

def forgotten_sleep(cwd=None):
    child = subprocess.Popen([{SLEEP!r}, "300"], cwd=cwd)
    HELD.append(child)
    past_start_tick(child.pid)
    return child

def write_down(name, text):
    out = Path(os.environ["OBSERVED"]) / name
    out.write_text(str(text))
"""


def only_finding(report: dict[str, Any], kind: str = "leaked_process") -> dict[str, Any]:
    [finding] = [f for f in report["findings"] if f["kind"] == kind]
    assert isinstance(finding, dict)
    return finding


def observed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "observed"
    directory.mkdir()
    monkeypatch.setenv("OBSERVED", str(directory))
    return directory


@linux_only
def test_a_forgotten_sleep_in_a_test_body_is_named_by_command_line_cwd_and_phase_call(
    inner: InnerPytest, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    inner.pytester.makepyfile(
        test_body=HELPERS
        + f"""
def test_forgets_a_sleep():
    forgotten_sleep(cwd={str(workdir)!r})
    held = time.monotonic() + 0.3  # the sleep is at least this old when the check sees it
    assert poll_until(lambda: time.monotonic() >= held, timeout=5)
"""
    )
    run = inner.run()
    finding = only_finding(run.report)
    process = finding["process"]
    assert finding["nodeid"] == "test_body.py::test_forgets_a_sleep"
    assert process["cmdline"] == [SLEEP, "300"]
    assert process["cwd"] == str(workdir)
    assert process["phase"] == "call"
    assert process["started_in"] == "test_body.py::test_forgets_a_sleep"
    assert process["age_seconds"] >= 0.3  # its age at the check: at least what the test held
    assert process["ancestry"][-1]["alive"] is True  # the inner pytest process
    assert run.report["schema_version"] == 3
    assert run.report["earlier_sessions"] == []
    assert run.report["watched_registries"]  # the default registries, listed
    text = run.result.stdout.str()
    assert f"leaked_process test_body.py::test_forgets_a_sleep pid={finding['pid']} " in text
    assert f"  {finding['pid']} {SLEEP} 300  (age " in text
    assert ", started in call)" in text
    run.result.stdout.fnmatch_lines(["*1 passed, 1 leaked in *"])
    inner.assert_nothing_left()


@linux_only
def test_a_fixture_that_leaks_names_phase_setup(inner: InnerPytest) -> None:
    inner.pytester.makepyfile(
        test_fixture=HELPERS
        + """
import pytest

@pytest.fixture
def helper():
    forgotten_sleep()
    yield

def test_uses_a_leaky_fixture(helper):
    pass
"""
    )
    run = inner.run()
    process = only_finding(run.report)["process"]
    assert (process["phase"], process["started_in"]) == (
        "setup",
        "test_fixture.py::test_uses_a_leaky_fixture",
    )
    assert "started in setup)" in run.result.stdout.str()


@linux_only
def test_a_record_only_finding_has_no_process(inner: InnerPytest) -> None:
    inner.pytester.makepyfile(
        test_corrupt="""
import os
from pathlib import Path

def test_writes_half_a_record():
    registry = Path(os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"])
    registry.mkdir(parents=True)
    (registry / "999999999.json").write_text("{")
"""
    )
    run = inner.run()
    finding = only_finding(run.report, "corrupt_record")
    assert finding["process"] is None
    text = run.result.stdout.str()
    # The first line stays short and greppable; the long path is on its own line.
    assert "corrupt_record test_corrupt.py::test_writes_half_a_record pid=999999999 " in text
    assert f"  record={finding['record']}" in text.splitlines()


@linux_only
def test_a_setsid_double_fork_says_new_session_new_process_group_and_daemonized(
    inner: InnerPytest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = observed(tmp_path, monkeypatch)
    inner.pytester.makepyfile(
        test_detach=HELPERS
        + f"""
def parent_of(pid):
    data = Path(f"/proc/{{pid}}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2 :].split()[1])

def test_detaches_a_sleep():
    shell = subprocess.run(
        ["sh", "-c", 'setsid {SLEEP} 300 </dev/null >/dev/null 2>&1 & echo $!'],
        capture_output=True, text=True, check=True,
    )
    pid = int(shell.stdout)
    # setsid execs sleep in the same PID once it has left the session
    assert poll_until(lambda: os.getsid(pid) == pid, timeout=10)
    write_down("pid", pid)
    write_down("parent", parent_of(pid))
    write_down("pytest", os.getpid())
"""
    )
    run = inner.run()
    pid = int((seen / "pid").read_text())
    adopter = int((seen / "parent").read_text())
    finding = only_finding(run.report)
    assert finding["pid"] == pid
    escaped = finding["process"]["escaped"]
    assert {"new_session", "new_process_group", "daemonized"} <= set(escaped)
    # The inner pytest is a subreaper: it adopted the sleep, whose shell died before
    # any test boundary saw it, so nothing proves a reparenting, and none is claimed.
    assert adopter == int((seen / "pytest").read_text())
    assert "reparented" not in escaped
    assert "escaped=new_session,new_process_group,daemonized" in run.result.stdout.str()


@linux_only
def test_a_sleep_whose_parent_died_after_a_test_boundary_saw_it_is_reparented(
    inner: InnerPytest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = observed(tmp_path, monkeypatch)
    inner.pytester.makepyfile(
        test_middle=HELPERS
        + f"""
import signal, sys

MIDDLE = []
HOLD = "import subprocess, sys, time; p = subprocess.Popen([{SLEEP!r}, '300']); " + (
    "print(p.pid, flush=True); time.sleep(300)"
)

def test_a_starts_a_middle_that_holds_a_sleep():
    middle = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE)
    MIDDLE.append(middle)
    pid = int(middle.stdout.readline())
    write_down("pid", pid)
    write_down("middle", middle.pid)

def test_b_kills_the_middle():
    middle = MIDDLE.pop()
    middle.kill()
    middle.wait()  # our own Popen child: we reap it
    middle.stdout.close()
"""
    )
    run = inner.run()
    pid = int((seen / "pid").read_text())
    middle = int((seen / "middle").read_text())
    finding = only_finding(run.report)
    assert finding["pid"] == pid
    assert finding["nodeid"] == "test_middle.py::test_a_starts_a_middle_that_holds_a_sleep"
    process = finding["process"]
    # The end of test_a saw the sleep under its middle; at the check its parent is pytest.
    assert "reparented" in process["escaped"]
    assert process["ancestry"][0]["pid"] == middle
    assert process["ancestry"][0]["alive"] is False


@linux_only
def test_a_server_s_worker_shows_its_server_and_pytest_as_ancestors_and_nests_under_it(
    inner: InnerPytest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = observed(tmp_path, monkeypatch)
    elsewhere = tmp_path / "elsewhere"  # a registry outside the session: no record finding
    inner.pytester.makepyfile(
        test_worker=HELPERS
        + f"""
from pytest_leanhost.client.spawn import spawn_server
from pytest_leanhost.plugin.fixtures import reference_server_command

def test_leaves_a_server_with_a_worker():
    server = spawn_server(reference_server_command(), registry={str(elsewhere)!r})
    HELD.append(server)
    server.initialize()
    worker = server.call_tool("spawn_worker", {{}})["structuredContent"]["pid"]
    write_down("server", server.pid)
    write_down("worker", worker)
    write_down("pytest", os.getpid())
"""
    )
    run = inner.run()
    server, worker, pytest_pid = (
        int((seen / n).read_text()) for n in ("server", "worker", "pytest")
    )
    by_pid = {f["pid"]: f for f in run.report["findings"]}
    assert {server, worker} <= set(by_pid)
    ancestry = by_pid[worker]["process"]["ancestry"]
    assert [a["pid"] for a in ancestry] == [server, pytest_pid]
    assert all(a["alive"] for a in ancestry)
    assert "pytest_leanhost.refserver" in " ".join(ancestry[0]["cmdline"])
    server_detail = by_pid[server]["process"]
    assert worker in [d["pid"] for d in server_detail["descendants"]]
    lines = run.result.stdout.str().splitlines()
    # The worker's own finding is drawn under its server's: one leak, read as one tree.
    [server_line] = [
        i
        for i, line in enumerate(lines)
        if line.startswith(
            f"leaked_process test_worker.py::test_leaves_a_server_with_a_worker pid={server} "
        )
    ]
    nested = [line for line in lines[server_line:] if f" pid={worker} " in line]
    assert nested
    assert nested[0].lstrip().startswith("└─ leaked_process ")
    inner.assert_nothing_left()


@linux_only
def test_an_orphaned_server_whose_launcher_died_unseen_is_reparented_by_its_record(
    inner: InnerPytest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = observed(tmp_path, monkeypatch)
    inner.pytester.makepyfile(
        test_orphan=HELPERS
        + """
import sys
from pytest_leanhost.plugin.fixtures import reference_server_command

LAUNCHER = '''
import os, subprocess, sys, time
server = subprocess.Popen([*sys.argv[2:], "--fault", "ignore-parent-loss"])
record = os.path.join(sys.argv[1], f"{server.pid}.json")
while not os.path.exists(record):
    time.sleep(0.005)
print(server.pid, flush=True)
'''

def test_orphans_a_server():
    registry = os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"]
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, registry, *reference_server_command()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    server = int(launcher.stdout.readline())
    launcher.wait(10)  # it died inside this test: no boundary saw the server under it
    HELD.append(launcher)  # holds the pipe the orphan reads as its stdin
    write_down("server", server)
"""
    )
    run = inner.run()
    server = int((seen / "server").read_text())
    finding = only_finding(run.report, "orphaned_server")
    assert finding["pid"] == server
    # Its record named the launcher as its parent; pytest, the subreaper, is now.
    record = Path(finding["record"])
    assert record.name == f"{server}.json"
    assert "reparented" in finding["process"]["escaped"]
