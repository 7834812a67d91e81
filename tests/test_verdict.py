"""One verdict a user can trust: nothing invented, nothing dropped, one story in every output.

Each test runs a real inner suite (real processes, real multiprocessing, real
pytest-asyncio and xdist) and judges by what pytest itself reports, by the JSON
report, by JUnit, and by the PIDs the inner tests wrote down, checked in /proc:
never by the plugin's own reader.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_leanhost.stopping import poll_until
from tests.inner_runs import InnerPytest, InnerRun
from tests.pidlog import read_log

needs_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="multiprocessing helpers and /proc: Linux"
)

#: Writes a process down (PID and start tick) in the run's PID log and in a file of its own.
WRITE_DOWN = r"""
import os, sys, time

def start_of(pid):
    data = open(f"/proc/{pid}/stat", "rb").read()
    return data[data.rfind(b")") + 2:].split()[19].decode()

def write_down(pid, name):
    line = f"{pid} {start_of(pid)}\n"
    with open(os.environ["LEANHOST_TESTS_PID_LOG"], "a") as log:
        log.write(line)
    with open(f"leaked-{name}.pid", "a") as own:
        own.write(line)

def wait_for_file(path):
    deadline = time.monotonic() + 30
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.001)
"""

#: The inner suite's own eyes on the interpreter's helpers, after the plugin's check.
HELPERS_CONFTEST = r"""
import os

def pytest_sessionfinish(session):
    # The plugin checked at the end of the test loop, before any sessionfinish.
    import sys
    lines = []
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    pid = getattr(getattr(tracker, "_resource_tracker", None), "_pid", None)
    if pid:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        lines.append(f"resource_tracker {pid} {state}")
    forkserver = sys.modules.get("multiprocessing.forkserver")
    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if pid:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        lines.append(f"forkserver {pid} {state}")
    workerinput = getattr(session.config, "workerinput", None)
    name = workerinput["workerid"] if workerinput else "main"
    with open(f"helpers-{name}.txt", "w") as out:
        out.write("\n".join(lines) + "\n")
"""

MULTIPROCESSING_CLEAN = r"""
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

def double(x):
    return x * 2

def test_spawn_pool_closed_and_joined():
    with mp.get_context("spawn").Pool(2) as pool:
        assert pool.map(double, [1, 2]) == [2, 4]
        pool.close()
        pool.join()

def test_forkserver_pool_closed_and_joined():
    with mp.get_context("forkserver").Pool(2) as pool:
        assert pool.map(double, [1, 2]) == [2, 4]
        pool.close()
        pool.join()

def test_spawn_process_joined():
    p = mp.get_context("spawn").Process(target=double, args=(1,))
    p.start()
    p.join()
    assert p.exitcode == 0

def test_forkserver_process_joined():
    p = mp.get_context("forkserver").Process(target=double, args=(1,))
    p.start()
    p.join()
    assert p.exitcode == 0

def test_process_pool_executor_spawn():
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        assert list(ex.map(double, [1, 2])) == [2, 4]

def test_process_pool_executor_forkserver():
    with ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver")) as ex:
        assert list(ex.map(double, [1, 2])) == [2, 4]
"""

MULTIPROCESSING_LEAKS = (
    WRITE_DOWN
    + r"""
import multiprocessing as mp

POOLS = []

def sleep_long():
    import time
    time.sleep(300)

def test_starts_the_fork_server():
    p = mp.get_context("forkserver").Process(target=sleep_long)
    p.start()
    p.terminate()
    p.join()

def test_forgets_a_forkserver_process():
    p = mp.get_context("forkserver").Process(target=sleep_long)
    p.start()
    write_down(p.pid, "test_forgets_a_forkserver_process")

def test_never_shuts_its_pool_down():
    pool = mp.get_context("spawn").Pool(2)
    POOLS.append(pool)
    for worker in pool._pool:
        write_down(worker.pid, "test_never_shuts_its_pool_down")

def test_clean():
    pass
"""
)


def assert_nothing_left(inner: InnerPytest) -> None:
    """Nothing the inner run started is left, once the interpreter's helpers saw it exit.

    multiprocessing's resource tracker and fork server end when pytest does, on
    their own, a moment later: polled, not slept.
    """
    poll_until(lambda: not inner.leftovers(), 10.0)
    inner.assert_nothing_left()


def finding_keys(run: InnerRun) -> list[tuple[str, str, int]]:
    """(kind, node id, PID) of every finding in the JSON report, sorted."""
    return sorted((f["kind"], f["nodeid"] or "", f["pid"] or 0) for f in run.report["findings"])


def section_keys(output: str) -> list[tuple[str, str, int]]:
    """(kind, node id, PID) of every finding line in the terminal's ``leanhost`` section."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("=") and " leanhost " in line]
    section: list[str] = []
    for line in lines[starts[0] + 1 :] if starts else []:
        if line.startswith("=="):
            break  # the next section (pytest's short summary repeats the errors under CI)
        section.append(line)
    found = re.findall(r"^(?:└─ )?(\w+) (\S+) pid=(\d+) ", "\n".join(section), flags=re.M)
    return sorted((kind, nodeid, int(pid)) for kind, nodeid, pid in found)


def junit_keys(path: Path) -> list[tuple[str, str, int]]:
    """(kind, node id, PID) of every leak the JUnit file's leak-check case lists."""
    keys = []
    for case in ET.parse(path).iter("testcase"):
        if case.get("name") == "leanhost_session_leak_check":
            for prop in case.iter("property"):
                kind, nodeid, pid = prop.get("value", "").split()[:3]
                keys.append((kind, nodeid, int(pid.removeprefix("pid="))))
    return sorted(keys)


def assert_one_story(run: InnerRun, junit: Path) -> list[tuple[str, str, int]]:
    """The terminal section, the summary and final lines, JSON and JUnit name the same leaks."""
    output = run.result.stdout.str()
    keys = finding_keys(run)
    failing = [f for f in run.report["findings"] if not f["allowed"]]
    assert section_keys(output) == keys, output
    assert junit_keys(junit) == sorted(
        (f["kind"], f["nodeid"] or "", f["pid"] or 0) for f in failing
    )
    teardown = sum(1 for f in failing if f["found_at"] == "teardown")
    already = f" ({teardown} reported at teardown)" if teardown else ""
    assert f"leanhost: {len(failing)} leak(s) failed the run{already}, " in output, output
    assert re.search(rf"\b{len(failing)} leaked\b", output.splitlines()[-1]), output
    return keys


def written_pids(directory: Path, name: str) -> set[int]:
    return {written.pid for written in read_log(directory / f"leaked-{name}.pid")}


def helper_states(directory: Path) -> dict[str, str]:
    """What the inner suite saw of its helpers after the check: ``name-where`` -> state."""
    states = {}
    for path in directory.glob("helpers-*.txt"):
        where = path.stem.removeprefix("helpers-")
        for line in filter(None, path.read_text().splitlines()):
            name, _pid, state = line.split()
            states[f"{name}-{where}"] = state
    return states


@needs_linux
@pytest.mark.parametrize(
    "mode",
    [[], ["--leanhost-check=test"], ["-p", "xdist", "-n", "2"]],
    ids=["session", "per-test", "xdist"],
)
def test_multiprocessing_used_properly_finds_nothing_and_keeps_its_helpers_alive(
    pytester: pytest.Pytester, inner: InnerPytest, mode: list[str]
) -> None:
    pytester.makeconftest(HELPERS_CONFTEST)
    pytester.makepyfile(test_suite=MULTIPROCESSING_CLEAN)
    run = inner.run("-p", "no:randomly", *mode)
    output = run.result.stdout.str()
    run.result.assert_outcomes(passed=6)
    assert run.report["findings"] == [], output
    assert "leanhost: no leaks (6 tests, " in output, output
    states = helper_states(pytester.path)
    # Each pytest process that ran a test has its tracker (and a fork server), alive.
    assert any(name.startswith("resource_tracker-") for name in states), states
    assert any(name.startswith("forkserver-") for name in states), states
    assert all(state in ("S", "R") for state in states.values()), states
    assert_nothing_left(inner)


@needs_linux
@pytest.mark.parametrize("mode", [[], ["--leanhost-check=test"]], ids=["session", "per-test"])
def test_a_forgotten_process_and_an_open_pool_are_leaks_of_their_tests_not_the_helpers(
    pytester: pytest.Pytester, inner: InnerPytest, tmp_path: Path, mode: list[str]
) -> None:
    pytester.makeconftest(HELPERS_CONFTEST)
    pytester.makepyfile(test_suite=MULTIPROCESSING_LEAKS)
    junit = tmp_path / "junit.xml"
    run = inner.run("-p", "no:randomly", f"--junitxml={junit}", *mode)
    output = run.result.stdout.str()
    keys = assert_one_story(run, junit)
    forgotten = written_pids(pytester.path, "test_forgets_a_forkserver_process")
    pool = written_pids(pytester.path, "test_never_shuts_its_pool_down")
    assert len(forgotten) == 1
    assert len(pool) == 2
    expected = sorted(
        [
            ("leaked_process", "test_suite.py::test_forgets_a_forkserver_process", p)
            for p in forgotten
        ]
        + [("leaked_process", "test_suite.py::test_never_shuts_its_pool_down", p) for p in pool]
    )
    assert keys == expected, output
    # The pool's workers are reported, never signalled: killed, they deadlock its finalizer.
    actions = {f["pid"]: f["action"] for f in run.report["findings"]}
    assert {actions[p] for p in pool} == {"none"}, output
    assert {actions[p] for p in forgotten} == {"terminated"}, output
    # The helpers are no leak of the test that started them, and are still alive.
    states = helper_states(pytester.path)
    assert states.keys() == {"resource_tracker-main", "forkserver-main"}, states
    assert set(states.values()) <= {"S", "R"}, states
    if mode:
        assert sorted(re.findall(r"ERROR at teardown of (\w+)", output)) == [
            "test_forgets_a_forkserver_process",
            "test_never_shuts_its_pool_down",
        ], output
    assert_nothing_left(inner)


ASYNC_SUITE = (
    WRITE_DOWN
    + r"""
import asyncio, subprocess

async def test_first_forgets_a_sleep():
    proc = await asyncio.create_subprocess_exec("sleep", "300")
    write_down(proc.pid, "test_first_forgets_a_sleep")

async def test_forgets_another():
    proc = await asyncio.create_subprocess_exec("sleep", "301")
    write_down(proc.pid, "test_forgets_another")

async def test_setsid_double_fork():
    note = os.path.abspath("note-setsid")
    subprocess.run(["sh", "-c", f"(setsid sleep 302 & echo $! > {note})"], check=True)
    wait_for_file(note)
    write_down(int(open(note).read()), "test_setsid_double_fork")

async def test_clean():
    proc = await asyncio.create_subprocess_exec("true")
    assert await proc.wait() == 0
"""
)


@needs_linux
@pytest.mark.parametrize("mode", [[], ["-p", "xdist", "-n", "2"]], ids=["alone", "xdist"])
def test_under_pytest_asyncio_every_leaking_test_errors_at_its_own_teardown(
    pytester: pytest.Pytester, inner: InnerPytest, tmp_path: Path, mode: list[str]
) -> None:
    # pytest-asyncio sets its session-scoped fixtures up inside the first test of each
    # process: that first test is still judged at its own teardown.
    pytester.makepyfile(test_suite=ASYNC_SUITE)
    junit = tmp_path / "junit.xml"
    run = inner.run(
        "-p",
        "asyncio",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-p",
        "no:randomly",
        "--leanhost-check=test",
        f"--junitxml={junit}",
        *mode,
    )
    output = run.result.stdout.str()
    leakers = ["test_first_forgets_a_sleep", "test_forgets_another", "test_setsid_double_fork"]
    assert sorted(re.findall(r"ERROR at teardown of (\w+)", output)) == leakers, output
    run.result.assert_outcomes(passed=4, errors=3)
    keys = assert_one_story(run, junit)
    expected = sorted(
        ("leaked_process", f"test_suite.py::{name}", pid)
        for name in leakers
        for pid in written_pids(pytester.path, name)
    )
    assert keys == expected, output
    assert {f["found_at"] for f in run.report["findings"]} == {"teardown"}, output
    assert_nothing_left(inner)


DEFERRED_SUITE = (
    WRITE_DOWN
    + r"""
import subprocess
import pytest

@pytest.fixture(scope="module")
def module_sleeper():
    child = subprocess.Popen(["sleep", "300"])
    write_down(child.pid, "module_sleeper")
    yield child
    child.kill()
    child.wait()

def test_sets_the_module_fixture_up_and_leaks_too(module_sleeper):
    child = subprocess.Popen(["sleep", "301"])
    write_down(child.pid, "test_sets_the_module_fixture_up_and_leaks_too")

def test_uses_it(module_sleeper):
    assert module_sleeper.poll() is None
"""
)


@needs_linux
@pytest.mark.parametrize("subreaper", ["true", "false"], ids=["lineage", "markers-only"])
def test_only_what_a_wider_fixture_started_waits_for_its_scope_and_one_line_says_so(
    pytester: pytest.Pytester, inner: InnerPytest, subreaper: str
) -> None:
    pytester.makepyfile(test_suite=DEFERRED_SUITE)
    run = inner.run(
        "-p", "no:randomly", "--leanhost-check=test", "-o", f"leanhost_subreaper={subreaper}"
    )
    output = run.result.stdout.str()
    leaker = "test_sets_the_module_fixture_up_and_leaks_too"
    assert re.findall(r"ERROR at teardown of (\w+)", output) == [leaker], output
    (leaked,) = written_pids(pytester.path, leaker)
    (fixture_child,) = written_pids(pytester.path, "module_sleeper")
    assert [(f["pid"], f["found_at"]) for f in run.report["findings"]] == [(leaked, "teardown")]
    assert f"pid={fixture_child} " not in output, output
    assert (
        "leanhost: 1 process(es) started while setting up module-scoped fixture"
        f" 'module_sleeper' (set up by test_suite.py::{leaker})"
        " are judged when that fixture's scope ends, not at that test's teardown"
    ) in output, output
    assert_nothing_left(inner)
