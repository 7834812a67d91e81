"""Fixtures shared by the project's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.children import Children, Started
from tests.inner_runs import InnerPytest


@pytest.fixture
def children() -> Iterator[Children]:
    """Start real processes; every one is killed by exact PID at teardown, pass or fail."""
    tracker = Children()
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
