"""The plugin plays well with pytest's own options and with other plugins.

Each test runs an inner suite in a real pytest subprocess: one clean test that uses
a server through ``leanhost_server``, and one test that leaks a server (kept in a
module-level list). Whatever the option or plugin, the leak must still be found
for the right node id (exit status 1), and nothing may stay alive afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inner_runs import InnerPytest

# The inner suite's head: a leaking helper, and the held servers released at exit,
# after the session-end check (which has stopped them by then).
HEAD = """
import atexit, os, pathlib, time
import pytest
from pytest_leanhost.plugin.fixtures import reference_server_command
from pytest_leanhost.client.spawn import spawn_server

HELD = []

@atexit.register
def _release_held():
    for server in HELD:
        server.stop(timeout=1.0)

def leak_a_server():
    registry = os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"]
    HELD.append(spawn_server(reference_server_command(), registry=registry))

def use_a_server(leanhost_server, *args):
    server = leanhost_server(*args)
    server.initialize()
    assert server.call_tool("echo", {"text": "ok"})["content"][0]["text"] == "ok"
    return server
"""

CLEAN = """
{marks}
def test_clean(leanhost_server):
    use_a_server(leanhost_server)
"""

LEAKS = """
{marks}
def test_leaks():
    leak_a_server()
"""

LEAKS_AND_FAILS = """
def test_leaks_and_fails():
    leak_a_server()
    assert False, "fails on purpose"
"""


def suite(*parts: str, marks: str = "") -> str:
    """The inner module: the head, then ``parts`` in order (``marks`` decorate CLEAN, LEAKS)."""
    return HEAD + "".join(part.format(marks=marks) for part in parts)


LEAK = "test_compat.py::test_leaks"


def test_without_the_cacheprovider(pytester: pytest.Pytester, inner: InnerPytest) -> None:
    pytester.makepyfile(test_compat=suite(CLEAN, LEAKS))
    run = inner.run("-p", "no:cacheprovider")
    assert run.result.ret == 1, run.result.stdout.str()
    run.result.assert_outcomes(passed=2)
    assert run.findings == [("leaked_server", LEAK, "terminated")]
    assert not (pytester.path / ".pytest_cache").exists()
    inner.assert_nothing_left(run)


def test_with_basetemp_the_session_root_is_under_it(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_compat=suite(CLEAN, LEAKS))
    basetemp = pytester.path / "my-basetemp"
    run = inner.run(f"--basetemp={basetemp}")
    assert run.result.ret == 1, run.result.stdout.str()
    run.result.assert_outcomes(passed=2)
    assert run.findings == [("leaked_server", LEAK, "terminated")]
    (finding,) = run.report["findings"]
    root = basetemp / "leanhost"
    assert Path(finding["registry"]).parent == root / "registries"
    assert root.stat().st_mode & 0o777 == 0o700
    assert run.report["registries_checked"] == 2
    inner.assert_nothing_left(run)


def test_exitfirst_after_a_failing_first_test_still_checks_what_it_left(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    """``-x`` stops the run after the first test, which leaks a server and fails: the
    session-end check still runs and names it; the clean test never ran."""
    pytester.makepyfile(test_compat=suite(LEAKS_AND_FAILS, CLEAN))
    run = inner.run("-x")
    assert run.result.ret == 1, run.result.stdout.str()
    run.result.assert_outcomes(failed=1)
    run.result.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    assert run.findings == [("leaked_server", "test_compat.py::test_leaks_and_fails", "terminated")]
    assert run.report["registries_checked"] == 1
    inner.assert_nothing_left(run)


def test_last_failed_reruns_only_the_failed_test_and_finds_its_leak_again(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_compat=suite(CLEAN, LEAKS_AND_FAILS))
    leak = ("leaked_server", "test_compat.py::test_leaks_and_fails", "terminated")
    first = inner.run()
    assert first.result.ret == 1, first.result.stdout.str()
    first.result.assert_outcomes(passed=1, failed=1)
    assert first.findings == [leak]
    inner.assert_nothing_left(first)

    second = inner.run("--lf")
    assert second.result.ret == 1, second.result.stdout.str()
    second.result.assert_outcomes(failed=1)
    second.result.stdout.fnmatch_lines(
        ["collected 1 item", "run-last-failure: rerun previous 1 failure*"]
    )
    assert second.findings == [leak]
    assert second.report["registries_checked"] == 1
    assert second.report["session_id"] != first.report["session_id"]
    inner.assert_nothing_left(second)


def test_keyword_deselection_of_the_clean_test(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_compat=suite(CLEAN, LEAKS))
    run = inner.run("-k", "not test_clean")
    assert run.result.ret == 1, run.result.stdout.str()
    run.result.assert_outcomes(passed=1, deselected=1)
    assert run.findings == [("leaked_server", LEAK, "terminated")]
    assert run.report["registries_checked"] == 1
    inner.assert_nothing_left(run)


# The server starts in setup, outside the timed call (timeout_func_only), so a slow
# start cannot time out; the clean and leaking tests get a generous timeout of their own.
SLEEPS_PAST_THE_TIMEOUT = """
@pytest.fixture
def kept_record_server(leanhost_server):
    server = leanhost_server("--fault", "keep-record")
    pathlib.Path("sleeper.pid").write_text(str(server.pid))
    return server

def test_sleeps_past_the_timeout(kept_record_server):
    kept_record_server.initialize()
    time.sleep(30)
"""


def test_pytest_timeout_fails_the_test_and_its_server_is_still_stopped_and_checked(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    """The sleeping test fails by pytest-timeout; its server (which keeps its record on
    purpose) is still stopped at teardown and checked: a rule 2 error names its PID, and
    its record is a stale record (not a live server) at session end."""
    body = suite(CLEAN, LEAKS, SLEEPS_PAST_THE_TIMEOUT, marks="@pytest.mark.timeout(60)")
    pytester.makepyfile(test_compat=body)
    run = inner.run("-p", "timeout", "--timeout=1", "-o", "timeout_func_only=true")
    assert run.result.ret == 1, run.result.stdout.str()
    run.result.assert_outcomes(passed=2, failed=1, errors=1)
    pid = int((pytester.path / "sleeper.pid").read_text())
    run.result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_sleeps_past_the_timeout*",
            f"rule 2: server pid={pid} (stdio) did not remove its record *",
        ]
    )
    run.result.stdout.fnmatch_lines(
        ["*_ test_sleeps_past_the_timeout _*", "E * Failed: Timeout (>1.0s) from pytest-timeout*"]
    )
    assert run.findings == [
        ("leaked_server", LEAK, "terminated"),
        ("stale_record", "test_compat.py::test_sleeps_past_the_timeout", "record_removed"),
    ]
    assert {f["pid"] for f in run.report["findings"] if f["kind"] == "stale_record"} == {pid}
    inner.assert_nothing_left(run)


RANDOM_ORDER = """
@pytest.mark.parametrize("n", range(3))
def test_clean(leanhost_server, n):
    use_a_server(leanhost_server)

@pytest.mark.parametrize("n", range(3))
def test_leaks(n):
    leak_a_server()
"""


def test_pytest_randomly_shuffles_and_every_leak_keeps_its_node_id(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_compat=HEAD + RANDOM_ORDER)
    run = inner.run("-p", "randomly", "-p", "no:cacheprovider", "--randomly-seed=4242", "-v")
    assert run.result.ret == 1, run.result.stdout.str()
    run.result.assert_outcomes(passed=6)
    run.result.stdout.fnmatch_lines(["Using --randomly-seed=4242"])
    order = [line.split()[0] for line in run.result.stdout.lines if " PASSED " in line]
    in_file = [f"test_compat.py::test_clean[{n}]" for n in range(3)]
    in_file += [f"{LEAK}[{n}]" for n in range(3)]
    assert sorted(order) == sorted(in_file)
    assert order != in_file  # shuffled (fixed seed: always the same order)
    assert run.findings == [("leaked_server", f"{LEAK}[{n}]", "terminated") for n in range(3)]
    inner.assert_nothing_left(run)


FAILS_AND_ERRORS = """
def test_fails(leanhost_server):
    server = leanhost_server("--fault", "keep-record")
    pathlib.Path("fails.pid").write_text(str(server.pid))
    assert False, "fails on purpose"

@pytest.fixture
def broken(leanhost_server):
    server = leanhost_server("--fault", "keep-record")
    pathlib.Path("setup.pid").write_text(str(server.pid))
    raise RuntimeError("setup breaks after starting a server")

def test_setup_error(broken):
    pass
"""


def test_a_failing_test_and_a_setup_error_still_get_their_servers_stopped_and_checked(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    """Each starts a server that keeps its record on purpose: the rule 2 error at teardown
    proves it was stopped and checked although the test failed or its setup broke."""
    pytester.makepyfile(test_compat=suite(CLEAN, LEAKS, FAILS_AND_ERRORS))
    run = inner.run()
    assert run.result.ret == 1, run.result.stdout.str()
    # test_fails: failed + teardown error; test_setup_error: setup error + teardown error.
    run.result.assert_outcomes(passed=2, failed=1, errors=3)
    fails = int((pytester.path / "fails.pid").read_text())
    setup = int((pytester.path / "setup.pid").read_text())
    run.result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_setup_error*",
            "*RuntimeError: setup breaks after starting a server",
            "*ERROR at teardown of test_setup_error*",
            f"rule 2: server pid={setup} (stdio) did not remove its record *",
        ]
    )
    run.result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_fails*",
            f"rule 2: server pid={fails} (stdio) did not remove its record *",
        ]
    )
    run.result.stdout.fnmatch_lines(["*_ test_fails _*", "*AssertionError: fails on purpose"])
    assert run.findings == [
        ("leaked_server", LEAK, "terminated"),
        ("stale_record", "test_compat.py::test_fails", "record_removed"),
        ("stale_record", "test_compat.py::test_setup_error", "record_removed"),
    ]
    pids = {f["nodeid"]: f["pid"] for f in run.report["findings"]}
    assert (pids["test_compat.py::test_fails"], pids["test_compat.py::test_setup_error"]) == (
        fails,
        setup,
    )
    inner.assert_nothing_left(run)


TWO_SERVERS_TIMED_OUT_IN_TEARDOWN = """
@pytest.mark.timeout(2)
def test_two_servers(leanhost_server):
    first = leanhost_server()
    second = leanhost_server("--fault", "ignore-stdin-eof")
    pathlib.Path("two.pids").write_text(f"{first.pid} {second.pid}")
"""


def test_a_timeout_during_teardown_still_stops_every_other_server_of_the_test(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    """The call starts two servers at once; the timeout fires at teardown while the one
    that ignores stdin EOF is waited for (shutdown timeout 30 s). The well-behaved one
    must still be stopped at teardown, not found as a leaked server at session end."""
    pytester.makepyfile(test_compat=HEAD + TWO_SERVERS_TIMED_OUT_IN_TEARDOWN)
    run = inner.run("-p", "timeout", "-o", "leanhost_shutdown_timeout=30")
    first, second = map(int, (pytester.path / "two.pids").read_text().split())
    run.result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_two_servers*",
            "E * Failed: Timeout (>2.0s) from pytest-timeout*",
        ]
    )
    assert run.result.ret == 1
    inner.assert_nothing_left(run)
    nodeid = "test_compat.py::test_two_servers"
    # The one whose stop was cut short is killed, so its record is stale: that is expected.
    assert {(f["kind"], f["pid"]) for f in run.report["findings"]} <= {("stale_record", second)}
    assert all(f["nodeid"] == nodeid for f in run.report["findings"])
    assert first not in {f["pid"] for f in run.report["findings"]}
