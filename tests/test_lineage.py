"""Lineage: a subreaper keeps every detaching process in its tree, and each is tied to its test.

The subreaper is a real child python (tests/lineage_subreaper.py), so the test
runner itself never changes. The tests read /proc themselves to see where each
process ended up; the recorder's answers are judged against those facts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_leanhost.core.lineage import (
    Lineage,
    Span,
    boottime_ticks,
    clock_ticks_per_second,
    direct_children,
    start_tick,
    subreaper_supported,
)
from tests.children import poll

pytestmark = pytest.mark.skipif(not subreaper_supported(), reason="Linux subreapers only")

ROOT = Path(__file__).resolve().parent.parent


def _ppid(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2 :].split()[1])


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        pid = _ppid(pid)
        chain.append(pid)
    return chain


def _alive(pid: int) -> bool:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] != b"Z"


class Subreaper:
    """One run of the subreaper child; after it ends, no process it started is left."""

    def __init__(self, scenario: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lineage_subreaper", scenario],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the subreaper child died before reporting"
        self.result: dict[str, Any] = json.loads(line)
        self.descendants = [
            (p.pid, p.create_time()) for p in psutil.Process(self.proc.pid).children(True)
        ]

    def close(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            # Safety net: whatever escaped is killed by exact PID, create time checked.
            for pid, created in self.descendants:
                try:
                    leftover = psutil.Process(pid)
                    if leftover.create_time() == created:
                        leftover.kill()
                except psutil.Error:
                    pass


@pytest.fixture
def subreaper() -> Iterator[Any]:
    runs: list[Subreaper] = []

    def start(scenario: str) -> Subreaper:
        runs.append(Subreaper(scenario))
        return runs[-1]

    try:
        yield start
    finally:
        for run in runs:
            run.close()


def test_every_detaching_process_stays_below_the_subreaper(subreaper: Any) -> None:
    run = subreaper("detaching")
    assert run.result["subreaper"] is True
    root = run.result["pid"]
    for name, pid in run.result["started"].items():
        assert _alive(pid), name
        assert root in _ancestors(pid), f"{name} (pid {pid}) left the subreaper's tree"
    # The ones whose parents exited were adopted by the subreaper, not by PID 1.
    for name in ("setsid_double_fork", "orphaned_grandchild"):
        assert _ppid(run.result["started"][name]) == root, name
    # Dropped environments really dropped the markers the old check relied on.
    environ = Path(f"/proc/{run.result['started']['popen_env_empty']}/environ").read_bytes()
    assert environ == b""


def test_each_detaching_process_is_attributed_to_the_test_that_started_it(
    subreaper: Any,
) -> None:
    run = subreaper("detaching")
    attributed = run.result["attributed"]
    for name in run.result["started"]:
        assert attributed[name] == [f"t::{name}"], name
    assert "t::nothing" not in {nodeid for owners in attributed.values() for nodeid in owners}


def test_adopted_worker_belongs_to_its_servers_test_and_only_it_is_reaped(
    subreaper: Any,
) -> None:
    run = subreaper("adopted")
    result = run.result
    assert result["attributed_server"] == ["t::starts_server"]
    assert result["attributed_worker"] == ["t::starts_server"]
    # The adopted worker was reaped by the plugin; the Popen child was left to its waiter.
    assert result["reaped"] == [result["worker"]]
    assert result["worker_gone"] is True
    assert result["popen_returncode"] == -9


def test_waiters_keep_exit_statuses_under_a_subreaper(subreaper: Any) -> None:
    run = subreaper("exit_statuses")
    assert run.result["subreaper"] is True
    assert run.result["popen"] == 3
    assert run.result["asyncio"] == 3


def test_become_subreaper_is_not_inherited_by_a_fork() -> None:
    code = (
        "import os, sys\n"
        "from pytest_leanhost.core.lineage import become_subreaper, is_subreaper\n"
        "assert not is_subreaper() and become_subreaper() and is_subreaper()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if not is_subreaper() else 7)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=30).returncode == 0


def test_boottime_ticks_and_start_ticks_share_a_clock() -> None:
    before = boottime_ticks()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        after = boottime_ticks()
        tick = start_tick(child.pid)
        assert tick is not None
        assert before <= tick <= after
        assert child.pid in direct_children(os.getpid())
    finally:
        child.kill()
        child.wait()
        assert child.stdin is not None
        child.stdin.close()
    assert clock_ticks_per_second() > 0


def test_a_tick_shared_by_two_spans_names_both() -> None:
    lineage = Lineage(clock=lambda: 100)  # both boundaries fall on one tick
    lineage.begin("t::a")
    lineage.end("t::a")
    lineage.begin("t::b")
    lineage.end("t::b")
    assert lineage.spans == (Span("t::a", 100, 100), Span("t::b", 100, 100))
    assert lineage.spans_holding(100) == ("t::a", "t::b")
    assert lineage.spans_holding(101) == ()
    assert Span("t::open", 5).holds(10**9)


def test_a_process_started_at_session_end_climbs_to_its_known_ancestor(
    tmp_path: Path,
) -> None:
    # No adoption is involved, so the test runner need not be a subreaper.
    lineage = Lineage()
    lineage.begin("t::starts_parent")
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys\n"
            "sys.stdin.readline()\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " stdin=subprocess.DEVNULL)\n"
            "print(c.pid, flush=True)\n"
            "sys.stdin.readline()\n"
            "c.kill(); c.wait()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdin is not None
    assert parent.stdout is not None
    try:
        lineage.end("t::starts_parent")
        lineage.begin("t::other")
        lineage.end("t::other")
        parent.stdin.write("go\n")
        parent.stdin.flush()
        child = int(parent.stdout.readline())
        assert _ppid(child) == parent.pid
        assert lineage.attribute(child) == ("t::starts_parent",)
        assert lineage.attribute(parent.pid) == ("t::starts_parent",)
        assert lineage.attribute(os.getppid()) == ()
    finally:
        parent.stdin.close()
        if not poll(lambda: parent.poll() is not None, timeout=10):
            parent.kill()
        parent.wait()
        parent.stdout.close()


def test_a_boundary_walks_only_when_the_kernel_handed_out_a_pid() -> None:
    # The runner's own threads (xdist's execnet among them) move the counter too:
    # a walk whenever they do is the price of never missing a process.
    lineage = Lineage()
    lineage.boundary()
    walks = lineage.walks
    for _ in range(50):
        lineage.boundary()  # nothing created in between: no walk, or one per stray thread
    assert lineage.walks - walks < 50
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        before = lineage.walks
        lineage.boundary()
        assert lineage.walks == before + 1
        own = [seen.pid for seen in lineage.seen()]
        assert child.pid in own  # judged against the kernel: the child's start tick
        assert lineage.lookup(child.pid, start_tick(child.pid) or -1) is not None
    finally:
        child.kill()
        child.wait()


def test_without_the_counter_every_boundary_walks() -> None:
    lineage = Lineage(last_pid=lambda: None)
    before = lineage.walks
    for _ in range(5):
        lineage.boundary()
    assert lineage.walks == before + 5


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_what_starts_between_two_tests_is_the_next_tests_without_a_walk() -> None:
    lineage = Lineage()
    lineage.begin("t::a")
    lineage.end("t::a")
    walks = lineage.walks
    between = _sleeper()  # in pytest's loop only another plugin's protocol hook runs here
    try:
        lineage.begin("t::b")
        assert lineage.walks == walks  # no walk of its own: nothing of a test ran since
        lineage.end("t::b")
        assert lineage.attribute(between.pid) == ("t::b",)
    finally:
        between.kill()
        between.wait()


def test_what_started_before_the_first_test_is_no_tests() -> None:
    lineage = Lineage()
    at_collection = _sleeper()  # a module that starts a process when it is imported
    try:
        lineage.begin("t::first")  # not right after an end: the walk sees it, outside any span
        lineage.end("t::first")
        assert lineage.attribute(at_collection.pid) == ()
    finally:
        at_collection.kill()
        at_collection.wait()
