"""The one reader of each ``/proc`` fact, against the tests' own eyes and psutil.

core/procfs.py reads a process's children, the boot time and the clock of process
start ticks for every module (the lineage walk, the probe's table, the phase
clock). Each reader here is checked against what the test itself started and
what psutil reports, never against another of the plugin's readers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import psutil

from pytest_leanhost.core.identity import same_create_time
from pytest_leanhost.core.lineage import direct_children, tick_to_unix
from pytest_leanhost.core.probe import ProcessTable, create_time_of
from pytest_leanhost.core.procfs import boot_time, clock_ticks_per_second, read_children
from pytest_leanhost.plugin.phases import start_clock
from tests.children import Children
from tests.proc import linux_only, proc_start_ticks

pytestmark = linux_only

READS_STDIN = [sys.executable, "-c", "import sys; sys.stdin.read()"]


def test_children_forked_by_two_threads_are_all_read(children: Children) -> None:
    # A child belongs to the thread that forked it: every task's list must be read.
    from_main = children.track(subprocess.Popen(READS_STDIN, stdin=subprocess.PIPE))
    started: list[subprocess.Popen[bytes]] = []
    done = threading.Event()

    def fork_and_wait() -> None:
        started.append(children.track(subprocess.Popen(READS_STDIN, stdin=subprocess.PIPE)))
        done.wait(30)  # the thread stays alive while its child is read

    thread = threading.Thread(target=fork_and_wait)
    thread.start()
    try:
        assert thread.is_alive()
        while not started:
            thread.join(0.01)
        from_thread = started[0]
        ours = {from_main.pid, from_thread.pid}
        found = read_children(os.getpid())
        assert found is not None
        assert ours <= set(found)
        assert found == sorted(found)
        assert ours <= set(direct_children(os.getpid()))  # the lineage walk reads the same
        assert ours <= {child.pid for child in psutil.Process().children()}
    finally:
        done.set()
        thread.join(30)


def test_a_process_that_is_gone_has_no_children_to_read(children: Children) -> None:
    child = children.track(subprocess.Popen(["true"]))
    child.wait(10)
    assert read_children(child.pid) is None
    assert direct_children(child.pid) == []


def test_create_times_are_start_ticks_plus_the_boot_time_as_psutil_computes_them(
    children: Children,
) -> None:
    child = children.track(subprocess.Popen(READS_STDIN, stdin=subprocess.PIPE))
    assert boot_time() == psutil.boot_time()
    ticks = proc_start_ticks(child.pid)
    assert ticks is not None
    expected = psutil.Process(child.pid).create_time()
    assert same_create_time(ticks / clock_ticks_per_second() + boot_time(), expected)
    assert same_create_time(create_time_of(child.pid), expected)  # the probe's reader
    info = ProcessTable.snapshot().get(child.pid)
    assert info is not None
    assert same_create_time(info.create_time, expected)  # the probe's table
    assert same_create_time(tick_to_unix(ticks), expected)  # the lineage's conversion


def test_the_phase_clock_counts_as_process_start_ticks_do(children: Children) -> None:
    clock, per_second = start_clock(), clock_ticks_per_second()
    before = int(clock() * per_second)
    child = children.track(subprocess.Popen(READS_STDIN, stdin=subprocess.PIPE))
    after = int(clock() * per_second)
    tick = proc_start_ticks(child.pid)
    assert tick is not None
    assert before <= tick <= after
