"""The session ledger and `leanhost doctor sessions`, with real processes and a real SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pytest_leanhost.core.earlier_sessions import (
    SESSIONS_ENV,
    Leftover,
    find_earlier_sessions,
    remove_ledger,
    scan_earlier_sessions,
    terminate_leftovers,
    write_ledger,
)
from pytest_leanhost.core.ownership import new_session_id
from tests.children import Children, poll
from tests.proc import linux_only, proc_start_ticks, proc_state
from tests.report_schema import validate_report

SLEEP = shutil.which("sleep") or "/bin/sleep"

# A child subreaper that runs argv[2:] with its output in the file argv[1], prints
# that child's PID, and reaps every process it has or adopts until none is left, so
# whatever the killed pytest leaves is reaped (PID 1 here reaps nothing).
REAPER_CODE = """
import ctypes, os, subprocess, sys
assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
with open(sys.argv[1], "wb") as out:
    child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
print(child.pid, flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""

INNER_TEST = """
import os, subprocess, threading
from pathlib import Path


def test_starts_two_sleeps_and_blocks():
    marked = subprocess.Popen([{sleep!r}, "300"])  # inherits LEANHOST_SESSION
    unmarked = subprocess.Popen([{sleep!r}, "300"], env={{}})  # carries no marker
    out = Path(os.environ["LEFTOVER_PIDS"])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(f"{{marked.pid}} {{unmarked.pid}}")
    os.replace(tmp, out)
    threading.Event().wait()  # until SIGKILL
"""


def leanhost(*args: str, sessions: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_leanhost.core.cli", "doctor", "sessions", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, SESSIONS_ENV: str(sessions)},
        timeout=120,
    )


def sleep(children: Children, env: dict[str, str]) -> subprocess.Popen[str]:
    """A ``sleep 300`` child with exactly ``env``; the shared tracker kills it at teardown."""
    return children.track(subprocess.Popen([SLEEP, "300"], env=env, text=True))


def dead_pytest_ledger(directory: Path, children: Children) -> str:
    """A ledger entry naming a real process that is then killed and reaped: a dead pytest."""
    session_id = new_session_id()
    stand_in = sleep(children, {})
    write_ledger(session_id, directory=directory, pid=stand_in.pid)
    stand_in.kill()
    stand_in.wait()
    return session_id


def test_the_ledger_entry_names_this_process_privately_and_goes_at_a_normal_end(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "sessions"
    path = write_ledger("lh-0123", directory=directory, argv=["pytest", "-x"])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert path.name == "lh-0123.json"
    assert data["session_id"] == "lh-0123"
    assert data["pytest_pid"] == os.getpid()
    assert data["pytest_create_time"] == psutil.Process().create_time()
    assert data["argv"] == ["pytest", "-x"]
    assert data["cwd"] == os.getcwd()
    assert [p.name for p in directory.iterdir()] == ["lh-0123.json"]  # no temporary left
    assert remove_ledger("lh-0123", directory=directory)
    assert not path.exists()
    assert not remove_ledger("lh-0123", directory=directory)


def test_a_dead_session_s_marked_process_is_a_leftover_and_an_unmarked_one_is_not(
    tmp_path: Path, children: Children
) -> None:
    session_id = dead_pytest_ledger(tmp_path, children)
    marked = sleep(children, {"LEANHOST_SESSION": session_id})
    sleep(children, {})
    sleep(children, {"LEANHOST_SESSION": session_id + "0"})  # a longer id is another session
    [leftover] = find_earlier_sessions(None, directory=tmp_path)
    assert (leftover.session_id, leftover.pid) == (session_id, marked.pid)
    assert leftover.create_time == psutil.Process(marked.pid).create_time()
    assert leftover.cmdline == (SLEEP, "300")
    assert (tmp_path / f"{session_id}.json").exists()  # it left something: kept
    # Its age is counted from its create time to the scan's clock, and a clock set
    # back before its start reads as age 0, never as a negative age.
    created = leftover.create_time
    [later] = scan_earlier_sessions(None, directory=tmp_path, now=created + 7.25).leftovers
    assert later.age_seconds == pytest.approx(7.25)
    [behind] = scan_earlier_sessions(None, directory=tmp_path, now=created - 3.0).leftovers
    assert behind.age_seconds == 0.0


def test_a_running_session_is_no_earlier_session(tmp_path: Path, children: Children) -> None:
    session_id = new_session_id()
    write_ledger(session_id, directory=tmp_path)  # this process: alive
    sleep(children, {"LEANHOST_SESSION": session_id})
    assert find_earlier_sessions(None, directory=tmp_path) == []
    assert (tmp_path / f"{session_id}.json").exists()


def test_a_marked_process_without_a_ledger_entry_is_not_reported(
    tmp_path: Path, children: Children
) -> None:
    # Nothing proves that session's pytest is gone.
    sleep(children, {"LEANHOST_SESSION": new_session_id()})
    assert find_earlier_sessions(None, directory=tmp_path) == []


def test_a_dead_session_that_left_nothing_loses_its_entry_and_nothing_else(
    tmp_path: Path, children: Children
) -> None:
    session_id = dead_pytest_ledger(tmp_path, children)
    assert (tmp_path / f"{session_id}.json").exists()
    (tmp_path / "notes.txt").write_text("not ours")
    (tmp_path / "broken.json").write_text("{")
    assert find_earlier_sessions(None, directory=tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json", "notes.txt"]


@linux_only
def test_terminate_refuses_a_process_without_the_marker_and_one_whose_pid_was_reused(
    tmp_path: Path, children: Children
) -> None:
    unmarked = sleep(children, {})
    created = psutil.Process(unmarked.pid).create_time()
    ticks = proc_start_ticks(unmarked.pid)
    claims = [
        Leftover("lh-x", unmarked.pid, created, (), 0.0),  # no marker
        Leftover("lh-x", unmarked.pid, created - 50.0, (), 0.0),  # another process's time
    ]
    results = terminate_leftovers(claims[:1], 1.0) + terminate_leftovers(claims[1:], 1.0)
    assert [(r.action, r.reason) for r in results] == [
        ("refused", "does not carry LEANHOST_SESSION=lh-x"),
        ("gone", ""),
    ]
    assert proc_start_ticks(unmarked.pid) == ticks
    assert proc_state(unmarked.pid) in ("R", "S")  # alive, and no signal reached it


@linux_only
def test_terminate_stops_leftovers_by_the_one_ladder_sigterm_first_then_sigkill(
    tmp_path: Path, children: Children
) -> None:
    session_id = dead_pytest_ledger(tmp_path, children)
    env = {"LEANHOST_SESSION": session_id, "PATH": os.environ.get("PATH", "")}
    polite = sleep(children, env)
    # Deaf to SIGTERM: an ignored signal stays ignored across exec.
    deaf = children.track(
        subprocess.Popen(["sh", "-c", f"trap '' TERM; exec {SLEEP} 300"], env=env, text=True)
    )
    assert poll(lambda: Path(f"/proc/{deaf.pid}/comm").read_text() == "sleep\n")
    leftovers = find_earlier_sessions(None, directory=tmp_path)
    assert sorted(leftover.pid for leftover in leftovers) == sorted([polite.pid, deaf.pid])
    results = terminate_leftovers(leftovers, 0.3)
    actions = {result.leftover.pid: (result.action, result.reason) for result in results}
    assert actions == {polite.pid: ("terminated", ""), deaf.pid: ("killed", "")}
    # Our own eyes: the exit status says which signal ended each.
    assert polite.wait(10) == -signal.SIGTERM
    assert deaf.wait(10) == -signal.SIGKILL


def test_doctor_sessions_reports_bad_input_in_one_line_and_loses_nothing(tmp_path: Path) -> None:
    (tmp_path / "lh-bad.json").write_text("{not json")
    result = leanhost(sessions=tmp_path)
    assert result.returncode == 0
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"leanhost: warning: {tmp_path}/lh-bad.json is not a session")
    assert result.stdout == "leanhost: no process left by an earlier run\n"
    assert (tmp_path / "lh-bad.json").read_text() == "{not json"

    a_file = tmp_path / "lh-bad.json"
    result = leanhost("--json", sessions=a_file)
    assert result.returncode == 1
    assert result.stderr == f"leanhost: error: cannot read sessions directory {a_file}: " + (
        "Not a directory\n"
    )
    assert result.stdout == ""

    result = leanhost(sessions="")  # an empty variable: a usage error
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "LEANHOST_SESSIONS_DIR is set but empty" in result.stderr


@linux_only
def test_a_sigkilled_run_s_leftover_is_listed_and_terminated_and_an_unmarked_one_untouched(
    tmp_path: Path,
) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "pytest.ini").write_text("[pytest]\n")
    (inner / "test_hang.py").write_text(INNER_TEST.format(sleep=SLEEP))
    sessions = tmp_path / "sessions"
    pids_file = tmp_path / "pids"
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        SESSIONS_ENV: str(sessions),
        "LEFTOVER_PIDS": str(pids_file),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    command = [sys.executable, "-m", "pytest", "-p", "leanhost", "-p", "no:cacheprovider", "-q"]
    reaper = subprocess.Popen(
        [sys.executable, "-c", REAPER_CODE, str(tmp_path / "inner.out"), *command],
        cwd=inner,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    pinned: list[psutil.Process] = []
    try:
        assert reaper.stdout is not None
        pytest_proc = psutil.Process(int(reaper.stdout.readline()))
        pinned.append(pytest_proc)
        assert poll(pids_file.exists, timeout=120), (tmp_path / "inner.out").read_text()
        marked_pid, unmarked_pid = map(int, pids_file.read_text().split())
        pinned += [psutil.Process(marked_pid), psutil.Process(unmarked_pid)]
        marked_ticks, unmarked_ticks = proc_start_ticks(marked_pid), proc_start_ticks(unmarked_pid)
        [ledger] = sessions.iterdir()
        session_id = ledger.name.removesuffix(".json")

        pytest_proc.send_signal(signal.SIGKILL)  # psutil: exact PID, create time checked
        assert poll(lambda: proc_start_ticks(pytest_proc.pid) is None, timeout=30)  # reaped

        # The next, clean run reports the leftover by PID, with the command that stops it.
        clean = tmp_path / "clean"
        clean.mkdir()
        (clean / "pytest.ini").write_text("[pytest]\n")
        (clean / "test_ok.py").write_text("def test_ok():\n    pass\n")
        report = tmp_path / "report.json"
        second = subprocess.run(
            [*command, "--leanhost-report", str(report)],
            cwd=clean,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 0, second.stdout + second.stderr  # report: does not fail
        out = second.stdout.splitlines()
        assert any("leanhost: left by an earlier run" in line for line in out)
        [listed_line] = [line for line in out if line.startswith("earlier_session ")]
        assert listed_line.startswith(f"earlier_session {session_id} pid={marked_pid} age=")
        assert listed_line.endswith(f" cmdline={SLEEP} 300")
        assert f"  exact_terminate=kill -TERM {marked_pid}" in out
        assert str(unmarked_pid) not in second.stdout
        document = json.loads(report.read_text())
        validate_report(document)
        assert [
            (e["session_id"], e["pid"], e["cmdline"], e["action"])
            for e in document["earlier_sessions"]
        ] == [(session_id, marked_pid, [SLEEP, "300"], "none")]
        # the clean run removed its own entry at its normal end; the dead one's is kept
        assert [p.name for p in sessions.iterdir()] == [ledger.name]

        listed = leanhost("--json", sessions=sessions)
        assert listed.returncode == 0, listed.stderr
        document = json.loads(listed.stdout)
        assert document["schema_version"] == 1
        [session] = document["sessions"]
        assert session["session_id"] == session_id
        assert session["pytest_pid"] == pytest_proc.pid
        assert [p["pid"] for p in session["processes"]] == [marked_pid]
        assert session["processes"][0]["cmdline"] == [SLEEP, "300"]

        text = leanhost(sessions=sessions)
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert lines[0].startswith(f"session={session_id} pid={marked_pid} age=")
        assert lines[0].endswith(f"s cmdline={SLEEP} 300")
        assert lines[1:] == [
            f"  exact_terminate=kill -TERM {marked_pid}",
            "leanhost: 1 process left by 1 earlier session",
        ]

        stopped = leanhost("--terminate", sessions=sessions)
        assert stopped.returncode == 0, stopped.stderr
        assert "  action=terminated\n" in stopped.stdout
        # Our own eyes: exactly that process is gone (reaped by the reaper, or its PID
        # holds another process now), the unmarked one beside it is untouched.
        assert poll(lambda: proc_start_ticks(marked_pid) != marked_ticks, timeout=30)
        assert proc_start_ticks(unmarked_pid) == unmarked_ticks
        assert proc_state(unmarked_pid) in ("R", "S")
        assert not ledger.exists()  # its session left nothing more: our own file, removed
    finally:
        for proc in pinned:
            if proc.is_running():  # psutil: same create time, so the very process
                proc.kill()
        reaper.wait(timeout=60)  # it exits once it has reaped everything
        if reaper.stdout is not None:
            reaper.stdout.close()
