"""The examples, run as a user runs them: the leaky suite's findings, the clean suites' passes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.inner_runs import InnerPytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_with_report(inner: InnerPytest, *args: str) -> tuple[Any, dict[str, Any]]:
    run = inner.run(*args)
    return run.result, run.report


def test_every_leak_kind_is_caught_over_each_transport(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    shutil.copy(EXAMPLES / "leaky" / "test_leaky.py", pytester.path / "test_leaky.py")
    result, data = run_with_report(inner)
    assert result.ret == 1
    found = sorted((f["kind"], f["nodeid"], f["action"]) for f in data["findings"])
    leaky = "test_leaky.py::"
    assert found == [
        ("corrupt_record", leaky + "test_corrupt_record[http]", "record_removed"),
        ("corrupt_record", leaky + "test_corrupt_record[stdio]", "record_removed"),
        ("leaked_process", leaky + "test_leaked_process[http]", "terminated"),
        ("leaked_process", leaky + "test_leaked_process[stdio]", "terminated"),
        ("leaked_server", leaky + "test_leaked_server[http]", "terminated"),
        ("leaked_server", leaky + "test_leaked_server[stdio]", "terminated"),
        ("orphaned_server", leaky + "test_orphaned_server", "terminated"),
        ("stale_record", leaky + "test_stale_record[http]", "record_removed"),
        ("stale_record", leaky + "test_stale_record[stdio]", "record_removed"),
    ]
    transports = {f["nodeid"]: f["transport"] for f in data["findings"] if f["record"]}
    assert transports[leaky + "test_leaked_server[http]"] == "http"
    assert transports[leaky + "test_stale_record[stdio]"] == "stdio"
    # Afterwards: no process the run started (each wrote its PID down), no record left.
    inner.assert_nothing_left()
    for finding in data["findings"]:
        if finding["registry"] is not None:
            assert list(Path(finding["registry"]).glob("*.json")) == []
    result.stdout.fnmatch_lines(
        ["*= leanhost =*", "leanhost: 9 leak(s) failed the run, 0 allowed*"]
    )


def test_the_example_suites_pass_and_print_the_doctor_section(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    for suite in ("refserver_suite", "sdk_suite", "sdk_server", "any_server"):
        shutil.copytree(EXAMPLES / suite, pytester.path / suite)
    result, data = run_with_report(
        inner, "--leanhost-doctor", "refserver_suite", "sdk_suite", "any_server"
    )
    assert result.ret == 0, result.stdout.str()
    # Copied away from tests/node, any_server drives its plain SDK server (HTTP skips).
    result.assert_outcomes(passed=11, skipped=1)
    assert data["findings"] == []
    result.stdout.fnmatch_lines(
        [
            "*= leanhost doctor =*",
            "(* other registries of the session held no record)",
            "default registry *:",
        ]
    )


CLEAN_SUITE = """
import pytest

@pytest.mark.parametrize("n", range(50))
def test_server(leanhost_server, n):
    server = leanhost_server(transport="http" if n % 2 else "stdio")
    server.initialize()
    assert server.call_tool("echo", {"text": str(n)})["content"][0]["text"] == str(n)
    if n % 5 == 0:
        server.call_tool("spawn_worker", {})
"""


def test_a_clean_suite_of_fifty_servers_never_raises_a_false_alarm(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    pytester.makepyfile(test_clean=CLEAN_SUITE)
    for _ in range(10):
        result, data = run_with_report(inner, "-q")
        assert result.ret == 0, result.stdout.str()
        assert data["findings"] == []
        assert data["registries_checked"] == 50
