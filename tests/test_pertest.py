"""``--leanhost-check=test``: a leak is an error at teardown of exactly the test that leaked.

Each test runs a small suite with real processes in a pytest subprocess and
judges by what pytest itself reports (the ERROR at teardown, the ``--lf``
cache, the JUnit file, ``-x``) and by the PIDs the inner processes wrote down
(checked in /proc), never by the plugin's own reader.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.inner_runs import InnerPytest

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


def test_a_forgotten_subprocess_is_an_error_at_teardown_of_exactly_its_test(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    run = inner.run("-p", "no:randomly", "--leanhost-check=test")
    output = run.result.stdout.str()
    assert errors_at_teardown(output) == ["test_forgets_a_child"], output
    run.result.assert_outcomes(passed=3, errors=1)
    assert "leaked_process test_suite.py::test_forgets_a_child pid=" in output
    # Cleaned at teardown, so not reported again at session end.
    assert run.report["findings"] == []
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
    assert set(cases) == {"test_before", "test_forgets_a_child", "test_after"}
    errors = {name: case.findall("error") for name, case in cases.items()}
    assert [name for name, found in errors.items() if found] == ["test_forgets_a_child"]
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
    result = pytester.runpytest_subprocess("-p", "leanhost", "--leanhost-check=bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if line.strip()]
    assert lines == ["ERROR: leanhost: --leanhost-check 'bogus' must be one of session, test"]
