"""Watched registries: only what the session's own processes wrote during the session is seen."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_leanhost.core.registry_snapshots import (
    SessionFacts,
    WatchedRegistries,
    default_registries,
    home_only_registry,
    is_session_record,
    run_default_registry,
)
from pytest_leanhost.record import ProcessRecord
from tests.children import Children

# Registers in the default registry of the environment it was given, prints its PID,
# and keeps its record until stdin closes.
REGISTERING = (
    "import sys\n"
    "from pytest_leanhost.record import register_server_process\n"
    "reg = register_server_process('stdio')\n"
    "print(reg.record.pid, flush=True)\n"
    "sys.stdin.read()\n"
    "reg.close()\n"
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LEAN_HOST_MCP_PROCESS_REGISTRY_DIR", str(tmp_path / "per-test"))
    return tmp_path / "home"


@pytest.fixture
def scrubbed_server(home: Path, children: Children) -> subprocess.Popen[str]:
    """A registering child given only HOME and PATH, as the MCP SDKs' stdio clients do.

    At teardown its stdin is closed, so it removes its record and exits by itself.
    """
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-c", REGISTERING],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    children.track(child, ends_at_eof=True)
    assert child.stdout is not None
    assert int(child.stdout.readline()) == child.pid
    return child


def _record(pid: int, parent: int | None, millis: int) -> ProcessRecord:
    return ProcessRecord(
        pid=pid,
        executable="/usr/bin/x",
        cwd="/",
        started_unix_millis=millis,
        parent_pid_at_start=parent,
        process_group_id=None,
        transport="stdio",
        bind=None,
        http_path=None,
    )


def test_default_registries_are_the_runs_and_the_home_only_one(home: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    found = default_registries([extra, tmp_path / "xdg" / "lean-host-mcp" / "processes"])
    assert found == [
        tmp_path / "xdg" / "lean-host-mcp" / "processes",
        home / ".cache" / "lean-host-mcp" / "processes",
        extra,
    ]
    assert run_default_registry() == found[0]
    assert home_only_registry() == found[1]


def test_a_scrubbed_server_record_is_new_and_the_sessions(
    home: Path, scrubbed_server: subprocess.Popen[str], tmp_path: Path
) -> None:
    # The record landed where a HOME-only child computes the default registry.
    registry = home / ".cache" / "lean-host-mcp" / "processes"
    assert (registry / f"{scrubbed_server.pid}.json").is_file()
    watched = WatchedRegistries(default_registries())
    empty = WatchedRegistries([]).snapshot()  # as if the session started before it
    found = watched.changed_since(empty)
    assert [os.path.basename(e.path) for e in found] == [f"{scrubbed_server.pid}.json"]
    now = time.time_ns() // 1_000_000
    facts = SessionFacts(frozenset(), frozenset({os.getpid()}), now - 60_000, now)
    assert [e.path for e in watched.session_records(empty, facts)] == [found[0].path]


def test_what_a_registry_held_before_the_session_is_never_returned(
    home: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "watched"
    registry.mkdir()
    now = time.time_ns() // 1_000_000
    # A record that would count as the session's (our PID as its parent), present before.
    before_record = _record(3_999_999, os.getpid(), now)
    (registry / "1.json").write_bytes(before_record.to_json_bytes())
    (registry / "broken.json").write_bytes(b"{")
    (tmp_path / "target.json").write_bytes(before_record.to_json_bytes())
    (registry / "link.json").symlink_to(tmp_path / "target.json")
    watched = WatchedRegistries([registry])
    snapshot = watched.snapshot()
    assert watched.changed_since(snapshot) == []
    # The link's target changes: the link itself is not followed, so nothing changed.
    (tmp_path / "target.json").write_bytes(b"changed")
    assert watched.changed_since(snapshot) == []
    # A new record, and a pre-existing name whose contents changed, are returned.
    (registry / "2.json").write_bytes(_record(2, os.getpid(), now).to_json_bytes())
    (registry / "1.json").write_bytes(_record(1, os.getpid(), now + 1).to_json_bytes())
    changed = sorted(os.path.basename(e.path) for e in watched.changed_since(snapshot))
    assert changed == ["1.json", "2.json"]


def test_a_record_is_the_sessions_only_by_its_pid_or_its_pytest_parent() -> None:
    start, end = 1_000_000, 2_000_000
    facts = SessionFacts(frozenset({(4242, 1_500.0)}), frozenset({7}), start, end)
    assert is_session_record(_record(4242, None, 1_500_100), facts)  # one of its processes
    assert is_session_record(_record(5, 7, 1_500_000), facts)  # started by a pytest process
    assert not is_session_record(_record(5, 8, 1_500_000), facts)  # someone else's
    assert not is_session_record(_record(4242, None, 1_400_000), facts)  # PID before it started
    assert not is_session_record(_record(5, 7, 5_000_000), facts)  # outside the session
