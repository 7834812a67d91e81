"""Servers that break one rule of the lifecycle contract each, caught at their test's teardown."""

from __future__ import annotations

from pytest_leanhost.plugin.fixtures import ServerFactory


def test_server_that_ignores_stdin_eof(leanhost_server: ServerFactory) -> None:
    leanhost_server("--fault", "ignore-stdin-eof").initialize()


def test_server_that_keeps_its_record(leanhost_server: ServerFactory) -> None:
    leanhost_server("--fault", "keep-record").initialize()
