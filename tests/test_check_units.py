"""The pure parts of the session-end check and its report, without a pytest subprocess.

Classification runs on real data: a real record file for a real PID that has
exited (a child this test started and reaped), and a corrupt file in a real
registry directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_leanhost.core.check import check_session, clean_up
from pytest_leanhost.core.detail import AncestorDetail, PhaseSpan, ProcessDetail, RelativeDetail
from pytest_leanhost.core.explain import phase_of
from pytest_leanhost.core.finding import CleanupTarget, Finding, FindingShapeError
from pytest_leanhost.core.kinds import ACTIONS, KINDS, LEAK_KINDS, Action, LeakKind
from pytest_leanhost.files import write_atomically
from pytest_leanhost.plugin.outcome import CheckCounts, ReportShapeError, RunVerdict, WorkerReport
from pytest_leanhost.plugin.report import finding_details, finding_line
from pytest_leanhost.plugin.xdist import XdistController
from pytest_leanhost.record import ProcessRecord


def dead_pid() -> int:
    """The PID of a child that has exited and been reaped by this test."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def make_registry(tmp_path: Path) -> Path:
    registry = tmp_path / "registry"
    registry.mkdir(mode=0o700)
    return registry


def test_the_kind_and_action_lists_are_the_literals() -> None:
    assert KINDS == typing.get_args(LeakKind) == tuple(LEAK_KINDS)
    assert ACTIONS == typing.get_args(Action) == ("none", "record_removed", "terminated", "killed")


def test_a_finding_is_frozen_and_a_change_is_a_new_finding() -> None:
    finding = Finding(kind="stale_record", pid=7)
    with pytest.raises(AttributeError):
        finding.action = "killed"  # type: ignore[misc]
    changed = finding._replace(action="killed")
    assert (finding.action, changed.action, changed.pid) == ("none", "killed", 7)


def test_a_record_of_a_dead_pid_is_a_stale_record_and_cleanup_removes_it(
    tmp_path: Path,
) -> None:
    registry = make_registry(tmp_path)
    pid = dead_pid()
    path = registry / f"{pid}.json"
    record = ProcessRecord(pid, sys.executable, "/", int(time.time() * 1000), None, None, "stdio")
    write_atomically(path, record.to_json_bytes())

    checked = check_session({str(registry): "t.py::test_a"}, None, grace=0)

    (finding,) = checked.findings
    assert finding == Finding(
        kind="stale_record",
        nodeid="t.py::test_a",
        pid=pid,
        transport="stdio",
        record=str(path),
        registry=str(registry),
        detail="",
    )
    assert checked.pairs == [(finding, CleanupTarget(data=path.read_bytes()))]
    (done,) = clean_up(checked.pairs, shutdown_timeout=1.0)
    assert done == finding._replace(action="record_removed")
    assert finding.action == "none"  # the check's finding is unchanged
    assert not path.exists()


def test_a_record_rewritten_after_the_check_is_not_removed(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    path = registry / f"{dead_pid()}.json"
    path.write_bytes(b"{ not json")
    checked = check_session({str(registry): None}, None, grace=0)
    (finding,) = checked.findings
    assert finding.kind == "corrupt_record"
    path.write_bytes(b"{ still not json, but other bytes")
    (done,) = clean_up(checked.pairs, shutdown_timeout=1.0)
    assert done.action == "none"
    assert path.exists()


def test_a_finding_without_a_cleanup_target_is_left_alone(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    path = registry / f"{dead_pid()}.json"
    path.write_bytes(b"garbage")
    checked = check_session({str(registry): None}, None, grace=0)
    (done,) = clean_up([(f, CleanupTarget()) for f in checked.findings], shutdown_timeout=1.0)
    assert done.action == "none"
    assert path.exists()


def test_finding_line_names_kind_test_pid_record_action_and_flags() -> None:
    finding = Finding(
        kind="leaked_server",
        nodeid="t.py::test_a",
        pid=42,
        transport="http",
        record="/r/42.json",
        action="terminated",
        worker="gw1",
        detail="child_pids=43",
        allowed=True,
    )
    assert finding_line(finding) == (
        "leaked_server t.py::test_a pid=42 transport=http action=terminated worker=gw1 [allowed]"
    )
    assert finding_details(finding) == ["  record=/r/42.json", "  child_pids=43"]
    assert finding_line(Finding(kind="leaked_process")) == (
        "leaked_process <session> pid=- transport=- action=none"
    )


def sample_report() -> WorkerReport:
    return WorkerReport(
        findings=(
            Finding(kind="leaked_process", nodeid="t.py::test_a", pid=5, worker="gw0"),
            Finding(kind="corrupt_record", registry="/r", detail="registry unreadable: x"),
        ),
        registries=("/r", "/s"),
        counts=CheckCounts(registries_checked=2, records_checked=3, seconds=0.25),
        doctor=("t.py::test_a (registry /r):", "  (no records)"),
    )


def test_a_worker_report_survives_the_trip_through_json() -> None:
    report = sample_report()
    assert WorkerReport.from_json(json.loads(json.dumps(report.to_json()))) == report
    assert Finding.from_json(report.findings[0].to_json()) == report.findings[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("findings"), "findings must be a list"),
        (lambda d: d.update(records_checked="3"), "counts must be integers"),
        (lambda d: d.update(seconds=None), "seconds must be a number"),
        (lambda d: d.update(doctor=[1]), "lists of strings"),
        (lambda d: d["findings"][0].update(kind="lost"), "unknown leak kind 'lost'"),
        (lambda d: d["findings"][0].update(action="shot"), "unknown action 'shot'"),
        (lambda d: d["findings"][0].update(pid="5"), "pid is '5'"),
        (lambda d: d["findings"].append([]), "a finding is a JSON object"),
    ],
)
def test_a_malformed_worker_report_is_rejected_with_what_is_wrong(
    change: typing.Callable[[dict[str, typing.Any]], object], message: str
) -> None:
    data = json.loads(json.dumps(sample_report().to_json()))
    change(data)
    with pytest.raises(ReportShapeError, match=message):
        WorkerReport.from_json(data)


def test_a_finding_of_the_wrong_shape_is_rejected() -> None:
    with pytest.raises(FindingShapeError, match="nodeid is 3"):
        Finding.from_json({"kind": "stale_record", "nodeid": 3})


def test_the_controller_turns_a_malformed_report_into_one_line() -> None:
    controller = XdistController()
    node = SimpleNamespace(gateway=SimpleNamespace(id="gw3"), workeroutput={"leanhost": [1]})
    controller.pytest_testnodedown(node, None)
    good = SimpleNamespace(gateway=SimpleNamespace(id="gw4"), workeroutput={"leanhost": {}})
    good.workeroutput["leanhost"] = sample_report().to_json()
    controller.pytest_testnodedown(good, None)
    assert controller.reports == [sample_report()]
    (line,) = controller.problems
    assert line.startswith("leanhost: worker gw3 sent a malformed report (expected a JSON object")
    verdict = RunVerdict.merge(WorkerReport(), controller.reports, controller.problems)
    assert verdict.fails_run


def test_the_verdict_sums_counts_once_and_sorts_findings() -> None:
    own = WorkerReport(
        findings=(Finding(kind="stale_record", nodeid="a.py::t", allowed=True),),
        counts=CheckCounts(registries_checked=1, records_checked=1, seconds=0.5),
    )
    verdict = RunVerdict.merge(own, [sample_report(), sample_report()])
    assert verdict.counts == CheckCounts(registries_checked=5, records_checked=7, seconds=0.75)
    assert [f.nodeid for f in verdict.findings] == [
        None,
        None,
        "a.py::t",
        "t.py::test_a",
        "t.py::test_a",
    ]
    assert len(verdict.failing) == 4
    assert not RunVerdict.merge(own, []).fails_run


def test_a_start_tick_shared_by_two_tests_goes_to_the_test_the_finding_names() -> None:
    # Tick 10 covers [0.10, 0.11): test_a's call ends at 0.107, test_b's call starts at 0.108.
    spans = [
        PhaseSpan("t.py::test_a", "call", 0.05, 0.107),
        PhaseSpan("t.py::test_a", "teardown", 0.107, 0.1075),
        PhaseSpan("t.py::test_b", "setup", 0.1075, 0.108),
        PhaseSpan("t.py::test_b", "call", 0.108, 0.3),
    ]
    assert phase_of(10, 100, spans) == ("call", "t.py::test_a")  # most of the tick
    assert phase_of(10, 100, spans, prefer="t.py::test_b") == ("call", "t.py::test_b")
    assert phase_of(20, 100, spans) == ("call", "t.py::test_b")
    assert phase_of(40, 100, spans) == ("session", None)
    assert phase_of(1, 100, spans) == ("session", None)


def test_a_finding_with_its_process_detail_survives_the_worker_report_json() -> None:
    detail = ProcessDetail(
        cmdline=("sleep", "300"),
        cwd="/tmp",
        started_unix=1.5,
        age_seconds=2.0,
        phase="setup",
        started_in="t.py::test_a",
        ancestry=(AncestorDetail(7, ("pytest",), True),),
        escaped=("new_session", "reparented"),
        descendants=(RelativeDetail(9, 8, ("worker",)),),
    )
    finding = Finding(kind="leaked_process", nodeid="t.py::test_a", pid=8, process=detail)
    again = WorkerReport.from_json(
        json.loads(json.dumps(WorkerReport(findings=(finding,)).to_json()))
    )
    assert again.findings == (finding,)
    broken = finding.to_json() | {"process": {**detail.to_json(), "phase": "lunch"}}
    with pytest.raises(FindingShapeError, match="unknown phase 'lunch'"):
        Finding.from_json(broken)


def test_a_finding_that_two_tests_may_own_names_both_and_survives_the_worker_hop() -> None:
    from pytest_leanhost.plugin.report import finding_line

    finding = Finding(kind="leaked_process", nodeid="t.py::a", nodeids=("t.py::a", "t.py::b"))
    assert Finding.from_json(json.loads(json.dumps(finding.to_json()))) == finding
    assert "t.py::a | t.py::b" in finding_line(finding)
    single = Finding(kind="leaked_process", nodeid="t.py::a")
    assert single.to_json()["nodeids"] == ["t.py::a"]
    assert Finding.from_json(single.to_json()) == single


def test_a_long_command_line_is_wrapped_not_cut_before_the_port_that_tells_servers_apart() -> None:
    server = (
        "/opt/very/long/path/to/a/virtual/environment/of/the/project/bin/python",
        "-m",
        "my_mcp_server.http",
        "--host",
        "127.0.0.1",
        "--log-level",
        "debug",
        "--config",
        "/home/someone/projects/server/configs/integration-tests/server.toml",
        "--port",
        "8766",
    )
    launcher = ("sh", "-c", "exec " + " ".join(server) + " --daemon")
    detail = ProcessDetail(
        cmdline=server,
        cwd="/tmp",
        started_unix=0.0,
        age_seconds=2.0,
        phase="call",
        started_in=None,
        ancestry=(AncestorDetail(41, launcher, False), AncestorDetail(1, ("pytest",) * 80, True)),
    )
    finding = Finding(kind="leaked_process", nodeid="t.py::test_a", pid=42, process=detail)
    lines = finding_details(finding)
    text = "\n".join(lines)
    # Every argument is there, in order, wrapped; the age and phase close the command.
    assert " ".join(text.replace("\n", " ").split()).startswith("42 " + " ".join(server))
    assert all(len(line) <= 100 + len("  (age 2.0s, started in call)") for line in lines)
    assert "--port 8766  (age 2.0s, started in call)" in text
    assert not any(line.rstrip().endswith("...") for line in lines[:3])
    # The launcher, the nearest ancestor, is shown in full too; the ones above it cut.
    ancestry = text[text.index("ancestry: 41 ") :]
    assert "--port 8766 --daemon' (dead)" in " ".join(ancestry.split())
    assert ancestry.splitlines()[-2].strip().startswith("<- 1 pytest pytest")
    assert ancestry.splitlines()[-2].rstrip().endswith("...")
