"""The plugin speaks through pytest's own channels, and survives pytest's plugins turned off.

Inner suites run in a real pytest subprocess; a leak is a real child process
that outlives its test, and what the inner run saw is written down by the inner
tests themselves.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

# A child that lives until the pytest that started it exits: a leak for the run's check.
LEAKY = """
import subprocess, sys
HELD = []
CHILD = "import os, time\\nparent = os.getppid()\\nwhile os.getppid() == parent: time.sleep(0.02)"
def test_leaks():
    HELD.append(subprocess.Popen([sys.executable, "-c", CHILD]))

def test_clean():
    pass
"""

CLEAN = """
def test_clean():
    pass
"""

PYTEST_PLUGINS_OFF = [
    ["-p", "no:tmpdir", "-p", "no:legacypath"],
    ["-p", "no:legacypath"],
    ["-p", "no:junitxml"],
    ["-p", "no:cacheprovider"],
    ["-p", "no:warnings"],
    ["-p", "no:logging"],
    ["-p", "no:faulthandler"],
    ["-p", "no:capture"],
    ["-s"],
]


@pytest.mark.parametrize("off", PYTEST_PLUGINS_OFF, ids=" ".join)
def test_a_leak_is_found_with_a_pytest_plugin_turned_off(
    pytester: pytest.Pytester, off: list[str]
) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "leanhost", "-o", "leanhost_grace=0.2", *off)
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output
    result.stdout.fnmatch_lines(["leaked_process test_leaky.py::test_leaks *"])


@pytest.mark.parametrize("off", PYTEST_PLUGINS_OFF, ids=" ".join)
def test_a_clean_suite_passes_with_a_pytest_plugin_turned_off(
    pytester: pytest.Pytester, off: list[str]
) -> None:
    pytester.makepyfile(test_clean=CLEAN)
    result = pytester.runpytest_subprocess("-p", "leanhost", *off)
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output
    assert result.ret == pytest.ExitCode.OK, output
    result.stdout.fnmatch_lines(["leanhost: no leaks *"])


def test_the_registry_fixture_works_without_pytests_tmpdir_plugin(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_fixture="""
def test_registry(leanhost_registry):
    assert leanhost_registry.is_dir()
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "leanhost", "-p", "no:tmpdir", "-p", "no:legacypath"
    )
    result.assert_outcomes(passed=1)


def test_the_final_line_counts_leaks_in_red(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess(
        "-p", "leanhost", "-p", "no:randomly", "-o", "leanhost_grace=0.2", "--color=yes"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    final = result.stdout.lines[-1]
    assert "2 passed" in final
    assert "\x1b[31m" in final  # red, as a failed run's line is
    assert "1 leaked" in final
    red_leaked = "\x1b[31m\x1b[1m1 leaked"
    assert red_leaked in final
    assert "failed" not in final  # the empty key that makes the line red counts no test


def test_allowed_leaks_are_not_counted_in_the_final_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_allowed="""
import subprocess, sys, pytest
HELD = []
CHILD = "import os, time\\nparent = os.getppid()\\nwhile os.getppid() == parent: time.sleep(0.02)"
@pytest.mark.leanhost_allow("leaked_process")
def test_leaks_on_purpose():
    HELD.append(subprocess.Popen([sys.executable, "-c", CHILD]))
"""
    )
    result = pytester.runpytest_subprocess("-p", "leanhost", "-o", "leanhost_grace=0.2")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["leaked_process * ?allowed?"])
    assert "leaked in" not in result.stdout.lines[-1]
    result.stdout.fnmatch_lines(["*= 1 passed in *"])


def test_session_finish_no_longer_names_the_last_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    outer = pytester.path / "outer-registry"
    monkeypatch.setenv("LEAN_HOST_MCP_PROCESS_REGISTRY_DIR", str(outer))
    monkeypatch.delenv("LEANHOST_NODEID", raising=False)
    pytester.makeconftest(
        """
import os

def pytest_sessionfinish(session):
    print("at session finish:", os.environ.get("LEANHOST_NODEID"),
          os.environ.get("LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"))
"""
    )
    pytester.makepyfile(
        test_env="""
import os
def test_last():
    assert os.environ["LEANHOST_NODEID"] == "test_env.py::test_last"
"""
    )
    result = pytester.runpytest_subprocess("-p", "leanhost", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*at session finish: None {outer}"])


def test_leaks_become_a_failing_junit_case_with_one_property_per_leak(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-p", "leanhost", "-o", "leanhost_grace=0.2", f"--junitxml={junit}"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")
    case = suite.find("testcase[@name='leanhost_session_leak_check']")
    assert case is not None
    assert case.get("classname") == "leanhost"
    leaks = [
        p.get("value", "") for p in case.iterfind("properties/property[@name='leanhost_leak']")
    ]
    assert len(leaks) == 1
    assert leaks[0].startswith("leaked_process test_leaky.py::test_leaks pid=")
    failure = case.find("failure")
    assert failure is not None
    assert leaks[0] in (failure.text or "")
