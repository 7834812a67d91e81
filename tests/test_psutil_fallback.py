"""The psutil fallback (the code macOS runs) agrees with the /proc readers, and is run.

``LEANHOST_FORCE_PSUTIL=1`` makes the process table and the environment reader
use psutil also on Linux. One snapshot each way of the same real children (a
live one, a zombie, one with the plugin's markers in a custom environment and
its own process group) must agree; and a real inner run with the switch set
still finds a leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_leanhost.core.identity import same_create_time
from tests.children import poll
from tests.inner_runs import InnerPytest
from tests.pidlog_site.leanhost_tests_pidlog import start_and_state

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="compares against the /proc readers"
)

# Prints what the process table and the marker reader say of the PIDs in argv[1],
# and which readers the switch chose, as JSON.
SNAPSHOT = """
import json, sys
from pytest_leanhost.core import ownership, probe
table = probe.ProcessTable.snapshot()
rows = {}
for pid in map(int, sys.argv[1].split(",")):
    info = table.get(pid)
    rows[pid] = None if info is None else [info.ppid, info.pgid, info.create_time, info.zombie]
marked = ownership.find_marked_processes(sys.argv[2], table)
print(json.dumps({
    "forced": [probe.FORCE_PSUTIL, ownership.FORCE_PSUTIL],
    "table": rows,
    "marked": {pid: [m.create_time, m.nodeid, m.worker] for pid, m in marked.items()},
}))
"""

READS_STDIN = [sys.executable, "-c", "import sys; sys.stdin.read()"]
SESSION = "lh-fallback-" + os.urandom(4).hex()


@pytest.fixture
def kids() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """A live child, a zombie (exited, not reaped) and a marked child in its own group."""
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        started["live"] = subprocess.Popen(READS_STDIN, stdin=subprocess.PIPE)
        marked_env = {
            **os.environ,
            "LEANHOST_SESSION": SESSION,
            "LEANHOST_NODEID": "tests/x.py::test_marked",
            "LEANHOST_WORKER": "gw7",
        }
        started["marked"] = subprocess.Popen(
            READS_STDIN, stdin=subprocess.PIPE, env=marked_env, start_new_session=True
        )
        started["zombie"] = subprocess.Popen([sys.executable, "-c", "pass"])
        zombie = started["zombie"].pid
        # Not reaped (no poll or wait) until teardown, so it stays a zombie.
        assert poll(lambda: (start_and_state(zombie) or ("", ""))[1] == "Z", timeout=30)
        yield started
    finally:
        for child in started.values():
            if child.stdin is not None:
                child.stdin.close()
            child.wait(10)


def snapshot(pids: list[int], forced: bool) -> dict[str, Any]:
    env = {**os.environ, "LEANHOST_FORCE_PSUTIL": "1" if forced else "0"}
    args = [sys.executable, "-c", SNAPSHOT, ",".join(map(str, pids)), SESSION]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    data: dict[str, Any] = json.loads(out)
    assert data["forced"] == [forced, forced]
    return data


def test_the_psutil_readers_agree_with_the_proc_readers(
    kids: dict[str, subprocess.Popen[bytes]],
) -> None:
    pids = [child.pid for child in kids.values()]
    by_proc, by_psutil = snapshot(pids, forced=False), snapshot(pids, forced=True)
    for name, child in kids.items():
        proc_row, psutil_row = by_proc["table"][str(child.pid)], by_psutil["table"][str(child.pid)]
        assert proc_row is not None, name
        assert psutil_row is not None, name
        ppid, pgid, created, zombie = proc_row
        assert (ppid, zombie) == (os.getpid(), name == "zombie"), name
        assert pgid == (child.pid if name == "marked" else os.getpgid(0)), name
        assert psutil_row[:2] == [ppid, pgid], name
        assert psutil_row[3] == zombie, name
        assert same_create_time(psutil_row[2], created), name
    marked = str(kids["marked"].pid)
    for data in (by_proc, by_psutil):
        assert list(data["marked"]) == [marked]
        assert data["marked"][marked][1:] == ["tests/x.py::test_marked", "gw7"]
    assert same_create_time(by_proc["marked"][marked][0], by_psutil["marked"][marked][0])


FORGETS_A_CHILD = """
import subprocess, sys
from pytest_leanhost.core import ownership, probe
HELD = []

def test_forgets_a_child():
    assert probe.FORCE_PSUTIL and ownership.FORCE_PSUTIL
    HELD.append(subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE))
"""


def test_a_run_with_the_psutil_readers_forced_still_finds_a_leak(
    pytester: pytest.Pytester, inner: InnerPytest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEANHOST_FORCE_PSUTIL", "1")
    pytester.makepyfile(test_forced=FORGETS_A_CHILD)
    run = inner.run()
    assert run.result.ret == 1, run.result.stdout.str()
    run.result.assert_outcomes(passed=1)
    assert run.findings == [
        ("leaked_process", "test_forced.py::test_forgets_a_child", "terminated")
    ]
    inner.assert_nothing_left(run)
