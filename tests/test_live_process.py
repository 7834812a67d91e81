"""What a leaked process is, read from real processes: facts, escape words, ancestry."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pytest_leanhost.core.escapes import reparented
from pytest_leanhost.core.live_process import ancestry, describe_process, escape_words
from pytest_leanhost.core.probe import ProcessTable
from pytest_leanhost.record import ProcessRecord
from tests.children import Children, poll
from tests.proc import linux_only

SLEEP = shutil.which("sleep") or "/bin/sleep"

# Becomes a child subreaper, runs `sh` which starts `setsid sleep 30` with stdio on
# /dev/null in the background, writes its PID to argv[1] and exits: the sleep is
# double-forked away into a new session, detached, and adopted by this process.
# Prints the sh PID, then waits for its stdin to close and kills and reaps the sleep
# (its own adopted child, which nobody else may wait for).
SUBREAPER_CODE = """
import ctypes, os, subprocess, sys
assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
sh = subprocess.Popen(
    ["sh", "-c", 'setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $! > "$1"', "sh", sys.argv[1]]
)
sh.wait()
print(sh.pid, flush=True)
sys.stdin.read()
pid = int(open(sys.argv[1]).read())
os.kill(pid, 9)
os.waitpid(pid, 0)
"""

# Moves itself into a new process group (same session), then waits for stdin to close.
NEW_GROUP_CODE = (
    "import os, sys; os.setpgid(0, 0); print(os.getpid(), flush=True); sys.stdin.read()"
)

# Starts a grandchild `sleep 30`, prints its PID, and kills and reaps it when stdin closes.
GRANDPARENT_CODE = """
import subprocess, sys
child = subprocess.Popen([sys.argv[1], "30"])
print(child.pid, flush=True)
sys.stdin.read()
child.kill()
child.wait()
"""


def start(
    children: Children,
    *argv: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    start_new_session: bool = False,
) -> subprocess.Popen[str]:
    """A child with pipes on stdin and stdout; the shared tracker ends it at teardown.

    A ``sleep`` is killed at once (exact PID: the Popen object); a Python child is
    told to end by closing its stdin, so it can reap what it started itself.
    """
    child = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
        start_new_session=start_new_session,
    )
    return children.track(child, ends_at_eof=argv[0] != SLEEP)


def start_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def words(
    pid: int, *, marker_absent: bool = False, first_seen: int | None = None
) -> tuple[str, ...]:
    return escape_words(
        pid,
        pytest_pid=os.getpid(),
        marker_absent=marker_absent,
        first_seen_parent=first_seen,
        current_parent=psutil.Process(pid).ppid(),
    )


def test_facts_name_the_command_line_working_directory_and_age(
    tmp_path: Path, children: Children
) -> None:
    child = start(children, sys.executable, "-c", "import sys; sys.stdin.read()", cwd=tmp_path)
    created = start_time(child.pid)
    facts = describe_process(child.pid, created)
    assert facts is not None
    assert facts.cmdline == (sys.executable, "-c", "import sys; sys.stdin.read()")
    assert facts.cwd == str(tmp_path)
    assert facts.started_unix == created
    # The age runs from the create time to the caller's clock; a clock set back before
    # the start reads as age 0, never negative.
    later = describe_process(child.pid, created, now=created + 2.5)
    assert later is not None
    assert later.age_seconds == pytest.approx(2.5)
    behind = describe_process(child.pid, created, now=created - 1.0)
    assert behind is not None
    assert behind.age_seconds == 0.0


def test_a_reused_or_reaped_pid_is_not_described(children: Children) -> None:
    child = start(children, SLEEP, "30")
    created = start_time(child.pid)
    assert describe_process(child.pid, created - 5.0) is None  # another process's create time
    child.kill()
    child.wait()
    assert describe_process(child.pid, created) is None


def test_a_plain_child_escaped_nothing(children: Children) -> None:
    child = start(children, SLEEP, "30")
    assert words(child.pid, first_seen=os.getpid()) == ()


def test_a_child_with_an_empty_environment_dropped_the_marker(
    children: Children,
) -> None:
    child = start(children, SLEEP, "30", env={})
    # Our own eyes: the starting environment is empty, so it carries no marker.
    assert psutil.Process(child.pid).environ() == {}
    assert words(child.pid, marker_absent=True) == ("environment_dropped",)


def test_a_child_in_a_new_process_group_says_so_and_keeps_the_session(
    children: Children,
) -> None:
    child = start(children, sys.executable, "-c", NEW_GROUP_CODE)
    assert child.stdout is not None
    assert int(child.stdout.readline()) == child.pid  # it has moved by now
    assert words(child.pid) == ("new_process_group",)


def test_a_child_in_a_new_session_says_new_session_and_new_process_group(
    children: Children,
) -> None:
    child = start(children, SLEEP, "30", start_new_session=True)
    assert os.getsid(child.pid) == child.pid
    assert words(child.pid) == ("new_session", "new_process_group")


@linux_only
def test_a_setsid_double_fork_with_stdio_on_dev_null_is_reparented_and_daemonized(
    tmp_path: Path, children: Children
) -> None:
    pidfile = tmp_path / "sleep.pid"
    subreaper = start(children, sys.executable, "-c", SUBREAPER_CODE, str(pidfile))
    assert subreaper.stdout is not None
    sh_pid = int(subreaper.stdout.readline())
    sleep_pid = int(pidfile.read_text())
    # setsid execs sleep in the same PID after setsid(2): wait until it has.
    assert poll(lambda: os.getsid(sleep_pid) == sleep_pid and _cmd(sleep_pid) == ["sleep", "30"])
    assert psutil.Process(sleep_pid).ppid() == subreaper.pid  # adopted
    found = escape_words(
        sleep_pid,
        pytest_pid=os.getpid(),
        marker_absent=False,
        first_seen_parent=sh_pid,
        current_parent=psutil.Process(sleep_pid).ppid(),
    )
    assert found == ("new_session", "new_process_group", "reparented", "daemonized")

    chain = ancestry(
        sleep_pid,
        {sleep_pid: sh_pid, sh_pid: subreaper.pid},
        ProcessTable.snapshot(),
        root=os.getpid(),
        known_cmdlines={sh_pid: ("sh", "-c", "...")},
    )
    assert [(a.pid, a.alive) for a in chain] == [
        (sh_pid, False),
        (subreaper.pid, True),
        (os.getpid(), True),
    ]
    assert chain[0].cmdline == ("sh", "-c", "...")  # dead: what the caller knew of it
    assert chain[1].cmdline == (sys.executable, "-c", SUBREAPER_CODE, str(pidfile))


@linux_only
def test_a_server_under_another_parent_than_its_record_names_is_reparented(
    tmp_path: Path, children: Children
) -> None:
    server = children.orphaned_server(tmp_path)
    record = ProcessRecord.from_json_bytes((tmp_path / f"{server.pid}.json").read_bytes())
    assert record.parent_pid_at_start is not None
    now = server.ppid()
    assert now != record.parent_pid_at_start  # our own eyes: its launcher is gone

    def claimed(recorded: int | None) -> bool:
        found = escape_words(
            server.pid,
            pytest_pid=os.getpid(),
            marker_absent=False,
            first_seen_parent=None,  # nothing saw it before: the record alone tells
            current_parent=now,
            recorded_parent=recorded,
        )
        return "reparented" in found

    assert claimed(record.parent_pid_at_start)
    assert not claimed(now)  # a record naming the parent it has now: not reparented
    assert claimed(None) == (now == 1)  # no record, no lineage: only init as parent tells


def test_reparented_is_claimed_from_facts_only() -> None:
    root = 4242

    def says(current: int | None, first: int | None, recorded: int | None, at: int = root) -> bool:
        return reparented(
            current_parent=current, first_seen_parent=first, recorded_parent=recorded, root_pid=at
        )

    assert says(7, 5, None)  # the parent first seen is not the parent now
    assert not says(5, 5, None)
    assert says(1, None, None)  # init holds it, and init starts nothing of the run
    assert not says(1, None, None, at=1)  # unless the run itself is init
    assert says(root, None, 9)  # its record names another parent at start
    assert not says(9, None, 9)
    assert not says(None, 5, 9)  # the parent now unknown: nothing is claimed


def _cmd(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def test_a_grandchild_s_ancestry_runs_through_its_live_parent_to_the_root(
    children: Children,
) -> None:
    parent = start(children, sys.executable, "-c", GRANDPARENT_CODE, SLEEP)
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    chain = ancestry(grandchild, {}, ProcessTable.snapshot(), root=os.getpid())
    assert [(a.pid, a.cmdline, a.alive) for a in chain] == [
        (parent.pid, (sys.executable, "-c", GRANDPARENT_CODE, SLEEP), True),
        (os.getpid(), tuple(psutil.Process().cmdline()), True),
    ]


def test_ancestry_never_loops_and_stops_at_a_reused_pid(
    children: Children,
) -> None:
    child = start(children, SLEEP, "30")
    table = ProcessTable.snapshot()
    # A parent map with a cycle (as PID reuse can make one) ends instead of looping.
    looped = ancestry(child.pid, {child.pid: os.getpid(), os.getpid(): child.pid}, table, root=1)
    assert [a.pid for a in looped] == [os.getpid()]
    # The caller knew our PID with another create time: that ancestor is dead, not us.
    reused = ancestry(
        child.pid,
        {},
        table,
        root=-1,
        known_create_times={os.getpid(): start_time(os.getpid()) - 100.0},
    )
    assert [(a.pid, a.alive, a.cmdline) for a in reused] == [(os.getpid(), False, ())]
