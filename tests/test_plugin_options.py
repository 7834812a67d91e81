"""The plugin's options, isolation, ways of loading it, and its outputs for CI."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

# A child that lives until the pytest that started it exits: a leak for that run's
# check, and gone by itself afterwards, also when that run did not load the plugin.
LEAKY_SERVER = """
import subprocess, sys
HELD = []
CHILD = "import os, time\\nparent = os.getppid()\\nwhile os.getppid() == parent: time.sleep(0.02)"
def test_leaks():
    HELD.append(subprocess.Popen([sys.executable, "-c", CHILD]))
"""

ISOLATION = """
import os, pytest
SEEN = {}

@pytest.mark.parametrize("n", [1, 2])
def test_registry_per_test(n):
    SEEN[n] = os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"]
    assert os.environ["LEANHOST_NODEID"].endswith(f"test_registry_per_test[{n}]")
    assert os.environ["LEANHOST_SESSION"].startswith("lh-")
    assert not os.path.exists(SEEN[n])  # named, not created: no server started here

def test_distinct_and_under_one_root():
    first, second = SEEN[1], SEEN[2]
    assert first != second
    assert os.path.dirname(first) == os.path.dirname(second)
    root = os.path.dirname(os.path.dirname(first))
    assert os.stat(root).st_mode & 0o777 == 0o700

def test_fixture_creates_the_directory(leanhost_registry):
    assert leanhost_registry.is_dir()
    assert str(leanhost_registry) == os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"]
    assert leanhost_registry.stat().st_mode & 0o777 == 0o700
"""


def test_each_test_gets_its_own_lazily_created_registry(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_iso=ISOLATION)
    result = pytester.runpytest_subprocess("-p", "leanhost", "-p", "no:randomly")
    result.assert_outcomes(passed=4)


# The last test sets nothing; at session finish the conftest writes down what the
# environment holds, after every test, before the plugin's own session-end check.
RESTORED_CONFTEST = """
import json, os

def pytest_sessionfinish(session):
    names = ("LEANHOST_NODEID", "LEAN_HOST_MCP_PROCESS_REGISTRY_DIR")
    seen = {name: os.environ.get(name) for name in names}
    with open(os.environ["SEEN_FILE"], "w") as handle:
        json.dump(seen, handle)
"""

RESTORED_SUITE = """
import os
def test_one():
    assert os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"] != os.environ.get("USER_REGISTRY")
    assert os.environ["LEANHOST_NODEID"] == "test_env.py::test_one"

def test_last_sets_nothing():
    pass
"""


@pytest.mark.parametrize(
    "user",
    [
        pytest.param({}, id="unset"),
        pytest.param(
            {"LEANHOST_NODEID": "outer-node", "LEAN_HOST_MCP_PROCESS_REGISTRY_DIR": "/outer"},
            id="user-values",
        ),
    ],
)
def test_the_environment_is_restored_after_each_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, user: dict[str, str]
) -> None:
    """After the tests (at session finish), LEANHOST_NODEID and the registry variable are
    what they were before the session: unset, or the user's value."""
    pytester.makeconftest(RESTORED_CONFTEST)
    pytester.makepyfile(test_env=RESTORED_SUITE)
    seen_file = pytester.path / "seen.json"
    monkeypatch.setenv("SEEN_FILE", str(seen_file))
    # The outer run's own plugin set both for this test: start from the user's state.
    for name in ("LEANHOST_NODEID", "LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in user.items():
        monkeypatch.setenv(name, value)
    if "LEAN_HOST_MCP_PROCESS_REGISTRY_DIR" in user:
        monkeypatch.setenv("USER_REGISTRY", user["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"])
    result = pytester.runpytest_subprocess("-p", "leanhost", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    seen = json.loads(seen_file.read_text())
    assert seen == {
        "LEANHOST_NODEID": user.get("LEANHOST_NODEID"),
        "LEAN_HOST_MCP_PROCESS_REGISTRY_DIR": user.get("LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"),
    }


def test_isolation_can_be_turned_off(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nleanhost_isolate = false\n")
    pytester.makepyfile(
        test_off="""
import os
def test_registry_untouched():
    assert os.environ.get("LEAN_HOST_MCP_PROCESS_REGISTRY_DIR") == os.environ["OUTER_REGISTRY"]
    assert os.environ["LEANHOST_NODEID"] == "test_off.py::test_registry_untouched"

def test_fixture_still_isolates(leanhost_registry):
    assert os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"] == str(leanhost_registry)
"""
    )
    monkeypatch.setenv("OUTER_REGISTRY", os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"])
    result = pytester.runpytest_subprocess("-p", "leanhost")
    result.assert_outcomes(passed=2)


def test_the_report_is_written_also_when_nothing_leaked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    report = pytester.path / "out" / "report.json"
    report.parent.mkdir()
    result = pytester.runpytest_subprocess("-p", "leanhost", "--leanhost-report", str(report))
    assert result.ret == 0
    data = json.loads(report.read_text())
    assert data == {
        "schema_version": 3,
        "session_id": data["session_id"],
        "interrupted": False,
        "registries_checked": 0,
        "records_checked": 0,
        "check_seconds": data["check_seconds"],
        "findings": [],
        "earlier_sessions": [],
        "watched_registries": data["watched_registries"],
    }
    assert data["watched_registries"]
    assert 0 < data["check_seconds"] < 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-o", "leanhost_shutdown_timeout=-1"],
            "leanhost: leanhost_shutdown_timeout = '-1' must be more than zero seconds",
        ),
        (
            ["-o", "leanhost_ready_timeout=soon"],
            "leanhost: leanhost_ready_timeout = 'soon' is not a number of seconds",
        ),
        (
            ["--leanhost-server-cmd", "python '-m"],
            'leanhost: --leanhost-server-cmd "python \'-m" cannot be split: No closing quotation',
        ),
        (
            ["--leanhost-report", "/nonexistent/dir/report.json"],
            "leanhost: --leanhost-report /nonexistent/dir/report.json: directory "
            "/nonexistent/dir does not exist",
        ),
    ],
)
def test_bad_values_are_usage_errors_before_any_test_runs(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile(test_never="def test_never():\n    raise AssertionError\n")
    # (-p no:asyncio: pytest-asyncio, a test dependency, warns on stderr in a bare pytester dir)
    result = pytester.runpytest_subprocess("-p", "leanhost", "-p", "no:asyncio", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.stderr.lines if line] == [f"ERROR: {message}"]


def test_the_plugin_loads_with_autoload_disabled_and_turns_off(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_leaky=LEAKY_SERVER)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    loaded = pytester.runpytest_subprocess("-p", "leanhost", "-o", "leanhost_grace=0.2")
    off = pytester.runpytest_subprocess("-p", "no:leanhost")
    default = pytester.runpytest_subprocess()
    assert loaded.ret == 1
    loaded.stdout.fnmatch_lines(["leaked_process test_leaky.py::test_leaks *action=terminated"])
    assert off.ret == 0
    assert "leanhost" not in off.stdout.str()
    assert default.ret == 0


def test_every_option_and_fixture_is_documented(pytester: pytest.Pytester) -> None:
    helptext = pytester.runpytest_subprocess("-p", "leanhost", "--help").stdout.str()
    for option in (
        "--leanhost-doctor",
        "--leanhost-report=PATH",
        "--leanhost-server-cmd=CMD",
        "--leanhost-keep-leaks",
        "--leanhost-check=WHEN",
        "leanhost_check",
        "leanhost_server_command",
        "leanhost_isolate",
        "leanhost_ready_timeout",
        "leanhost_shutdown_timeout",
        "leanhost_grace",
    ):
        assert option in helptext
    fixtures = pytester.runpytest_subprocess("-p", "leanhost", "--fixtures").stdout.str()
    for name in (
        "leanhost_registry",
        "leanhost_server_command",
        "leanhost_server",
        "leanhost_doctor",
    ):
        assert f"\n{name} -- " in fixtures
    markers = pytester.runpytest_subprocess("-p", "leanhost", "--markers").stdout.str()
    assert "@pytest.mark.leanhost_allow(*kinds)" in markers


def test_the_doctor_section_lists_only_registries_that_held_a_record_and_the_watched_ones(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    watched = tmp_path / "watched"
    pytester.makepyfile(
        test_doc="""
import os, subprocess, sys
import pytest
HELD = []
CODE = (
    "import sys; from pytest_leanhost.record import register_server_process as r;"
    " r('stdio'); print('up', flush=True); sys.stdin.read()"
)
def test_holds_server():
    child = subprocess.Popen(
        [sys.executable, "-c", CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    child.stdout.readline()
    HELD.append(child)

@pytest.mark.parametrize("n", range(12))
def test_clean_server(leanhost_server, n):
    leanhost_server().initialize()
"""
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "leanhost",
        "--leanhost-doctor",
        "-o",
        "leanhost_grace=0.2",
        "-o",
        f"leanhost_watch_registries={watched}",
    )
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*= leanhost doctor =*",
            "test_doc.py::test_holds_server (registry *):",
            "pid=* alive=true executable_match=yes transport=stdio bind=- http_path=- *",
            "(12 other registries of the session held no record)",
            "default registry *:",
            "  (no records)",
            f"watched registry {watched}:",
            "  (no records)",
        ]
    )
    # Twelve clean tests, and not one line of their own in the doctor section.
    assert "test_clean_server" not in out.split("leanhost doctor")[1]


def test_leaks_become_github_annotations_and_a_junit_failure(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_leaky=LEAKY_SERVER)
    junit = pytester.path / "junit.xml"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result = pytester.runpytest_subprocess(
        "-p", "leanhost", "-o", "leanhost_grace=0.2", f"--junitxml={junit}"
    )
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["::error title=leanhost leaked_process::test_leaky.py::test_leaks leaked: *"]
    )
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("failures") == "1"
    case = suite.find("testcase[@name='leanhost_session_leak_check']")
    assert case is not None
    failure = case.find("failure")
    assert failure is not None
    assert "leaked_process test_leaky.py::test_leaks" in (failure.text or "")


def test_fixtures_imported_alone_work_without_the_session_check(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("from pytest_leanhost import leanhost_registry, leanhost_doctor\n")
    pytester.makepyfile(
        test_alone="""
import os
def test_registry(leanhost_registry, leanhost_doctor):
    assert os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"] == str(leanhost_registry)
    leanhost_doctor.assert_clean()
"""
        + LEAKY_SERVER
    )
    result = pytester.runpytest_subprocess("-p", "no:leanhost")
    result.assert_outcomes(passed=2)
    assert "leanhost" not in result.stdout.str()


def test_pytest_plugins_in_a_conftest_enables_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest('pytest_plugins = ["pytest_leanhost.plugin"]\n')
    pytester.makepyfile(test_leaky=LEAKY_SERVER)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess("-o", "leanhost_grace=0.2")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["leaked_process test_leaky.py::test_leaks *"])
