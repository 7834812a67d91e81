"""The documentation site has an entry for everything a user can type or meet.

The test builds the site (Sphinx, ``-W``, into a temporary directory, once per run
even under xdist) and reads the built HTML with the standard library's parser.
What must be documented comes from the outside: ``pytest --help`` and ``pytest
--fixtures`` of a run with the plugin, ``leanhost --help`` walked down every
subcommand, the leak kinds and escape words in the code and in the report's schema.
An entry is a heading that names the thing, on the page that documents its kind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCHEMA = ROOT / "pytest_leanhost" / "schemas" / "report.schema.json"
README_LIMIT = 12_000


class Page(HTMLParser):
    """A built page's headings (their text, anchors dropped) and the first cell of each row."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.first_cells: list[str] = []
        self.blocks_after: dict[str, int] = {}  # heading -> code blocks before the next one
        self._heading: list[str] | None = None
        self._cell: list[str] | None = None
        self._row_started = False
        self._in_anchor = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if re.fullmatch(r"h[1-6]", tag):
            self._heading = []
        elif tag == "a" and ("class", "headerlink") in attrs:
            self._in_anchor += 1
        elif tag == "tr":
            self._row_started = True
        elif tag == "td" and self._row_started:
            self._row_started = False
            self._cell = []
        elif tag == "pre" and self.headings:
            self.blocks_after[self.headings[-1]] += 1

    def handle_endtag(self, tag: str) -> None:
        if re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            text = " ".join("".join(self._heading).split())
            self.headings.append(text)
            self.blocks_after.setdefault(text, 0)
            self._heading = None
        elif tag == "a" and self._in_anchor:
            self._in_anchor -= 1
        elif tag == "td" and self._cell is not None:
            self.first_cells.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_anchor:
            return
        if self._heading is not None:
            self._heading.append(data)
        if self._cell is not None:
            self._cell.append(data)


def build_site(out: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html", DOCS, out],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site: one build for the whole run, shared by xdist workers through a lock."""
    if (
        importlib.util.find_spec("sphinx") is None
        or importlib.util.find_spec("myst_parser") is None
    ):
        if os.environ.get("CI") == "true":
            pytest.fail(
                "the docs' requirements are not installed (pip install -r docs/requirements.txt)"
            )
        pytest.skip(
            "the docs' requirements are not installed (pip install -r docs/requirements.txt)"
        )
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's, the same for every xdist worker
    out = shared / "leanhost-docs-site"
    with FileLock(str(shared / "leanhost-docs-site.lock")):
        if not (out / "index.html").is_file():
            build_site(out)
    return out


def page(site: Path, name: str) -> Page:
    return Page((site / name).read_text(encoding="utf-8"))


def plugin_run(*args: str, cwd: Path) -> str:
    """Output of ``pytest -p leanhost ARGS`` with only that plugin loaded, in ``cwd``."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")
    }
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "leanhost", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def leanhost_commands(path: tuple[str, ...] = ("leanhost",)) -> Iterator[tuple[str, ...]]:
    """Every command path that ``leanhost --help`` and its subcommands' help list."""
    command = [str(Path(sys.executable).parent / "leanhost"), *path[1:], "--help"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    listed = re.search(r"^positional arguments:\n(.*?)(?:\n\S|\Z)", out, re.DOTALL | re.MULTILINE)
    if listed is None:
        return
    for name in re.findall(r"^    ([a-z][a-z-]*)\b", listed.group(1), re.MULTILINE):
        yield (*path, name)
        yield from leanhost_commands((*path, name))


def schema_enum(*path: str) -> set[str]:
    node = json.loads(SCHEMA.read_text(encoding="utf-8"))
    for key in path:
        node = node[key]
    return set(node["enum"])


def test_every_leanhost_option_and_ini_value_in_pytest_help_has_an_entry(
    site: Path, tmp_path: Path
) -> None:
    out = plugin_run("--help", cwd=tmp_path)
    options = set(re.findall(r"(?<![\w-])(--leanhost-[a-z-]+)", out))
    inis = set(re.findall(r"^\s+(leanhost_[a-z_]+) \(", out, re.MULTILINE))
    assert len(options) >= 5, out  # the help was read at all
    assert len(inis) >= 10, out
    documented = set(page(site, "reference/options.html").headings)
    assert sorted(options - documented) == []
    assert sorted(inis - documented) == []


def test_every_leanhost_fixture_in_pytest_fixtures_has_an_entry(site: Path, tmp_path: Path) -> None:
    out = plugin_run("--fixtures", cwd=tmp_path)
    fixtures = set(re.findall(r"^(leanhost_\w+)\b", out, re.MULTILINE))
    assert "leanhost_server" in fixtures, out
    documented = set(page(site, "reference/fixtures.html").headings)
    assert sorted(fixtures - documented) == []


def test_every_leak_kind_has_a_reference_row_and_a_troubleshooting_entry_with_an_example(
    site: Path,
) -> None:
    from pytest_leanhost.core.kinds import KINDS

    kinds = set(KINDS) | schema_enum("$defs", "finding", "properties", "kind")
    assert sorted(kinds - set(page(site, "reference/leak-kinds.html").first_cells)) == []
    troubleshooting = page(site, "troubleshooting.html")
    assert sorted(kinds - set(troubleshooting.headings)) == []
    assert [kind for kind in sorted(kinds) if troubleshooting.blocks_after[kind] == 0] == []


def test_every_escape_word_has_a_reference_row_and_a_troubleshooting_entry_with_an_example(
    site: Path,
) -> None:
    from pytest_leanhost.core.escapes import ESCAPE_WORDS

    words = set(ESCAPE_WORDS) | schema_enum("$defs", "process", "properties", "escaped", "items")
    assert sorted(words - set(page(site, "reference/leak-kinds.html").first_cells)) == []
    troubleshooting = page(site, "troubleshooting.html")
    assert sorted(words - set(troubleshooting.headings)) == []
    assert [word for word in sorted(words) if troubleshooting.blocks_after[word] == 0] == []


def test_every_leanhost_command_in_its_help_has_an_entry(site: Path) -> None:
    commands = {" ".join(path) for path in leanhost_commands()}
    assert {"leanhost doctor processes", "leanhost doctor sessions"} <= commands
    assert sorted(commands - set(page(site, "reference/cli.html").headings)) == []


def test_every_captured_example_is_shown_on_some_page(site: Path) -> None:
    sources = "\n".join(path.read_text(encoding="utf-8") for path in DOCS.rglob("*.md"))
    unused = [p.name for p in (DOCS / "captured").iterdir() if f"captured/{p.name}" not in sources]
    assert unused == []
    assert (site / "index.html").is_file()


def test_the_readme_is_a_front_page_of_at_most_12000_bytes() -> None:
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= README_LIMIT, len(readme)
    text = readme.decode("utf-8")
    assert "<!-- captured:leaky -->\n```text\n$ pytest -p leanhost examples/leaky" in text
    assert ".venv/bin/pytest -n 2" in text  # the command .ci/run's pytest step runs
