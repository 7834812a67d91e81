"""A real subreaper for the lineage tests: runs test spans, starts detaching processes, cleans up.

Run as ``python -m tests.lineage_subreaper SCENARIO``. It becomes a child
subreaper (so the test runner's own state is untouched), records spans with a
:class:`~pytest_leanhost.core.lineage.Lineage`, prints one JSON line of what it
started and what the recorder attributed, then waits for its stdin to close
and kills and reaps every process below it, by exact PID, before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pytest_leanhost.core.lineage import (
    Lineage,
    become_subreaper,
    direct_children,
    start_tick,
)

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
# Starts a sleeping grandchild, prints its PID, then exits: the grandchild is orphaned.
ORPHANING = (
    "import subprocess, sys; "
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
    "stdout=subprocess.DEVNULL); "
    "print(c.pid, flush=True)"
)
# A "server": on its first stdin line starts a worker and prints its PID; exits on the second.
SERVER = (
    "import subprocess, sys; "
    "sys.stdin.readline(); "
    "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
    "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL); "
    "print(w.pid, flush=True); sys.stdin.readline()"
)


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2 :].split()[1])


def _sleep_forever() -> None:
    time.sleep(60)


def detaching(lineage: Lineage, workdir: Path) -> dict[str, Any]:
    """One test span per way of detaching; a last span that starts nothing."""
    me = os.getpid()
    started: dict[str, int] = {}
    keep: list[Any] = []

    lineage.begin("t::popen_env_empty")
    keep.append(subprocess.Popen(SLEEP, env={}))
    started["popen_env_empty"] = keep[-1].pid
    lineage.end("t::popen_env_empty")

    lineage.begin("t::env_i")
    keep.append(subprocess.Popen(["env", "-i", "sleep", "60"]))
    started["env_i"] = keep[-1].pid
    lineage.end("t::env_i")

    lineage.begin("t::setsid_double_fork")
    pidfile = workdir / "setsid.pid"
    subprocess.run(["sh", "-c", f'(setsid sleep 60 & echo $! > "{pidfile}")'], check=True)
    _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    started["setsid_double_fork"] = int(pidfile.read_text())
    _wait_for(lambda: _ppid(started["setsid_double_fork"]) == me)
    lineage.end("t::setsid_double_fork")

    lineage.begin("t::fork_no_exec")
    child = os.fork()
    if child == 0:  # the forked copy: sleep, then leave without running anyone's cleanup
        time.sleep(60)
        os._exit(0)
    started["fork_no_exec"] = child
    lineage.end("t::fork_no_exec")

    lineage.begin("t::multiprocessing_spawn")
    proc = multiprocessing.get_context("spawn").Process(target=_sleep_forever)
    proc.start()
    keep.append(proc)
    assert proc.pid is not None
    started["multiprocessing_spawn"] = proc.pid
    lineage.end("t::multiprocessing_spawn")

    lineage.begin("t::orphaned_grandchild")
    parent = subprocess.run(
        [sys.executable, "-c", ORPHANING], stdout=subprocess.PIPE, text=True, check=True
    )
    started["orphaned_grandchild"] = int(parent.stdout)
    _wait_for(lambda: _ppid(started["orphaned_grandchild"]) == me)
    lineage.end("t::orphaned_grandchild")

    lineage.begin("t::nothing")
    lineage.end("t::nothing")

    return {
        "started": started,
        "attributed": {name: list(lineage.attribute(pid)) for name, pid in started.items()},
        "spans": [s.nodeid for s in lineage.spans],
    }


def adopted(lineage: Lineage, workdir: Path) -> dict[str, Any]:
    """A server started in one test whose worker is adopted in the next; then reaping."""
    lineage.begin("t::starts_server")
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    assert server.stdin is not None
    server_pid = server.pid
    lineage.end("t::starts_server")
    attributed_server = list(lineage.attribute(server_pid))

    lineage.begin("t::server_starts_worker")  # the worker is the server's, not this test's
    server.stdin.write("spawn\n")
    server.stdin.flush()
    worker = int(server.stdout.readline())
    lineage.end("t::server_starts_worker")

    lineage.begin("t::server_exits")
    server.stdin.write("bye\n")
    server.stdin.flush()
    server.wait()
    _wait_for(lambda: _ppid(worker) == os.getpid())
    lineage.end("t::server_exits")

    lineage.begin("t::popen_then_terminated")
    popen = subprocess.Popen(SLEEP)
    lineage.end("t::popen_then_terminated")
    attributed_worker = list(lineage.attribute(worker))

    # The session-end check terminates both; only the adopted worker may be reaped.
    worker_tick = start_tick(worker)
    popen_tick = start_tick(popen.pid)
    assert worker_tick is not None
    assert popen_tick is not None
    os.kill(worker, signal.SIGKILL)
    os.kill(popen.pid, signal.SIGKILL)
    _wait_for(lambda: _is_zombie(worker) and _is_zombie(popen.pid))
    reaped = lineage.reap_terminated([(worker, worker_tick), (popen.pid, popen_tick)])
    popen_status = popen.wait(timeout=10)  # its waiter still gets the status
    return {
        "server": server_pid,
        "worker": worker,
        "attributed_worker": attributed_worker,
        "attributed_server": attributed_server,
        "reaped": reaped,
        "popen_returncode": popen_status,
        "worker_gone": not os.path.exists(f"/proc/{worker}"),
    }


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] == b"Z"


def exit_statuses(lineage: Lineage, workdir: Path) -> dict[str, Any]:
    """Waiters keep their children's exit statuses with the subreaper on."""
    code = [sys.executable, "-c", "import sys; sys.exit(3)"]
    popen = subprocess.Popen(code)
    popen.wait(timeout=30)

    async def run() -> int | None:
        proc = await asyncio.create_subprocess_exec(*code)
        return await proc.wait()

    return {"popen": popen.returncode, "asyncio": asyncio.run(run())}


SCENARIOS = {"detaching": detaching, "adopted": adopted, "exit_statuses": exit_statuses}


def cleanup() -> None:
    """Kill every process below this one by exact PID, then reap this process's children."""
    while True:
        children = direct_children(os.getpid())
        if not children:
            return
        for pid in children:
            # Every child of a subreaper is the run's own: forked here or adopted from below.
            if not _is_zombie(pid):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def main() -> int:
    scenario = SCENARIOS[sys.argv[1]]
    subreaper = become_subreaper()
    lineage = Lineage()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            result = scenario(lineage, Path(workdir))
        result["subreaper"] = subreaper
        result["pid"] = os.getpid()
        print(json.dumps(result), flush=True)
        sys.stdin.read()  # the test looks at /proc while everything is still alive
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
