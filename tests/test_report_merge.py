"""``leanhost report merge`` and the GitHub Actions step summary, on real reports of real runs.

A suite of two files is run as two shards (one file each, as a CI matrix
would), each a real pytest subprocess with the plugin writing its own
``--leanhost-report``; the reports are then merged by the ``leanhost`` command
run as a subprocess. The leaked processes write their own PIDs down, so the
merged findings are checked against what the inner tests saw, never against
the plugin's own reader. The step summary is read back from the file that
``GITHUB_STEP_SUMMARY`` names and parsed as a Markdown table here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.inner_runs import InnerPytest, InnerRun
from tests.report_schema import validate_report
from tests.test_cli import leanhost

# Each leaking test writes the PID of what it leaves into PIDS_DIR/<test name>.
FORGETS_A_CHILD = """
import os, subprocess, sys
from pathlib import Path

HELD = []

def test_forgets_a_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    HELD.append(child)
    Path(os.environ["PIDS_DIR"], "test_forgets_a_child").write_text(str(child.pid))

def test_clean_twin():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""

LEAKS_A_SERVER = '''
import os, subprocess, sys
from pathlib import Path

SERVER = """
import sys
from pytest_leanhost.record import register_server_process
register_server_process("stdio")
print("up", flush=True)
sys.stdin.read()
"""
HELD = []

def test_leaks_a_server():
    child = subprocess.Popen([sys.executable, "-c", SERVER],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    HELD.append(child)
    assert child.stdout.readline() == "up\\n"
    Path(os.environ["PIDS_DIR"], "test_leaks_a_server").write_text(str(child.pid))
'''

# A leaked command line with a "|", a newline and a backtick: none may break the table.
AWKWARD = """
import os, subprocess, sys
from pathlib import Path

HELD = []

def test_leaks_an_awkward_command():
    code = "import time  # a | b `c`\\ntime.sleep(120)"
    child = subprocess.Popen([sys.executable, "-c", code])
    HELD.append(child)
    Path(os.environ["PIDS_DIR"], "test_leaks_an_awkward_command").write_text(str(child.pid))
"""

CLEAN = """
import subprocess, sys

def test_starts_and_waits():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


def merge(*reports: Path, out: Path, summary: Path) -> subprocess.CompletedProcess[str]:
    """``leanhost report merge REPORTS --json OUT`` with ``GITHUB_STEP_SUMMARY=summary``."""
    args = ["report", "merge", *map(str, reports), "--json", str(out)]
    return leanhost(*args, env={"GITHUB_STEP_SUMMARY": str(summary)})


def shard(inner: InnerPytest, path: str, keep: Path) -> tuple[InnerRun, Path]:
    """Run one test file as a shard; its report is copied to ``keep`` (the next run replaces it)."""
    run = inner.run(path)
    shutil.copyfile(inner.pytester.path / "leanhost-report.json", keep)
    return run, keep


@pytest.fixture
def pids_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the inner tests write down the PIDs they leak."""
    directory = tmp_path / "pids-written"
    directory.mkdir()
    monkeypatch.setenv("PIDS_DIR", str(directory))
    return directory


def written(pids_dir: Path, test: str) -> int:
    return int((pids_dir / test).read_text())


def hostname() -> str:
    """This machine's host name, as the kernel says it."""
    return Path("/proc/sys/kernel/hostname").read_text().strip()


def table_rows(markdown: str) -> list[list[str]]:
    """The data rows of the Markdown table in ``markdown``, cells split on unescaped ``|``."""
    rows = []
    for line in markdown.splitlines():
        if not line.startswith("| ") or line.startswith(("| Test ", "| --- ")):
            continue
        assert line.endswith(" |"), line
        cells = re.split(r"(?<!\\)\|", line[1:-1])
        rows.append([cell.strip() for cell in cells])
    return rows


def code(cell: str) -> str:
    """The text of a code-span cell, with GitHub's table escape ``\\|`` undone."""
    match = re.fullmatch(r"(`+) ?(.*?) ?\1", cell)
    assert match, cell
    return match.group(2).replace("\\|", "|")


# -- leanhost report merge ------------------------------------------------------------


def test_merging_two_leaking_shards_fails_and_keeps_each_finding_s_test_and_session(
    pytester: pytest.Pytester, inner: InnerPytest, pids_dir: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(test_one=FORGETS_A_CHILD, test_two=LEAKS_A_SERVER)
    one, one_report = shard(inner, "test_one.py", tmp_path / "shard-1.json")
    two, two_report = shard(inner, "test_two.py", tmp_path / "shard-2.json")
    assert one.result.ret == two.result.ret == 1
    merged_path = tmp_path / "merged.json"
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")

    result = merge(one_report, two_report, out=merged_path, summary=summary)

    assert result.returncode == 1, result.stdout + result.stderr
    child, server = (
        written(pids_dir, "test_forgets_a_child"),
        written(pids_dir, "test_leaks_a_server"),
    )
    out = result.stdout
    assert re.fullmatch(r"=+ leanhost =+", out.splitlines()[0])
    assert (
        f"leaked_process test_one.py::test_forgets_a_child pid={child} transport=- "
        "action=terminated" in out
    )
    assert (
        f"leaked_server test_two.py::test_leaks_a_server pid={server} transport=stdio "
        "action=terminated" in out
    )
    assert f"{one_report} (session {one.report['session_id']}): 1 leak(s)" in out
    assert f"{two_report} (session {two.report['session_id']}): 1 leak(s)" in out
    assert out.endswith("leanhost: 2 leak(s) failed the run, 0 allowed; 2 report(s) merged\n")
    assert "test_clean_twin" not in out

    merged = json.loads(merged_path.read_text())
    validate_report(merged)
    assert sorted(
        (f["kind"], f["nodeid"], f["pid"], f["session_id"]) for f in merged["findings"]
    ) == [
        ("leaked_process", "test_one.py::test_forgets_a_child", child, one.report["session_id"]),
        ("leaked_server", "test_two.py::test_leaks_a_server", server, two.report["session_id"]),
    ]
    # Every key a shard's finding had is kept as it was.
    for original in [*one.report["findings"], *two.report["findings"]]:
        (copy,) = [f for f in merged["findings"] if f["pid"] == original["pid"]]
        assert {key: copy[key] for key in original} == original
    assert merged["registries_checked"] == (
        one.report["registries_checked"] + two.report["registries_checked"]
    )
    assert [(s["report"], s["session_id"], s["findings"]) for s in merged["shards"]] == [
        (str(one_report), one.report["session_id"], 1),
        (str(two_report), two.report["session_id"], 1),
    ]

    text = summary.read_text()
    assert text.startswith("earlier step\n")  # appended, never overwritten
    assert "### leanhost: 2 leak(s) failed the run" in text
    rows = {code(row[0]): row for row in table_rows(text)}
    assert set(rows) == {"test_one.py::test_forgets_a_child", "test_two.py::test_leaks_a_server"}
    assert rows["test_one.py::test_forgets_a_child"][1:3] == ["`leaked_process`", str(child)]
    assert rows["test_two.py::test_leaks_a_server"][1:3] == ["`leaked_server`", str(server)]
    assert "time.sleep(120)" in code(rows["test_one.py::test_forgets_a_child"][4])
    assert code(rows["test_one.py::test_forgets_a_child"][3]) == hostname()  # each finding's host
    inner.assert_nothing_left()


def test_merging_clean_shards_passes_and_says_nothing_leaked(
    pytester: pytest.Pytester, inner: InnerPytest, tmp_path: Path
) -> None:
    pytester.makepyfile(test_one=CLEAN, test_two=CLEAN)
    one, one_report = shard(inner, "test_one.py", tmp_path / "shard-1.json")
    two, two_report = shard(inner, "test_two.py", tmp_path / "shard-2.json")
    assert one.result.ret == two.result.ret == 0
    summary = tmp_path / "step-summary.md"

    result = merge(one_report, two_report, out=tmp_path / "merged.json", summary=summary)

    assert result.returncode == 0, result.stdout + result.stderr
    checked = one.report["registries_checked"] + two.report["registries_checked"]
    assert result.stdout.splitlines()[1:] == [
        f"leanhost: no leaks (2 report(s) merged, {checked} registries checked)"
    ]
    merged = json.loads((tmp_path / "merged.json").read_text())
    validate_report(merged)
    assert merged["findings"] == []
    text = summary.read_text()
    assert "### leanhost: no leaks" in text
    assert table_rows(text) == []
    (line,) = [line for line in text.splitlines() if line.startswith("Nothing leaked")]
    assert one.report["session_id"] in line
    assert two.report["session_id"] in line


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'{"schema_version": 2}', "session_id is None"),
        (None, "cannot read it"),
    ],
    ids=["truncated", "binary", "a-list", "wrong-shape", "missing"],
)
def test_a_file_that_is_not_a_report_exits_2_with_one_line_naming_it(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_minimal_report()))
    bad = tmp_path / "shard-2.json"
    if content is not None:
        bad.write_bytes(content)

    result = leanhost("report", "merge", str(good), str(bad), "--json", str(tmp_path / "out"))

    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"leanhost: error: {bad}: not a leanhost report: {reason}")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_schema_version_exits_2_naming_the_file(
    pytester: pytest.Pytester, inner: InnerPytest, tmp_path: Path
) -> None:
    pytester.makepyfile(test_one=CLEAN)
    run, report = shard(inner, "test_one.py", tmp_path / "shard-1.json")
    future = tmp_path / "from-the-future.json"
    future.write_text(json.dumps({**run.report, "schema_version": 99}))

    result = leanhost("report", "merge", str(report), str(future))

    assert result.returncode == 2
    assert result.stderr == (
        f"leanhost: error: {future}: not a leanhost report: unknown schema_version 99 "
        "(this leanhost reads 1, 2, 3)\n"
    )
    assert leanhost("report", "merge", str(report)).returncode == 0  # the real one alone is fine


def test_a_report_named_twice_is_merged_once(tmp_path: Path) -> None:
    report = tmp_path / "shard.json"
    finding = {"kind": "stale_record", "nodeid": "t.py::t", "pid": 7, "action": "record_removed"}
    report.write_text(json.dumps(_minimal_report(findings=[finding])))

    result = leanhost("report", "merge", str(report), str(report), "--json", str(tmp_path / "o"))

    assert result.returncode == 1
    assert result.stderr == (
        f"leanhost: warning: {report}: session s-1 was already merged from {report}; left out\n"
    )
    merged = json.loads((tmp_path / "o").read_text())
    validate_report(merged)
    assert [f["pid"] for f in merged["findings"]] == [7]


def test_keys_a_finding_carries_are_kept_and_its_host_is_shown(tmp_path: Path) -> None:
    host = {"hostname": "remote-1", "boot_id": "b-1", "pid_namespace": "pid:[4026531836]"}
    finding = {
        "kind": "leaked_process",
        "nodeid": "t.py::t",
        "pid": 4,
        "action": "none",
        "host": host,
        "found_at": "teardown",
    }
    report = tmp_path / "remote.json"
    report.write_text(json.dumps(_minimal_report(findings=[finding])))
    summary = tmp_path / "summary.md"

    result = merge(report, out=tmp_path / "o", summary=summary)

    assert result.returncode == 1
    (merged,) = json.loads((tmp_path / "o").read_text())["findings"]
    assert merged["host"] == host
    assert merged["found_at"] == "teardown"
    assert merged["session_id"] == "s-1"
    validate_report(json.loads((tmp_path / "o").read_text()))
    ((test, kind, pid, shown, command),) = table_rows(summary.read_text())
    assert (code(test), code(kind), pid) == ("t.py::t", "leaked_process", "4")
    assert (code(shown), command) == ("remote-1", "-")


def test_the_merge_loads_neither_pytest_nor_psutil() -> None:
    code = (
        "import sys, pytest_leanhost.core.cli, pytest_leanhost.core.merge, "
        "pytest_leanhost.core.step_summary\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pytest', '_pytest', 'psutil', 'jsonschema')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert result.stdout == "[]\n"


def test_the_command_is_in_leanhost_help() -> None:
    result = leanhost("--help")
    assert "report    combine --leanhost-report files" in result.stdout
    assert "merge" in leanhost("report", "--help").stdout


def _minimal_report(findings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A version 1 report: the oldest shape the merge still reads."""
    return {
        "schema_version": 1,
        "session_id": "s-1",
        "interrupted": False,
        "registries_checked": 1,
        "records_checked": 1,
        "check_seconds": 0.01,
        "findings": findings or [],
    }


# -- the step summary of a run ------------------------------------------------------


def test_a_leaking_run_appends_a_table_of_its_leaks_to_the_step_summary(
    pytester: pytest.Pytester,
    inner: InnerPytest,
    pids_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(test_one=FORGETS_A_CHILD, test_awkward=AWKWARD)

    run = inner.run("-p", "xdist", "-n", "2")

    assert run.result.ret == 1
    text = summary.read_text()
    assert text.count("### leanhost") == 1  # the controller writes it, never a worker
    assert (
        "### leanhost: 2 leak(s) failed the run\n\n| Test | Kind | PID | Host | Command |" in text
    )
    rows = {code(row[0]): row for row in table_rows(text)}
    assert all(len(row) == 5 for row in rows.values()), rows
    child = written(pids_dir, "test_forgets_a_child")
    awkward = written(pids_dir, "test_leaks_an_awkward_command")
    forgets = rows["test_one.py::test_forgets_a_child"]
    assert forgets[1:4] == ["`leaked_process`", str(child), f"`{hostname()}`"]
    assert code(forgets[4]).endswith(" -c 'import time; time.sleep(120)'")
    odd = rows["test_awkward.py::test_leaks_an_awkward_command"]
    assert odd[2] == str(awkward)
    # The "|" and the backticks stay inside the cell; the newline is shown as \n.
    assert code(odd[4]).endswith(" -c 'import time  # a | b `c`\\ntime.sleep(120)'")
    assert f"session `{run.report['session_id']}`" in text
    inner.assert_nothing_left()


def test_a_clean_run_appends_one_line_saying_nothing_leaked(
    pytester: pytest.Pytester, inner: InnerPytest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(test_one=CLEAN)

    run = inner.run()

    assert run.result.ret == 0
    checked = run.report["registries_checked"]
    assert summary.read_text() == (
        "\n### leanhost: no leaks\n\n"
        f"Nothing leaked: {checked} registries checked, session `{run.report['session_id']}`.\n"
    )


def test_a_step_summary_that_cannot_be_written_is_one_line_not_an_error(
    pytester: pytest.Pytester, inner: InnerPytest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "no-such-dir" / "summary.md"))
    pytester.makepyfile(test_one=CLEAN)

    run = inner.run()

    assert run.result.ret == 0
    run.result.stdout.fnmatch_lines(["leanhost: cannot append to GITHUB_STEP_SUMMARY: *"])
    assert "INTERNALERROR" not in run.result.stdout.str()


# -- the guide ------------------------------------------------------------------------

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guides" / "beyond-one-machine.md"


def test_the_guide_s_matrix_workflow_uploads_every_shard_s_report_and_merges_them() -> None:
    import yaml

    (block,) = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)
    workflow: dict[str, Any] = yaml.safe_load(block)
    shard_job, merge_job = workflow["jobs"]["shard"], workflow["jobs"]["leak-verdict"]
    groups = shard_job["strategy"]["matrix"]["group"]
    assert shard_job["strategy"]["fail-fast"] is False
    pytest_step = next(s for s in shard_job["steps"] if "pytest" in s.get("name", ""))
    assert "--leanhost-report=leanhost-report-${{ matrix.group }}.json" in pytest_step["run"]
    upload = next(s for s in shard_job["steps"] if "upload-artifact" in s.get("uses", ""))
    assert upload["if"] == "${{ !cancelled() }}"
    assert upload["with"]["path"] == "leanhost-report-${{ matrix.group }}.json"
    assert merge_job["needs"] == "shard"
    assert merge_job["if"] == "${{ !cancelled() }}"
    download = next(s for s in merge_job["steps"] if "download-artifact" in s.get("uses", ""))
    assert download["with"]["pattern"] == "leanhost-report-*"
    runs = [s["run"] for s in merge_job["steps"] if "run" in s]
    assert f"-eq {len(groups)}" in runs[-2]
    assert runs[-1].startswith("leanhost report merge reports/leanhost-report-*.json --json ")
