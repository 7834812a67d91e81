"""The session-end check, run in a real pytest subprocess against real leaking processes.

Each test writes a small suite that leaks one thing, runs it with ``-p leanhost``
in a subprocess, and checks the finding (kind, node id, action), the exit
status, and that afterwards no process the run started is alive (PIDs written down by
the inner processes, checked in /proc by start time: never the plugin's own reader).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.inner_runs import InnerPytest

# Inner-suite helpers: a registering stdio server held open by the test.
SERVER = '''
import subprocess, sys
SERVER_CODE = """
import sys, time
from pytest_leanhost.record import register_server_process
reg = register_server_process("stdio")
print(reg.record.pid, flush=True)
time.sleep(120) if sys.argv[1:] == ["sleep"] else sys.stdin.read()
"""
HELD = []

def start_server(*args):
    child = subprocess.Popen([sys.executable, "-c", SERVER_CODE, *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert int(child.stdout.readline()) == child.pid
    HELD.append(child)
    return child
'''


def run_suite(inner: InnerPytest, body: str, *args: str) -> tuple[Any, dict[str, Any]]:
    """Run ``body`` as a test module with the plugin; returns the result and the JSON report."""
    inner.pytester.makepyfile(test_suite=SERVER + body)
    run = inner.run(*args)
    return run.result, run.report


def assert_nothing_left(inner: InnerPytest, data: dict[str, Any]) -> None:
    """No process the run started is alive, no finding's record remains."""
    inner.assert_nothing_left()
    for finding in data["findings"]:
        if finding["record"] is not None and finding["action"] != "none":
            assert not Path(finding["record"]).exists()


def kinds(data: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((f["kind"], f["nodeid"]) for f in data["findings"])


PLANT = """
import os, time
from pathlib import Path
from pytest_leanhost.files import write_atomically
from pytest_leanhost.record import ProcessRecord

def plant(pid, started_millis, owner=None, registry_mode=None):
    registry = Path(os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"])
    registry.mkdir(parents=True, exist_ok=True)
    if registry_mode is not None:
        registry.chmod(registry_mode)
    path = registry / f"{pid}.json"
    record = ProcessRecord(pid, "/bin/x", "/", started_millis, None, None, "stdio")
    write_atomically(path, record.to_json_bytes())
    if owner is not None:
        os.chown(path, owner, owner)
"""


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process the inner run did not start; killed by exact PID at the end."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_clean_suite_passes_with_no_findings(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    result, data = run_suite(
        inner,
        """
def test_server_closed_properly():
    child = start_server()
    child.stdin.close()
    assert child.wait(10) == 0
    child.stdout.close()
    HELD.remove(child)

def test_nothing():
    pass
""",
    )
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["leanhost: no leaks (2 tests, * processes seen, 1 registries, checked in * ms)"]
    )
    assert data["findings"] == []
    assert data["registries_checked"] == 1
    assert data["interrupted"] is False


def test_a_held_server_is_a_leaked_server_and_is_terminated(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    result, data = run_suite(inner, "def test_leaks_server():\n    start_server()\n")
    assert result.ret == 1
    assert kinds(data) == [("leaked_server", "test_suite.py::test_leaks_server")]
    (finding,) = data["findings"]
    assert finding["transport"] == "stdio"
    assert finding["action"] == "terminated"
    result.stdout.fnmatch_lines(
        [
            "*= leanhost =*",
            "test_suite.py::test_leaks_server: 1 leak(s)",
            "leaked_server test_suite.py::test_leaks_server pid=* transport=stdio"
            " action=terminated",
            "  * started in call)",
            "  record=*",
        ]
    )
    assert "1 passed" in result.stdout.str()
    assert_nothing_left(inner, data)


def test_a_forgotten_subprocess_is_a_leaked_process(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = """
def test_forgets_a_child():
    HELD.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
"""
    result, data = run_suite(inner, body)
    assert result.ret == 1
    assert kinds(data) == [("leaked_process", "test_suite.py::test_forgets_a_child")]
    assert data["findings"][0]["record"] is None
    assert data["findings"][0]["action"] == "terminated"
    assert_nothing_left(inner, data)


def test_a_daemonized_grandchild_is_found_by_its_marker(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = """
def test_double_fork():
    code = "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    time.sleep(120)"
    subprocess.run([sys.executable, "-c", code], check=True)
"""
    result, data = run_suite(inner, body)
    assert result.ret == 1
    assert kinds(data) == [("leaked_process", "test_suite.py::test_double_fork")]
    assert_nothing_left(inner, data)


def test_a_killed_server_leaves_a_stale_record_that_is_removed(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = """
def test_kills_its_server():
    child = start_server()
    child.kill()
    child.wait()
"""
    result, data = run_suite(inner, body)
    assert result.ret == 1
    assert kinds(data) == [("stale_record", "test_suite.py::test_kills_its_server")]
    assert data["findings"][0]["action"] == "record_removed"
    assert_nothing_left(inner, data)


def test_a_server_whose_client_died_is_an_orphaned_server(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = '''
def test_orphans_a_server():
    launcher = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], "sleep"], stdout=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.stdout.readline().decode().strip(), flush=True)
"""
    out = subprocess.run([sys.executable, "-c", launcher, SERVER_CODE], capture_output=True,
                         text=True, check=True).stdout
    assert int(out)
'''
    result, data = run_suite(inner, body)
    assert result.ret == 1
    assert kinds(data) == [("orphaned_server", "test_suite.py::test_orphans_a_server")]
    assert data["findings"][0]["action"] == "terminated"
    assert_nothing_left(inner, data)


def test_a_file_that_is_no_record_is_a_corrupt_record(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = """
import os
def test_writes_garbage():
    registry = os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"]
    os.makedirs(registry, exist_ok=True)
    with open(os.path.join(registry, "123.json"), "w") as handle:
        handle.write("{ not json")
"""
    result, data = run_suite(inner, body)
    assert result.ret == 1
    assert kinds(data) == [("corrupt_record", "test_suite.py::test_writes_garbage")]
    (finding,) = data["findings"]
    assert finding["action"] == "record_removed"
    assert finding["pid"] == 123
    assert finding["detail"].startswith("not JSON")


def test_a_planted_record_of_a_foreign_process_fails_the_run_but_is_never_signalled(
    pytester: pytest.Pytester, inner: InnerPytest, stranger: subprocess.Popen[bytes]
) -> None:
    body = (
        PLANT + f"def test_plants_a_record():\n    plant({stranger.pid}, int(time.time() * 1000))\n"
    )
    result, data = run_suite(inner, body)
    assert result.ret == 1
    assert kinds(data) == [("leaked_server", "test_suite.py::test_plants_a_record")]
    assert data["findings"][0]["action"] == "none"
    assert stranger.poll() is None  # alive: the run did not start it, so never signalled


def test_allowed_kinds_are_reported_and_cleaned_but_do_not_fail(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = """
import pytest
@pytest.mark.leanhost_allow("leaked_server")
def test_allowed():
    start_server()

@pytest.mark.leanhost_allow()
def test_all_allowed():
    HELD.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
"""
    result, data = run_suite(inner, body)
    assert result.ret == 0
    assert [f["allowed"] for f in data["findings"]] == [True, True]
    assert {f["action"] for f in data["findings"]} == {"terminated"}
    result.stdout.fnmatch_lines(["leaked_server * [[]allowed[]]"])
    assert_nothing_left(inner, data)


def test_an_allowed_kind_does_not_cover_another_kind(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = """
import pytest
@pytest.mark.leanhost_allow("stale_record")
def test_not_allowed():
    start_server()
"""
    result, data = run_suite(inner, body)
    assert result.ret == 1
    assert data["findings"][0]["allowed"] is False


def test_a_descendant_that_exits_within_the_grace_is_not_a_leak(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = """
def test_short_lived_helper():
    HELD.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"]))
"""
    result, data = run_suite(inner, body, "-o", "leanhost_grace=1")
    assert result.ret == 0, result.stdout.str()
    assert data["findings"] == []


def test_keep_leaks_reports_without_cleaning(pytester: pytest.Pytester, inner: InnerPytest) -> None:
    result, data = run_suite(
        inner, "def test_leaks_server():\n    start_server('sleep')\n", "--leanhost-keep-leaks"
    )
    (finding,) = data["findings"]
    try:
        assert result.ret == 1
        assert finding["action"] == "none"
        assert Path(finding["record"]).exists()
    finally:
        # The run left it on purpose; it wrote its PID down, so it is ours to stop.
        assert [written.pid for written in inner.leftovers()] == [finding["pid"]]
        inner.kill_leftovers()


def test_a_failing_test_still_gets_its_leaks_found(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = "def test_fails():\n    start_server()\n    assert False\n"
    result, data = run_suite(inner, body)
    assert result.ret == 1
    assert kinds(data) == [("leaked_server", "test_suite.py::test_fails")]
    assert_nothing_left(inner, data)


def test_leaks_are_found_under_xdist(pytester: pytest.Pytester, inner: InnerPytest) -> None:
    body = """
def test_one():
    start_server()

def test_two():
    HELD.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))

def test_clean():
    pass
"""
    result, data = run_suite(inner, body, "-p", "xdist", "-n", "2")
    assert result.ret == 1
    assert kinds(data) == [
        ("leaked_process", "test_suite.py::test_two"),
        ("leaked_server", "test_suite.py::test_one"),
    ]
    assert {f["worker"] for f in data["findings"]} <= {"gw0", "gw1"}
    assert_nothing_left(inner, data)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a record another owner")
def test_a_record_owned_by_another_user_is_foreign_and_never_acted_on(
    pytester: pytest.Pytester, stranger: subprocess.Popen[bytes], inner: InnerPytest
) -> None:
    body = PLANT + (
        f"def test_plants():\n    plant({stranger.pid}, int(time.time() * 1000), owner=65534)\n"
    )
    result, data = run_suite(inner, body)
    assert result.ret == 1
    (finding,) = data["findings"]
    assert finding["kind"] == "leaked_server"
    assert finding["detail"] == "foreign: record owned by uid 65534"
    assert finding["action"] == "none"
    assert Path(finding["record"]).exists()  # not removed
    assert stranger.poll() is None  # not signalled


def test_a_record_in_a_registry_others_can_write_is_foreign(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = PLANT + "def test_plants():\n    plant(4_000_000, 1, registry_mode=0o777)\n"
    result, data = run_suite(inner, body)
    assert result.ret == 1
    (finding,) = data["findings"]
    assert finding["kind"] == "stale_record"
    assert finding["detail"] == "foreign: registry writable by other users"
    assert finding["action"] == "none"
    assert Path(finding["record"]).exists()


def test_a_pid_reused_by_a_stranger_is_a_stale_record_and_the_stranger_lives(
    pytester: pytest.Pytester, stranger: subprocess.Popen[bytes], inner: InnerPytest
) -> None:
    created = psutil.Process(stranger.pid).create_time()
    body = PLANT + f"def test_plants():\n    plant({stranger.pid}, {int((created - 60) * 1000)})\n"
    result, data = run_suite(inner, body)
    assert result.ret == 1
    (finding,) = data["findings"]
    assert (finding["kind"], finding["action"]) == ("stale_record", "record_removed")
    assert finding["detail"] == "PID reused by a younger process"
    assert stranger.poll() is None


def test_a_registry_that_cannot_be_read_is_a_finding_not_a_crash(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    body = """
import os
def test_file_for_a_registry():
    os.makedirs(os.path.dirname(os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"]), exist_ok=True)
    with open(os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"], "w") as handle:
        handle.write("not a directory")

def test_link_for_a_registry(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.makedirs(os.path.dirname(os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"]), exist_ok=True)
    os.symlink(tmp_path / "elsewhere", os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"])
"""
    result, data = run_suite(inner, body)
    assert result.ret == 1
    found = sorted((f["kind"], f["nodeid"], f["detail"]) for f in data["findings"])
    assert found == [
        (
            "corrupt_record",
            "test_suite.py::test_file_for_a_registry",
            "registry unreadable: not a directory",
        ),
        (
            "corrupt_record",
            "test_suite.py::test_link_for_a_registry",
            "registry unreadable: symlink (not followed)",
        ),
    ]
    result.stdout.fnmatch_lines(["*2 passed*"])
