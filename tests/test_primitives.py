"""The shared primitives against real processes and real files.

The ladder and the wait (``stopping``), the pinned process (``core.processes``), the
atomic write and remove-if-unchanged (``files``) and the record builder (``record``).
Processes are judged with the tests' own eyes: the state letter in ``/proc/PID/stat``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_leanhost.core.processes import PinnedProcess, wait_gone
from pytest_leanhost.files import remove_if_unchanged, write_atomically
from pytest_leanhost.record import ProcessRecord, current_process_record
from pytest_leanhost.refserver.workers import Workers
from pytest_leanhost.stopping import poll_until, stop_ladder
from tests.children import Children
from tests.proc import linux_only, proc_state

pytestmark = linux_only

Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start(children: Children) -> Start:
    """Start real children (pipes on stdin); the shared tracker ends each at teardown."""

    def run(*argv: str) -> subprocess.Popen[bytes]:
        return children.track(subprocess.Popen(list(argv), stdin=subprocess.PIPE))

    return run


def deaf_to_sigterm(start: Start) -> subprocess.Popen[bytes]:
    """A ``sleep`` that ignores SIGTERM (an ignored signal stays ignored across exec)."""
    child = start("sh", "-c", "trap '' TERM; exec sleep 60")
    # The trap is set before sleep runs; wait until sleep is the program (it ignores TERM).
    assert poll_until(lambda: Path(f"/proc/{child.pid}/comm").read_text() == "sleep\n", 10)
    return child


# --- the ladder -------------------------------------------------------------------


def test_ladder_ends_a_stdin_reader_at_the_first_rung(start: Start) -> None:
    child = start("cat")
    assert child.stdin is not None
    rungs = stop_ladder([PinnedProcess.now(child.pid)], 5, first=child.stdin.close)
    assert rungs == ["first"]
    assert child.wait(5) == 0  # it left on stdin EOF, no signal


def test_ladder_terminates_a_sleep_that_ignores_stdin(start: Start) -> None:
    child = start("sleep", "60")
    assert child.stdin is not None
    rungs = stop_ladder([PinnedProcess.now(child.pid)], 0.2, first=child.stdin.close)
    assert rungs == ["terminate"]
    assert child.wait(5) == -signal.SIGTERM


def test_ladder_kills_a_process_that_ignores_sigterm(start: Start) -> None:
    child = deaf_to_sigterm(start)
    assert stop_ladder([PinnedProcess.now(child.pid)], 0.2) == ["kill"]
    assert child.wait(5) == -signal.SIGKILL


def test_ladder_stops_many_at_once_each_at_its_own_rung(start: Start) -> None:
    reader, sleeper, deaf = start("cat"), start("sleep", "60"), deaf_to_sigterm(start)
    procs = [PinnedProcess.now(child.pid) for child in (reader, sleeper, deaf)]
    assert reader.stdin is not None
    assert stop_ladder(procs, 0.3, first=reader.stdin.close) == ["first", "terminate", "kill"]
    assert [reader.wait(5), sleeper.wait(5), deaf.wait(5)] == [0, -signal.SIGTERM, -signal.SIGKILL]


def test_ladder_reports_gone_and_sends_nothing_when_already_exited(start: Start) -> None:
    child = start("true")
    pinned = PinnedProcess.now(child.pid)
    assert child.wait(5) == 0
    first_calls: list[int] = []
    assert stop_ladder([pinned], 5, first=lambda: first_calls.append(1)) == ["gone"]
    assert first_calls == []


# --- the pinned process ------------------------------------------------------------


def test_pinned_process_with_a_wrong_create_time_is_refused_and_never_signalled(
    start: Start,
) -> None:
    child = start("sleep", "60")
    right = PinnedProcess.now(child.pid)
    # A reused PID: the kernel hands a PID out again only after every other free one,
    # so the newcomer starts seconds after the process it replaces.
    wrong = PinnedProcess(child.pid, right.create_time + 5.0)
    assert wrong.process() is None
    assert wrong.is_gone()  # a PID that names another process: ours is gone
    assert wrong.terminate() is False
    assert wrong.kill() is False
    assert stop_ladder([wrong], 0.1) == ["gone"]
    assert proc_state(child.pid) in ("R", "S")  # still running: no signal reached it
    assert child.poll() is None
    assert right.terminate() is True
    assert child.wait(5) == -signal.SIGTERM


def test_a_zombie_counts_as_gone(start: Start) -> None:
    child = start("sleep", "60")
    pinned = PinnedProcess.now(child.pid)
    assert not pinned.is_gone()
    os.kill(child.pid, signal.SIGKILL)  # our own unreaped child: the PID cannot be reused
    assert poll_until(lambda: proc_state(child.pid) == "Z", 5)
    assert pinned.is_gone()
    assert wait_gone([pinned], 5) == []
    assert stop_ladder([pinned], 5) == ["gone"]
    assert proc_state(child.pid) == "Z"  # none of it reaped what is not its to reap
    assert child.wait(5) == -signal.SIGKILL


def test_pinned_children_are_the_live_descendants(start: Start) -> None:
    parent = start("sh", "-c", "sleep 60; true")  # the shell forks sleep, then waits
    parent_pin = PinnedProcess.now(parent.pid)
    assert poll_until(lambda: len(parent_pin.children()) == 1, 10)
    (child,) = parent_pin.children()
    assert proc_state(child.pid) in ("R", "S")
    assert stop_ladder([child], 2) == ["terminate"]
    assert parent.wait(5) == 0  # the shell reaped its own child and left


# --- the reference server's workers use the same ladder -------------------------------


def test_refserver_workers_stop_by_the_ladder_and_are_reaped() -> None:
    workers = Workers()
    pids = [workers.spawn(), workers.spawn()]
    assert all(proc_state(pid) is not None for pid in pids)
    workers.stop(timeout=5)
    assert [proc_state(pid) for pid in pids] == [None, None]  # exited and reaped
    assert workers.pids == []


# --- poll_until ---------------------------------------------------------------------


def test_poll_until_returns_when_the_condition_holds_or_false_at_the_deadline() -> None:
    calls: list[int] = []

    def third_call() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert poll_until(third_call, 10)
    assert len(calls) == 3
    assert poll_until(lambda: False, 0.01) is False


# --- the atomic write -----------------------------------------------------------------


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "1.json"
    target.write_bytes(b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["1.json"]


def test_write_atomically_removes_its_temporary_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a-directory"
    (target / "inside").mkdir(parents=True)  # a non-empty directory: the rename must fail
    with pytest.raises(IsADirectoryError):
        write_atomically(target, b"data")
    assert sorted(os.listdir(tmp_path)) == ["a-directory"]
    assert os.listdir(target) == ["inside"]


# --- remove_if_unchanged ------------------------------------------------------------


def test_remove_if_unchanged_removes_the_judged_file(tmp_path: Path) -> None:
    path = tmp_path / "1.json"
    path.write_bytes(b"judged")
    assert remove_if_unchanged(path, b"judged") is True
    assert not path.exists()


def test_remove_if_unchanged_keeps_a_rewritten_file(tmp_path: Path) -> None:
    path = tmp_path / "1.json"
    path.write_bytes(b"judged")
    write_atomically(path, b"a new server's record")
    assert remove_if_unchanged(path, b"judged") is False
    assert path.read_bytes() == b"a new server's record"


def test_remove_if_unchanged_keeps_a_symlink_and_its_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"judged")
    path = tmp_path / "registry" / "1.json"
    path.parent.mkdir()
    path.symlink_to(outside)  # same bytes behind the link: still never followed
    assert remove_if_unchanged(path, b"judged") is False
    assert path.is_symlink()
    assert outside.read_bytes() == b"judged"


def test_remove_if_unchanged_keeps_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "1.json"
    path.mkdir()
    assert remove_if_unchanged(path, b"") is False
    assert path.is_dir()


def test_remove_if_unchanged_says_false_when_the_file_is_gone(tmp_path: Path) -> None:
    assert remove_if_unchanged(tmp_path / "1.json", b"judged") is False


# --- the record of this process ---------------------------------------------------


def test_current_process_record_describes_this_process() -> None:
    record = current_process_record("http", "127.0.0.1:1", "/mcp")
    assert (record.pid, record.parent_pid_at_start) == (os.getpid(), os.getppid())
    assert (record.process_group_id, record.cwd) == (os.getpgrp(), os.getcwd())
    assert record.executable == os.readlink("/proc/self/exe")
    assert (record.transport, record.bind, record.http_path) == ("http", "127.0.0.1:1", "/mcp")
    assert ProcessRecord.from_json_bytes(record.to_json_bytes()) == record
