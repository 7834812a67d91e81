"""``--leanhost-check=test``: a leak is an error at teardown of exactly the test that leaked.

Each test runs a small suite with real processes in a pytest subprocess and
judges by what pytest itself reports (the ERROR at teardown, the ``--lf``
cache, the JUnit file, ``-x``) and by the PIDs the inner processes wrote down
(checked in /proc), never by the plugin's own reader.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.inner_runs import InnerPytest
from tests.pidlog import read_log

SUITE = """
import subprocess, sys
HELD = []

def test_before():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_forgets_a_child():
    HELD.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]))

def test_after():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""

LEAKER = "test_suite.py::test_forgets_a_child"


def errors_at_teardown(output: str) -> list[str]:
    """The tests pytest names in its "ERROR at teardown of ..." headers."""
    marker = "ERROR at teardown of "
    return [line.split(marker, 1)[1].strip(" _") for line in output.splitlines() if marker in line]


@pytest.mark.parametrize("subreaper", ["true", "false"], ids=["lineage", "markers-only"])
def test_a_forgotten_subprocess_is_an_error_at_teardown_of_exactly_its_test(
    pytester: pytest.Pytester, inner: InnerPytest, subreaper: str
) -> None:
    # With lineage the tree below pytest names the test's processes; without it (or off
    # Linux) the PIDs handed out during the test that carry its marker do.
    pytester.makepyfile(test_suite=SUITE)
    run = inner.run(
        "-p", "no:randomly", "--leanhost-check=test", "-o", f"leanhost_subreaper={subreaper}"
    )
    output = run.result.stdout.str()
    assert errors_at_teardown(output) == ["test_forgets_a_child"], output
    run.result.assert_outcomes(passed=3, errors=1)
    assert "leaked_process test_suite.py::test_forgets_a_child pid=" in output
    # Cleaned at teardown, and in the run's one ledger once, as found at teardown.
    assert [(f["nodeid"], f["found_at"]) for f in run.report["findings"]] == [
        ("test_suite.py::test_forgets_a_child", "teardown")
    ]
    assert "leanhost: 1 leak(s) failed the run (1 reported at teardown)" in output, output
    inner.assert_nothing_left()


def test_last_failed_reruns_exactly_the_leaking_test(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    first = inner.run("-p", "no:randomly", "--leanhost-check=test")
    assert first.result.ret == 1
    again = inner.run("-p", "no:randomly", "--leanhost-check=test", "--lf")
    output = again.result.stdout.str()
    assert "rerun previous 1 failure" in output
    again.result.assert_outcomes(passed=1, errors=1)  # only the leaking test ran
    assert errors_at_teardown(output) == ["test_forgets_a_child"], output
    inner.assert_nothing_left()


def test_junit_has_an_error_under_the_leaking_testcase_only(
    pytester: pytest.Pytester, inner: InnerPytest, tmp_path: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    junit = tmp_path / "junit.xml"
    inner.run("-p", "no:randomly", "--leanhost-check=test", f"--junitxml={junit}")
    cases = {case.get("name"): case for case in ET.parse(junit).iter("testcase")}
    check = cases.pop("leanhost_session_leak_check")
    assert set(cases) == {"test_before", "test_forgets_a_child", "test_after"}
    errors = {name: case.findall("error") for name, case in cases.items()}
    assert [name for name, found in errors.items() if found] == ["test_forgets_a_child"]
    # The run's ledger lists the leak once more, without failing it a second time.
    leaks = [p.get("value", "") for p in check.iter("property") if p.get("name") == "leanhost_leak"]
    assert len(leaks) == 1, leaks
    assert leaks[0].startswith("leaked_process test_suite.py::test_forgets_a_child pid=")
    assert check.findall("failure") == []
    assert check.findall("error") == []
    message = errors["test_forgets_a_child"][0].get("message", "")
    assert "failed on teardown" in message
    assert "leaked_process" in message
    inner.assert_nothing_left()


def test_exitfirst_stops_after_the_leaking_test(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    run = inner.run("-p", "no:randomly", "--leanhost-check=test", "-x")
    output = run.result.stdout.str()
    run.result.assert_outcomes(passed=2, errors=1)  # test_after never ran
    assert errors_at_teardown(output) == ["test_forgets_a_child"], output
    assert "stopping after 1 failures" in output
    inner.assert_nothing_left()


LATER = """
import subprocess, sys, pytest

SERVER = '''
import subprocess, sys
for line in sys.stdin:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                             start_new_session=True)
    print(child.pid, flush=True)
'''

@pytest.fixture(scope="session")
def server():
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)

def test_starts_the_server(server):
    pass

def test_asks_the_server_for_a_worker(server):
    server.stdin.write("spawn\\n")
    server.stdin.flush()
    assert int(server.stdout.readline()) > 0
"""


def test_what_a_server_starts_after_its_test_ended_is_caught_at_session_end(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_suite=LATER)
    run = inner.run("-p", "no:randomly", "--leanhost-check=test")
    output = run.result.stdout.str()
    assert errors_at_teardown(output) == [], output
    assert run.result.ret == 1, output
    # The worker inherited the marker of the test that started its server.
    assert run.findings == [
        ("leaked_process", "test_suite.py::test_starts_the_server", "terminated")
    ]
    inner.assert_nothing_left()


def test_a_bad_check_mode_is_one_usage_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p", "leanhost", "-p", "no:asyncio", "--leanhost-check=bogus"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if line.strip()]
    assert lines == ["ERROR: leanhost: --leanhost-check 'bogus' must be one of session, test"]


# Launchers that drop the environment: the leaked process keeps no marker, only lineage
# knows it. Neither child can write itself down through the PID-log site (its PYTHONPATH
# is gone), so the test writes the PID and start tick down: in the PID log, for the
# outer test's /proc check, and in a file named after the test, so the outer test knows
# which teardown must name which PID.
SCRUBBED_HELPERS = r'''
import os, subprocess, sys, time

LOG = os.environ["LEANHOST_TESTS_PID_LOG"]
HELD = []
WAIT = r"""
import os, sys, time
data = open("/proc/self/stat", "rb").read()
start = data[data.rfind(b")") + 2:].split()[19].decode()
for path in sys.argv[1:]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{os.getpid()} {start}\n".encode())
    os.close(fd)
time.sleep(300)
"""
DOUBLE_FORK = r"""
import os, sys
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
os.execv(sys.executable, [sys.executable, "-c", *sys.argv[1:]])
"""

def start_of(pid):
    data = open(f"/proc/{pid}/stat", "rb").read()
    return data[data.rfind(b")") + 2:].split()[19].decode()

def ticks():
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))

def wait_until(condition):
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.001)

def at_a_fresh_tick():
    """Wait until a new clock tick begins: a child started now has its whole start
    tick in the current phase (the phase is judged by the start tick)."""
    first = ticks()
    wait_until(lambda: ticks() > first)

def write_down(pid, name):
    """Write the child down; then let its start tick pass (the phase is judged by it)."""
    start = start_of(pid)
    line = f"{pid} {start}\n"
    with open(LOG, "a") as log:
        log.write(line)
    with open(f"leaked-{name}.pid", "w") as own:
        own.write(line)
    wait_until(lambda: ticks() > int(start))
'''

SCRUBBED = (
    SCRUBBED_HELPERS
    + r'''
def clean_scrubbed_child():
    """Start children that drop the environment, and wait for each: nothing is left."""
    child = subprocess.Popen(["sleep", "300"], env={"PATH": os.environ["PATH"]})
    child.kill()
    child.wait()
    subprocess.run(["setsid", "env", "-i", sys.executable, "-c", "pass"], check=True)

def test_clean_before():
    clean_scrubbed_child()

def test_popen_env_dropped():
    at_a_fresh_tick()
    child = subprocess.Popen(["sleep", "300"], env={"PATH": os.environ["PATH"]})
    HELD.append(child)
    write_down(child.pid, "test_popen_env_dropped")

def test_clean_between():
    clean_scrubbed_child()

def test_setsid_double_fork_env_i():
    note = os.path.abspath("note-setsid")
    open(note, "w").close()
    at_a_fresh_tick()
    subprocess.run(
        ["setsid", "env", "-i", sys.executable, "-c", DOUBLE_FORK, WAIT, note], check=True
    )
    wait_until(lambda: os.path.getsize(note) > 0)
    pid = int(open(note).read().split()[0])
    write_down(pid, "test_setsid_double_fork_env_i")

def test_clean_after():
    clean_scrubbed_child()
'''
)

SCRUBBED_LEAKERS = ["test_popen_env_dropped", "test_setsid_double_fork_env_i"]

needs_lineage = pytest.mark.skipif(
    not os.path.isdir("/proc"), reason="lineage needs Linux child subreapers"
)


def teardown_errors(output: str) -> dict[str, str]:
    """Each "ERROR at teardown of NAME" section of pytest's output, by test name."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if "ERROR at teardown of " in line:
            current = sections.setdefault(line.split("ERROR at teardown of ", 1)[1].strip(" _"), [])
        elif line.startswith(("_____", "=====")):
            current = None
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


@needs_lineage
@pytest.mark.parametrize("xdist", [[], ["-p", "xdist", "-n", "2"]], ids=["alone", "xdist"])
def test_a_leak_whose_launcher_dropped_the_environment_is_an_error_at_its_own_teardown(
    pytester: pytest.Pytester, inner: InnerPytest, xdist: list[str]
) -> None:
    if xdist:
        pytest.importorskip("xdist")
    pytester.makepyfile(test_suite=SCRUBBED)
    run = inner.run("-p", "no:randomly", "--leanhost-check=test", *xdist)
    output = run.result.stdout.str()
    errors = teardown_errors(output)
    # Exactly the two leaking tests, each at its own teardown; no clean neighbour.
    assert sorted(errors) == SCRUBBED_LEAKERS, output
    run.result.assert_outcomes(passed=5, errors=2)
    for name in SCRUBBED_LEAKERS:
        (leaked,) = read_log(pytester.path / f"leaked-{name}.pid")
        text = errors[name]
        assert f"leaked_process test_suite.py::{name} pid={leaked.pid} " in text, text
        assert f"pid={leaked.pid} transport=- action=terminated" in text, text
        # The same explanation as at session end: started in the call, found by lineage.
        assert "started in call" in text, text
        escaped = [line for line in text.splitlines() if "escaped=" in line]
        assert escaped, text
        assert "environment_dropped" in escaped[0], text
        if name == "test_setsid_double_fork_env_i":
            assert "new_session" in escaped[0], text
        # Named under no other test's teardown.
        others = [other for other_name, other in errors.items() if other_name != name]
        assert all(f"pid={leaked.pid} " not in other for other in others), output
    # Stopped at teardown: in the ledger once each, as found at teardown, never twice.
    found = sorted((f["nodeid"], f["found_at"]) for f in run.report["findings"])
    assert found == sorted((f"test_suite.py::{name}", "teardown") for name in errors), output
    assert f"{len(errors)} leak(s) failed the run ({len(errors)} reported at teardown)" in output
    inner.assert_nothing_left()


# A scrubbed Popen child that starts a worker of its own: at teardown the recorder sees
# the worker below its parent, so once cleanup has stopped both, the worker is an
# adopted zombie of pytest (the plugin's to reap), the parent a zombie its Popen waits for.
TREE = (
    SCRUBBED_HELPERS
    + r"""
INTERMEDIATE = '''
import subprocess, sys, time
worker = subprocess.Popen(["sleep", "300"])
print(worker.pid, flush=True)
time.sleep(300)
'''

def test_leaks_a_tree():
    parent = subprocess.Popen(
        [sys.executable, "-c", INTERMEDIATE], env={"PATH": os.environ["PATH"]},
        stdout=subprocess.PIPE, text=True,
    )
    HELD.append(parent)
    write_down(parent.pid, "parent")
    write_down(int(parent.stdout.readline()), "worker")

def test_after_the_tree():
    # Its exit status stayed with its waiter (a reaped child would read as 0): the
    # plugin never reaps what pytest forked.
    assert HELD[0].wait(timeout=30) in (-15, -9)
    pid, start = open("leaked-worker.pid").read().split()
    try:
        fields = open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()
    except OSError:
        return  # reaped: the PID names no process
    # Reaped, or the PID now names another process; never left as this pytest's zombie.
    assert fields[19].decode() != start, fields[0]
"""
)


@needs_lineage
def test_an_adopted_worker_stopped_at_teardown_is_reaped_and_its_popen_parent_is_not(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_suite=TREE)
    run = inner.run("-p", "no:randomly", "--leanhost-check=test")
    output = run.result.stdout.str()
    errors = teardown_errors(output)
    assert sorted(errors) == ["test_leaks_a_tree"], output
    run.result.assert_outcomes(passed=2, errors=1)
    for name in ("parent", "worker"):
        (leaked,) = read_log(pytester.path / f"leaked-{name}.pid")
        assert f"pid={leaked.pid} transport=- action=terminated" in errors["test_leaks_a_tree"]
    assert {f["found_at"] for f in run.report["findings"]} == {"teardown"}, output
    inner.assert_nothing_left()


TEARDOWN_LEAK = (
    SCRUBBED_HELPERS
    + r"""
import pytest

@pytest.fixture
def starts_at_teardown():
    yield
    at_a_fresh_tick()
    child = subprocess.Popen(["sleep", "300"], env={"PATH": os.environ["PATH"]})
    HELD.append(child)
    write_down(child.pid, "teardown")

def test_leaks_from_its_teardown(starts_at_teardown):
    pass
"""
)


def leaked_sleep_text(
    pytester: pytest.Pytester, inner: InnerPytest, suite: str, check: str, test: str, name: str
) -> tuple[str, str]:
    """Run ``suite`` in check mode ``check``; the text that reports its one leaked
    ``sleep 300`` (written down as ``leaked-NAME.pid``), and the whole output.

    The text is the ERROR at teardown of ``test`` with ``test``, the output otherwise.
    """
    pytester.makepyfile(test_suite=suite)
    run = inner.run("-p", "no:randomly", f"--leanhost-check={check}")
    output = run.result.stdout.str()
    (leaked,) = read_log(pytester.path / f"leaked-{name}.pid")
    text = teardown_errors(output).get(test) if check == "test" else output
    assert text is not None, output
    assert f"{leaked.pid} sleep 300  (age " in text, output
    return text, output


@needs_lineage
@pytest.mark.parametrize("check", ["test", "session"])
def test_a_process_its_teardown_started_is_explained_as_started_in_teardown(
    pytester: pytest.Pytester, inner: InnerPytest, check: str
) -> None:
    text, output = leaked_sleep_text(
        pytester, inner, TEARDOWN_LEAK, check, "test_leaks_from_its_teardown", "teardown"
    )
    # Per test as at session end: the phase that started it, not the last one closed.
    assert "started in teardown)" in text, output
    inner.assert_nothing_left()


SAME_TICK_LEAK = (
    SCRUBBED_HELPERS
    + r"""
import pytest

@pytest.fixture
def tick_begins_in_setup():
    at_a_fresh_tick()  # the child's start tick then begins in setup and ends in teardown

def test_leaks_at_once(tick_begins_in_setup):
    child = subprocess.Popen(["sleep", "300"])  # keeps pytest's environment
    HELD.append(child)
    line = f"{child.pid} {start_of(child.pid)}\n"
    with open(LOG, "a") as log:
        log.write(line)
    with open("leaked-call.pid", "w") as own:
        own.write(line)
"""
)


@needs_lineage
@pytest.mark.parametrize("check", ["test", "session"])
def test_a_process_whose_start_tick_spans_three_phases_is_placed_by_its_environment(
    pytester: pytest.Pytester, inner: InnerPytest, check: str
) -> None:
    text, output = leaked_sleep_text(
        pytester, inner, SAME_TICK_LEAK, check, "test_leaks_at_once", "call"
    )
    # Setup, call and teardown all overlap its start tick, teardown the most: the
    # PYTEST_CURRENT_TEST it started with says "call", and the clock agrees it may be.
    assert "started in call)" in text, output
    inner.assert_nothing_left()


SCRUBBED_SLEEP = r"""
import pytest

def scrubbed_sleep(name):
    at_a_fresh_tick()  # its whole start tick then lies in the phase that starts it
    child = subprocess.Popen(["sleep", "300"], env={"PATH": os.environ["PATH"]})
    HELD.append(child)
    write_down(child.pid, name)

@pytest.fixture
def starts_in_setup():
    scrubbed_sleep("setup")
"""

#: The test that leaks a process without environment from each phase.
LEAKS_IN = {
    "setup": "def test_leaks_in_setup(starts_in_setup):\n    pass\n",
    "call": "def test_leaks_in_call():\n    scrubbed_sleep('call')\n",
}


def scrubbed_phase_suite(*phases: str) -> str:
    """A suite whose tests each leak a ``sleep 300`` without environment in one phase."""
    return SCRUBBED_HELPERS + SCRUBBED_SLEEP + "\n".join(LEAKS_IN[phase] for phase in phases)


def phase_of_each_leak(pytester: pytest.Pytester) -> dict[int, tuple[str, str]]:
    """The phase and test of each sleep the suite wrote down, by PID."""
    return {
        leaked.pid: (phase, f"test_suite.py::test_leaks_in_{phase}")
        for phase in ("setup", "call")
        for leaked in read_log(pytester.path / f"leaked-{phase}.pid")
    }


@needs_lineage
@pytest.mark.parametrize("terminal", [[], ["-p", "no:terminal"]], ids=["reports", "no-terminal"])
def test_a_process_that_dropped_its_environment_is_placed_in_the_phase_that_started_it(
    pytester: pytest.Pytester, inner: InnerPytest, terminal: list[str]
) -> None:
    # With a terminal reporter the phases come from pytest's reported durations;
    # without one, from two hooks. Either way no PYTEST_CURRENT_TEST tells them.
    pytester.makepyfile(test_suite=scrubbed_phase_suite("setup", "call"))
    run = inner.run("-p", "no:randomly", *terminal)
    found = {
        finding["pid"]: (finding["process"]["phase"], finding["process"]["started_in"])
        for finding in run.report["findings"]
    }
    assert found == phase_of_each_leak(pytester), run.result.stdout.str()
    inner.assert_nothing_left()


@needs_lineage
@pytest.mark.parametrize("phase", ["setup", "call"])
def test_a_teardown_error_names_the_phase_a_process_without_environment_started_in(
    pytester: pytest.Pytester, inner: InnerPytest, phase: str
) -> None:
    # The test's own span is still open in its teardown: its phases so far are split
    # by the setup and call pytest has reported.
    text, output = leaked_sleep_text(
        pytester,
        inner,
        scrubbed_phase_suite(phase),
        "test",
        f"test_leaks_in_{phase}",
        phase,
    )
    assert f"started in {phase})" in text, output
    inner.assert_nothing_left()
