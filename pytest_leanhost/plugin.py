"""The pytest plugin ``leanhost``: isolated registries, server fixtures and the leak check."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``leanhost`` option group (options and ini values live here only)."""
    group = parser.getgroup("leanhost", "leanhost: prove that servers leak no process or record")
    group.addoption(
        "--leanhost-doctor",
        action="store_true",
        default=False,
        help="print the doctor report for every registry the session touched",
    )
