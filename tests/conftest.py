"""The project's own tests: a sandboxed home and cache, and the fixtures they share.

No test ever touches the user's real registry or session ledger. ``HOME``,
``XDG_CACHE_HOME``, ``LEAN_HOST_MCP_PROCESS_REGISTRY_DIR`` and ``LEANHOST_SESSIONS_DIR``
point into a temporary directory for the whole run, set when pytest loads this file
(an initial conftest, through ``testpaths`` or a path under ``tests/``), before any
test, xdist worker or subprocess starts. So the default registry
(``<user cache dir>/lean-host-mcp/processes``, ``~/.cache`` on Linux and
``~/Library/Caches`` on macOS) is a throwaway, also for a server whose launcher
keeps only ``HOME`` of its environment (the MCP SDKs do).

This sandbox is for these tests only: the examples (``pytest -p leanhost
examples/...``) run as a user's suite does, and their doctor section shows the
user's own default registry, which they only read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.children import Children, Started
from tests.inner_runs import InnerPytest
from tests.refserver_helpers import Processes

_SANDBOX = tempfile.mkdtemp(prefix="leanhost-tests-")
for _name, _sub in [
    ("HOME", "home"),
    ("XDG_CACHE_HOME", "cache"),
    ("LEAN_HOST_MCP_PROCESS_REGISTRY_DIR", "registry"),
    # The session ledger (pytest_leanhost.core.earlier_sessions) of this run and its inner runs.
    ("LEANHOST_SESSIONS_DIR", "sessions"),
]:
    os.environ[_name] = os.path.join(_SANDBOX, _sub)
os.makedirs(os.environ["HOME"], mode=0o700)


def pytest_unconfigure() -> None:
    shutil.rmtree(_SANDBOX, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs never append to this run's GitHub step summary; a test names its own file.

    The outer run's own summary is still written: the variable is back by then.
    """
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture
def children() -> Iterator[Children]:
    """Start real processes; every one is killed by exact PID at teardown, pass or fail."""
    tracker = Children()
    try:
        yield tracker
    finally:
        tracker.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Reference servers and other processes; every one killed by exact PID at teardown."""
    tracker = Processes(tmp_path)
    try:
        yield tracker
    finally:
        tracker.close()


@pytest.fixture
def inner(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[InnerPytest]:
    """Inner runs for this test; whatever they left alive is killed at teardown, pass or fail."""
    runner = InnerPytest(pytester, monkeypatch, tmp_path_factory.mktemp("pids") / "pids.log")
    try:
        yield runner
    finally:
        runner.kill_leftovers()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    """Servers started through spawn_server; every one stopped by exact PID at teardown."""
    tracker = Started(tmp_path / "registry")
    try:
        yield tracker
    finally:
        tracker.close()
