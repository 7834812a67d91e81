"""Exited orphans leave no zombie under pytest, and no child's exit status is stolen.

One inner run with ``-p leanhost`` (pytest a child subreaper) holds both sides
of the reaping rule at once:

- 50 tests each run ``sh -c "(sleep 0.01 &); true"``, a launcher that
  backgrounds a short job and exits: pytest adopts the orphan, which then exits.
  At session end there must be no zombie under pytest and no leak finding.
- Children whose statuses belong to someone in the interpreter: a
  ``subprocess.Popen`` exiting 3, a bare ``os.fork()`` child exiting 6, a
  multiprocessing ``Process`` (fork and spawn) exiting 5, an asyncio subprocess
  exiting 4, and ``ProcessPoolExecutor`` workers (fork and spawn). Each is left a
  zombie while test boundaries pass (with an exited orphan beside it, for a
  reaper to find at the same boundary), then waited for by its owner in a later
  test, which asserts the real status.

The suite judges with its own eyes: its conftest, in a ``trylast``
``pytest_unconfigure`` (after the plugin's session end), reads the direct
children of its own PID in ``/proc/self/task/*/children`` and writes down those
in state Z. The run happens once per module (its outer tests each judge one
side), so this file costs one inner run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pidlog import PID_LOG_ENV, SITE_DIR, kill_survivors
from tests.report_schema import validate_report

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="zombies are counted in Linux /proc"
)

ORPHAN_TESTS = 50

INNER_CONFTEST = r'''
import os

import pytest


def zombie_children():
    """PIDs of this process's direct children in state Z (every thread's children list)."""
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as handle:
                pids.update(int(pid) for pid in handle.read().split())
        except OSError:
            continue  # the thread has exited
    zombies = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue  # reaped meanwhile
        if data[data.rfind(b")") + 2 :].split()[0] == b"Z":
            zombies.append(pid)
    return zombies


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    lines = "".join(f"{pid} {comm(pid)}\n" for pid in zombie_children())
    (config.rootpath / "zombies.txt").write_text(lines)
'''

INNER_ORPHANS = f"""
import subprocess

import pytest


@pytest.mark.parametrize("n", range({ORPHAN_TESTS}))
def test_launcher_leaves_an_exited_orphan(n):
    subprocess.run(["sh", "-c", "(sleep 0.01 &); true"], check=True)
"""

# Tests run in file order: every child is started (and left a zombie) first, and
# waited for by its owner only after several boundaries have passed.
INNER_STATUSES = r'''
import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from conftest import zombie_children

HELD = {}
METHODS = ["fork", "spawn"]


def state(pid):
    """The /proc state letter of ``pid``, or None once it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def wait_until(condition, what):
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def wait_zombie(pid):
    """Until the child has exited and nobody has waited for it: a zombie at the next boundary."""
    wait_until(lambda: state(pid) == "Z", f"{pid} never became a zombie")


def leave_exited_orphan():
    """A launcher's background job, orphaned and exited: a zombie for a reaper to find."""
    done = subprocess.run(
        ["sh", "-c", "(sleep 0.01 & echo $!); true"], stdout=subprocess.PIPE, text=True, check=True
    )  # returns at EOF, when the job (which holds the pipe) has exited
    pid = int(done.stdout)
    wait_until(lambda: state(pid) in (None, "Z"), f"orphan {pid} never exited")


def test_fork_child_exits_6_and_a_boundary_passes():
    pid = os.fork()
    if pid == 0:
        os._exit(6)
    HELD["os.fork"] = pid
    wait_zombie(pid)
    leave_exited_orphan()


def test_popen_child_exits_3_and_a_boundary_passes():
    child = subprocess.Popen(["sh", "-c", "exit 3"])
    HELD["popen"] = child
    wait_zombie(child.pid)
    # The session-end count would see a zombie such as this one.
    assert child.pid in zombie_children()
    leave_exited_orphan()


@pytest.mark.parametrize("method", METHODS)
def test_multiprocessing_child_exits_5_and_a_boundary_passes(method):
    proc = multiprocessing.get_context(method).Process(target=sys.exit, args=(5,))
    proc.start()
    HELD[f"mp-{method}"] = proc
    wait_zombie(proc.pid)
    leave_exited_orphan()


def test_asyncio_run_subprocess_exits_4():
    async def main():
        proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 4")
        return await proc.wait()

    assert asyncio.run(main()) == 4


def test_asyncio_subprocess_exits_4_and_a_boundary_passes():
    loop = asyncio.new_event_loop()
    proc = loop.run_until_complete(asyncio.create_subprocess_exec("sh", "-c", "exit 4"))
    HELD["asyncio"] = (loop, proc)
    # Python < 3.12 reaps it at once in a watcher thread; later a pidfd leaves a zombie.
    wait_until(lambda: state(proc.pid) in (None, "Z"), "the asyncio child never exited")
    leave_exited_orphan()


@pytest.mark.parametrize("method", METHODS)
def test_process_pool_works_and_a_boundary_passes(method):
    executor = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method))
    assert list(executor.map(pow, [2, 3], [5, 2])) == [32, 9]
    HELD[f"pool-{method}"] = executor
    leave_exited_orphan()


def test_a_boundary_passes_with_every_child_waiting():
    leave_exited_orphan()


def test_fork_status_is_6_after_boundaries():
    pid, status = os.waitpid(HELD["os.fork"], 0)
    assert os.waitstatus_to_exitcode(status) == 6


def test_popen_status_is_3_after_boundaries():
    assert HELD["popen"].wait(timeout=30) == 3


@pytest.mark.parametrize("method", METHODS)
def test_multiprocessing_exitcode_is_5_after_boundaries(method):
    proc = HELD[f"mp-{method}"]
    proc.join(timeout=30)
    assert proc.exitcode == 5


def test_asyncio_status_is_4_after_boundaries():
    loop, proc = HELD["asyncio"]
    try:
        assert loop.run_until_complete(asyncio.wait_for(proc.wait(), 30)) == 4
    finally:
        loop.close()


@pytest.mark.parametrize("method", METHODS)
def test_process_pool_workers_exit_0_at_shutdown(method):
    executor = HELD[f"pool-{method}"]
    workers = list(executor._processes.values())  # its multiprocessing Processes
    executor.shutdown(wait=True)
    # A worker told to stop exits 0; a status taken from under it reads None.
    assert workers and [worker.exitcode for worker in workers] == [0] * len(workers)
'''

#: The inner status tests; each must pass (a stolen status fails its wait).
STATUS_TESTS = [
    "test_fork_child_exits_6_and_a_boundary_passes",
    "test_popen_child_exits_3_and_a_boundary_passes",
    "test_multiprocessing_child_exits_5_and_a_boundary_passes[fork]",
    "test_multiprocessing_child_exits_5_and_a_boundary_passes[spawn]",
    "test_asyncio_run_subprocess_exits_4",
    "test_asyncio_subprocess_exits_4_and_a_boundary_passes",
    "test_process_pool_works_and_a_boundary_passes[fork]",
    "test_process_pool_works_and_a_boundary_passes[spawn]",
    "test_a_boundary_passes_with_every_child_waiting",
    "test_fork_status_is_6_after_boundaries",
    "test_popen_status_is_3_after_boundaries",
    "test_multiprocessing_exitcode_is_5_after_boundaries[fork]",
    "test_multiprocessing_exitcode_is_5_after_boundaries[spawn]",
    "test_asyncio_status_is_4_after_boundaries",
    "test_process_pool_workers_exit_0_at_shutdown[fork]",
    "test_process_pool_workers_exit_0_at_shutdown[spawn]",
]


@dataclasses.dataclass(frozen=True)
class ZombieRun:
    """The inner run: its output, report, the zombies it counted, and each test's outcome."""

    output: str = dataclasses.field(repr=False)
    report: dict[str, Any] = dataclasses.field(repr=False)
    zombies: list[str]
    outcomes: dict[str, str] = dataclasses.field(repr=False)

    def outcome(self, name: str) -> str:
        """``passed``, or the failure text of an inner test (``missing`` if it never ran)."""
        return self.outcomes.get(name, "missing")


def junit_outcomes(path: Path) -> dict[str, str]:
    """Each test case of a JUnit XML file by name: ``passed`` or its failure or error text."""
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is None:
            problem = case.find("skipped")
        outcome = "passed" if problem is None else problem.get("message", "") or problem.tag
        outcomes[case.get("name", "")] = outcome
    return outcomes


@pytest.fixture(scope="module")
def zombie_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZombieRun]:
    """The inner suite, run once with ``-p leanhost``; whatever it left is killed at the end.

    As :class:`tests.inner_runs.InnerPytest` runs one (its PID log, a session ledger
    of its own, autoload off), but once for the module: ``pytester`` is per test.
    """
    root = tmp_path_factory.mktemp("zombies")
    suite = root / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(INNER_CONFTEST)
    (suite / "test_orphans.py").write_text(INNER_ORPHANS)
    (suite / "test_statuses.py").write_text(INNER_STATUSES)
    pid_log, report, junit = root / "pids.log", root / "report.json", root / "junit.xml"
    pythonpath = os.pathsep.join(filter(None, [str(SITE_DIR), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        PID_LOG_ENV: str(pid_log),
        "LEANHOST_SESSIONS_DIR": str(root / "sessions"),
        "PYTHONPATH": pythonpath,
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    args = [sys.executable, "-m", "pytest", "-p", "leanhost", "-p", "no:cacheprovider"]
    args += ["-o", "leanhost_grace=0.3", "--leanhost-report", str(report)]
    args += [f"--junitxml={junit}", f"--basetemp={root / 'basetemp'}"]
    try:
        done = subprocess.run(
            args, cwd=suite, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        output = done.stdout + done.stderr
        assert report.exists(), output
        assert junit.exists(), output
        document = json.loads(report.read_text())
        validate_report(document)
        counted = suite / "zombies.txt"
        assert counted.exists(), "the inner suite never counted its zombies\n" + output
        yield ZombieRun(output, document, counted.read_text().splitlines(), junit_outcomes(junit))
    finally:
        kill_survivors(pid_log)


def test_exited_orphans_leave_no_zombie_under_pytest_at_session_end(zombie_run: ZombieRun) -> None:
    orphans = [f"test_launcher_leaves_an_exited_orphan[{n}]" for n in range(ORPHAN_TESTS)]
    assert {zombie_run.outcome(name) for name in orphans} == {"passed"}, zombie_run.output
    assert zombie_run.zombies == [], (
        f"{len(zombie_run.zombies)} zombie(s) under pytest at session end (pid comm): "
        f"{zombie_run.zombies[:10]}"
    )


def test_exited_orphans_and_waited_children_are_no_leak(zombie_run: ZombieRun) -> None:
    findings = [
        (finding["kind"], finding["nodeid"], finding["action"])
        for finding in zombie_run.report["findings"]
    ]
    assert findings == [], zombie_run.output


@pytest.mark.parametrize("inner_test", STATUS_TESTS)
def test_a_child_keeps_its_exit_status_while_pytest_reaps_orphans(
    zombie_run: ZombieRun, inner_test: str
) -> None:
    outcome = zombie_run.outcome(inner_test)
    assert outcome == "passed", f"{inner_test}: {outcome}"
