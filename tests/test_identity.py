"""One process identity: every reader that pins a PID judges "same process" the same way.

Cleanup (the pinned process and its signals), the description of a leak, the
session ledger and the leftovers of a killed run each take a PID with a create
time. A create time read a tick (10 ms) off is the same process, one read a second
off is another (a reused PID starts seconds later): every reader must agree, or
cleanup and the description could disagree about the same PID. The processes are
real children; their create times come from psutil, never from the plugin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from pytest_leanhost.core.earlier_sessions import (
    Leftover,
    find_earlier_sessions,
    terminate_leftovers,
)
from pytest_leanhost.core.live_process import describe_process
from pytest_leanhost.core.processes import PinnedProcess
from pytest_leanhost.core.session_ledger import ledger_bytes
from tests.children import Children
from tests.proc import linux_only, proc_state

pytestmark = linux_only

#: One clock tick at SC_CLK_TCK = 100: how far two readings of one process may drift.
ONE_TICK = 0.01
#: A reused PID's newcomer starts at least this much later (seconds, in practice).
REUSED = 1.0

SESSION = "lh-identity-" + os.urandom(4).hex()


def sleeper(children: Children, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A ``sleep`` child (with ``env`` when given); the shared tracker kills it at teardown."""
    return children.track(subprocess.Popen(["sleep", "300"], env=env))


def pinned_process(children: Children, tmp_path: Path, offset: float) -> bool:
    """Whether a pin with the create time ``offset`` seconds off still names the child."""
    child = sleeper(children)
    created = psutil.Process(child.pid).create_time()
    return PinnedProcess(child.pid, created + offset).process() is not None


def described(children: Children, tmp_path: Path, offset: float) -> bool:
    """Whether the description takes the child for the process created at the shifted time."""
    child = sleeper(children)
    created = psutil.Process(child.pid).create_time()
    return describe_process(child.pid, created + offset) is not None


def ledger_says_alive(children: Children, tmp_path: Path, offset: float) -> bool:
    """Whether the ledger scan takes the entry's pytest (a live child) for still running.

    A running session is no earlier session: its marked process is not a leftover.
    """
    stand_in = sleeper(children)
    sleeper(children, {"LEANHOST_SESSION": SESSION})
    created = psutil.Process(stand_in.pid).create_time()
    data = ledger_bytes(SESSION, stand_in.pid, created + offset, time.time(), "/", ["pytest"])
    (tmp_path / f"{SESSION}.json").write_bytes(data)
    return find_earlier_sessions(None, directory=tmp_path) == []


def terminated(children: Children, tmp_path: Path, offset: float) -> bool:
    """Whether ``doctor sessions --terminate`` takes the marked child for the leftover it names."""
    child = sleeper(children, {"LEANHOST_SESSION": SESSION})
    created = psutil.Process(child.pid).create_time()
    [result] = terminate_leftovers([Leftover(SESSION, child.pid, created + offset, (), 0.0)], 5)
    if result.action != "terminated":
        assert result.action == "gone"  # refused as a stranger: no signal sent
        assert proc_state(child.pid) in ("R", "S")
        return False
    assert child.wait(10) == -signal.SIGTERM  # our own eyes: SIGTERM ended it
    return True


READERS: dict[str, Callable[[Children, Path, float], bool]] = {
    "pinned_process": pinned_process,
    "describe_process": described,
    "ledger_scan": ledger_says_alive,
    "terminate_leftovers": terminated,
}


@pytest.mark.parametrize("offset", [ONE_TICK, -ONE_TICK], ids=["tick-later", "tick-earlier"])
@pytest.mark.parametrize("reader", list(READERS))
def test_each_pinning_reader_takes_a_create_time_a_tick_off_for_the_same_process(
    children: Children, tmp_path: Path, reader: str, offset: float
) -> None:
    assert READERS[reader](children, tmp_path, offset)


@pytest.mark.parametrize("reader", list(READERS))
def test_each_pinning_reader_takes_a_create_time_a_second_off_for_another_process(
    children: Children, tmp_path: Path, reader: str
) -> None:
    assert not READERS[reader](children, tmp_path, REUSED)
