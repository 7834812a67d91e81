"""pytest-html's report carries the leaks, and a run without pytest-html imports nothing of it.

Each inner run writes a real ``--html`` report; the test reads it with the standard
library's HTML parser (the summary is plain HTML; the rows are the JSON that
pytest-html's page renders) and checks the leaks against what the inner tests did.
"""

from __future__ import annotations

import html
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.inner_runs import InnerPytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HTML_PLUGINS = ("-p", "pytest_html.plugin", "-p", "pytest_metadata.plugin")
LEAKY = "test_leaky.py::"


class Report(HTMLParser):
    """The ``leanhost`` summary section's table rows and text, and the rows' JSON data."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.section_text: list[str] = []
        self.data: dict[str, Any] = {}
        self._depth = 0  # inside <div id="leanhost">: the nesting depth of its divs
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "div" and (self._depth or found.get("id") == "leanhost"):
            self._depth += 1
        elif tag == "div" and found.get("id") == "data-container":
            self.data = json.loads(found["data-jsonblob"] or "{}")
        elif self._depth and tag == "tr":
            self.rows.append([])
        elif self._depth and tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._depth:
            self._depth -= 1
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._depth:
            self.section_text.append(data)


def read_report(path: Path) -> Report:
    assert path.is_file(), f"no HTML report at {path}"
    return Report(path.read_text(encoding="utf-8"))


def test_the_html_report_of_examples_leaky_names_each_leak_with_its_test_kind_pid_and_command(
    pytester: pytest.Pytester, inner: InnerPytest
) -> None:
    shutil.copy(EXAMPLES / "leaky" / "test_leaky.py", pytester.path / "test_leaky.py")
    run = inner.run(*HTML_PLUGINS, "--html=report.html", "--self-contained-html")
    assert run.result.ret == 1
    report = read_report(pytester.path / "report.html")
    shown = sorted((row[1], row[0]) for row in report.rows if row)  # (kind, test)
    assert shown == [
        ("corrupt_record", LEAKY + "test_corrupt_record[http]"),
        ("corrupt_record", LEAKY + "test_corrupt_record[stdio]"),
        ("leaked_process", LEAKY + "test_leaked_process[http]"),
        ("leaked_process", LEAKY + "test_leaked_process[stdio]"),
        ("leaked_server", LEAKY + "test_leaked_server[http]"),
        ("leaked_server", LEAKY + "test_leaked_server[stdio]"),
        ("orphaned_server", LEAKY + "test_orphaned_server"),
        ("stale_record", LEAKY + "test_stale_record[http]"),
        ("stale_record", LEAKY + "test_stale_record[stdio]"),
    ]
    # The PIDs are the servers the inner run started (each Python server wrote its PID
    # down; the workers run with -S, so they cannot), and each row's command line is theirs.
    written = {entry.pid for entry in inner.written_down()}
    rows = {(row[0], row[1]): row for row in report.rows if row}
    for kind, test in shown:
        _test, _kind, pid, _action, found_at, command = rows[(test, kind)]
        assert found_at == "session end", rows[(test, kind)]
        if kind != "leaked_process":
            assert int(pid) in written, (kind, test, pid)
        if kind in ("leaked_server", "orphaned_server"):
            assert "pytest_leanhost.refserver" in command, command
        if kind == "leaked_process":
            assert "time.sleep(120)" in command, command
    # The terminal's lines: every leak's first line and its process tree.
    text = "".join(report.section_text)
    assert "9 leak(s) failed the run, 0 allowed" in text
    for kind, test in shown:
        assert f"{kind} {test} pid=" in text
    assert "escaped=reparented" in text  # the orphan's line
    inner.assert_nothing_left()


PER_TEST_SUITE = """
import os, subprocess, sys

def test_forgets_a_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    open(os.environ["CHILD_PID_FILE"], "w").write(str(child.pid))

def test_clean():
    pass
"""


def test_with_per_test_checks_the_leaking_tests_own_row_shows_its_leak(
    pytester: pytest.Pytester, inner: InnerPytest, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_suite=PER_TEST_SUITE)
    pid_file = pytester.path / "child.pid"
    monkeypatch.setenv("CHILD_PID_FILE", str(pid_file))
    run = inner.run(
        *HTML_PLUGINS, "--html=report.html", "--self-contained-html", "--leanhost-check=test"
    )
    run.result.assert_outcomes(passed=2, errors=1)
    child = int(pid_file.read_text())
    report = read_report(pytester.path / "report.html")
    nodeid = "test_suite.py::test_forgets_a_child"
    rows = report.data["tests"][nodeid]
    own = [row for row in rows if row["testId"] == nodeid]  # the call's row, not ::teardown
    assert len(own) == 1, rows
    extras = [html.unescape(e["content"]) for e in own[0]["extras"] if e["format_type"] == "html"]
    assert any(f"leaked_process {nodeid} pid={child} " in extra for extra in extras), extras
    assert not [row for row in report.data["tests"]["test_suite.py::test_clean"] if row["extras"]]
    text = "".join(report.section_text)
    assert "1 leak(s) failed the run (1 reported at teardown), 0 allowed." in text
    assert f"pid={child} " in text
    inner.assert_nothing_left()


PROBE = """
import json, os, sys

def pytest_unconfigure(config):
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "pytest_html"
                    or m == "pytest_leanhost.plugin.html")
    with open(os.environ["MODULES_FILE"], "w") as out:
        json.dump(loaded, out)
"""


@pytest.mark.parametrize(
    ("how", "args", "loads_html"),
    [
        # pytest-html has two entry points: its plugin, and its fixtures (which import it).
        ("autoload, -p no:html", ["-p", "no:html", "-p", "no:html_fixtures"], False),
        ("autoload off, not named", [], False),
        ("loaded, no --html", list(HTML_PLUGINS), None),
        ("loaded, --html", [*HTML_PLUGINS, "--html=report.html"], True),
    ],
)
def test_a_run_without_pytest_html_imports_nothing_of_it(
    pytester: pytest.Pytester,
    inner: InnerPytest,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    args: list[str],
    loads_html: bool | None,
) -> None:
    pytester.makeconftest(PROBE)
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    modules = pytester.path / "modules.json"
    monkeypatch.setenv("MODULES_FILE", str(modules))
    if how.startswith("autoload,"):
        monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")  # every installed plugin loads
    run = inner.run(*args)
    assert run.result.ret == 0, run.result.stdout.str()
    loaded = json.loads(modules.read_text())
    if loads_html is False:
        assert loaded == []  # neither pytest-html nor this plugin's module for it
    elif loads_html is None:
        assert "pytest_leanhost.plugin.html" not in loaded  # pytest-html loaded, no report
    else:
        assert {"pytest_html", "pytest_leanhost.plugin.html"} <= set(loaded)
