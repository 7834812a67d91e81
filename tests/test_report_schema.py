"""The ``--leanhost-report`` document against the JSON Schema the package ships.

The schema is read the way a user's tooling reads it, as package data
(``pytest_leanhost/schemas/report.schema.json``), and real inner runs, one
clean and one leaking every way a report can show, must validate against it.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
from typing import Any

import jsonschema
import pytest

from pytest_leanhost.core.kinds import FOUND_AT, LEAK_KINDS
from tests.inner_runs import InnerPytest


def load_schema() -> dict[str, Any]:
    resource = importlib.resources.files("pytest_leanhost") / "schemas" / "report.schema.json"
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def errors(validator: jsonschema.protocols.Validator, document: dict[str, Any]) -> list[str]:
    return sorted(
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    )


def test_the_schema_is_draft_2020_12_and_names_every_leak_kind() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$defs"]["finding"]["properties"]["kind"]["enum"] == list(LEAK_KINDS)
    assert schema["properties"]["schema_version"]["enum"] == [1, 2, 3]
    assert schema["$defs"]["finding"]["properties"]["found_at"]["enum"] == list(FOUND_AT)


CLEAN = """
def test_echo(leanhost_server):
    server = leanhost_server()
    server.initialize()
    assert server.call_tool("echo", {"text": "hi"})["content"][0]["text"] == "hi"

def test_http(leanhost_server):
    leanhost_server(transport="http").initialize()
"""

# A server with a record, a process without one, and an allowed corrupt record:
# strings and nulls in every field a finding can carry.
LEAKY = """
import os, subprocess, sys, time
from pathlib import Path
import pytest

HELD = []

def registry():
    return Path(os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"])

def test_leaks_a_server():
    HELD.append(subprocess.Popen([sys.executable, "-m", "pytest_leanhost.refserver"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    deadline = time.monotonic() + 30
    while not (registry() / f"{HELD[-1].pid}.json").exists():
        assert time.monotonic() < deadline, "the server never registered"
        time.sleep(0.01)

def test_leaks_a_process():
    HELD.append(subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE))

@pytest.mark.leanhost_allow("corrupt_record")
def test_leaves_a_corrupt_record():
    registry().mkdir(parents=True, exist_ok=True)
    (registry() / "4242.json").write_text("not a record")
"""


def test_a_clean_run_s_report_validates(
    pytester: pytest.Pytester, inner: InnerPytest, validator: jsonschema.protocols.Validator
) -> None:
    pytester.makepyfile(test_clean=CLEAN)
    run = inner.run()
    assert run.result.ret == 0, run.result.stdout.str()
    assert run.report["findings"] == []
    assert run.report["registries_checked"] == 2
    assert errors(validator, run.report) == []


def test_a_leaking_run_s_report_validates(
    pytester: pytest.Pytester, inner: InnerPytest, validator: jsonschema.protocols.Validator
) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    run = inner.run()
    assert run.result.ret == 1, run.result.stdout.str()
    assert run.findings == [
        ("corrupt_record", "test_leaky.py::test_leaves_a_corrupt_record", "record_removed"),
        ("leaked_process", "test_leaky.py::test_leaks_a_process", "terminated"),
        ("leaked_server", "test_leaky.py::test_leaks_a_server", "terminated"),
    ]
    by_kind = {finding["kind"]: finding for finding in run.report["findings"]}
    assert by_kind["corrupt_record"]["pid"] == 4242  # from the file's name
    assert by_kind["corrupt_record"]["transport"] is None
    assert by_kind["corrupt_record"]["allowed"] is True
    assert by_kind["leaked_process"]["record"] is None
    assert by_kind["leaked_server"]["transport"] == "stdio"
    assert errors(validator, run.report) == []
    inner.assert_nothing_left(run)


REPORT: dict[str, Any] = {
    "schema_version": 3,
    "session_id": "lh-0123",
    "interrupted": False,
    "registries_checked": 1,
    "records_checked": 1,
    "check_seconds": 0.01,
    "findings": [
        {
            "kind": "stale_record",
            "nodeid": "t.py::t",
            "pid": 7,
            "transport": "http",
            "record": "/r/7.json",
            "registry": "/r",
            "action": "record_removed",
            "allowed": False,
            "worker": "gw0",
            "detail": "",
            "process": None,
        }
    ],
    "earlier_sessions": [],
    "watched_registries": ["/home/me/.cache/lean-host-mcp/processes"],
}


def test_the_schema_requires_every_key_and_checks_the_words(
    validator: jsonschema.protocols.Validator,
) -> None:
    assert errors(validator, REPORT) == []
    for key in REPORT:
        broken = {name: value for name, value in REPORT.items() if name != key}
        assert errors(validator, broken) == [f": '{key}' is a required property"]
    for key in REPORT["findings"][0]:
        broken = copy.deepcopy(REPORT)
        del broken["findings"][0][key]
        assert errors(validator, broken) == [f"findings/0: '{key}' is a required property"]
    for key, value in [
        ("kind", "leak"),
        ("action", "removed"),
        ("pid", "7"),
        ("pid", -1),
        ("allowed", None),
        ("detail", None),
        ("found_at", "later"),
    ]:
        broken = copy.deepcopy(REPORT)
        broken["findings"][0][key] = value
        assert len(errors(validator, broken)) == 1, (key, value)
    assert errors(validator, {**REPORT, "schema_version": 99}) != []
    assert errors(validator, {**REPORT, "interrupted": "no"}) != []


def test_later_versions_may_add_keys_at_the_top_and_in_each_finding(
    validator: jsonschema.protocols.Validator,
) -> None:
    extended = copy.deepcopy(REPORT)
    extended["added_later"] = {"any": "thing"}
    extended["findings"][0]["added_later"] = [1, 2]
    assert errors(validator, extended) == []
