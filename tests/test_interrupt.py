"""Interrupting a real pytest mid-run (servers alive) still stops every process of the run.

SIGINT (Ctrl-C) or SIGTERM goes to the pytest process, or to the xdist controller
alone; afterwards no process the run started is alive (every one wrote its PID
down; checked in /proc by start time) and the report says ``"interrupted": true``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.children import poll
from tests.inner_runs import InnerPytest

SUITE = """
import os, subprocess, sys, time
from pathlib import Path

HELD = []

def test_hangs_with_servers(leanhost_server):
    leanhost_server()
    leanhost_server(transport="http")
    HELD.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
    Path(os.environ["READY_FILE"]).write_text("ready")
    time.sleep(120)

def test_never_reached():
    pass
"""


@pytest.mark.parametrize("xdist", [[], ["-p", "xdist", "-n", "2"]], ids=["single", "xdist"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_stops_every_process_it_started(
    pytester: pytest.Pytester, inner: InnerPytest, signum: signal.Signals, xdist: list[str]
) -> None:
    pytester.makepyfile(test_inner=SUITE)
    ready = pytester.path / "ready"
    report = pytester.path / "report.json"
    env = {**os.environ, "READY_FILE": str(ready)}  # carries the PID log and its site hook
    command = [sys.executable, "-m", "pytest", "-p", "leanhost", "-p", "no:randomly"]
    command += ["-o", "leanhost_grace=0.3", "--leanhost-report", str(report), *xdist]
    command += [f"--basetemp={pytester.path / 'basetemp'}"]
    with subprocess.Popen(
        command, cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as pytest_process:
        try:
            assert poll(ready.exists, timeout=60), "the inner test never started its servers"
            pytest_process.send_signal(signum)
            output, _ = pytest_process.communicate(timeout=120)
        finally:
            if pytest_process.poll() is None:
                pytest_process.kill()
                pytest_process.communicate()
    text = output.decode(errors="replace")
    assert pytest_process.returncode == pytest.ExitCode.INTERRUPTED, text
    data = json.loads(Path(report).read_text())
    assert data["interrupted"] is True
    # pytest, the xdist workers, two servers, the forgotten sleep: all wrote their PIDs down.
    assert len(inner.written_down()) >= 4
    inner.assert_nothing_left()
    registries = pytester.path / "basetemp" / "leanhost" / "registries"
    assert registries.is_dir()  # the servers registered there, so the check below means something
    assert not list(registries.glob("*/*.json"))
