"""Fixtures shared by the project's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.children import Children


@pytest.fixture
def children() -> Iterator[Children]:
    """Start real processes; every one is killed by exact PID at teardown, pass or fail."""
    tracker = Children()
    try:
        yield tracker
    finally:
        tracker.close()
