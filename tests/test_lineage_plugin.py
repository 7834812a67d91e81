"""Lineage in the plugin: processes that kept no marker are found, named after their test, stopped.

Each inner test starts a process the way real launchers lose the environment
(``Popen(env=...)``, ``env -i``, ``setsid`` with a double fork, ``os.fork()``
without exec, a multiprocessing spawn child, a grandchild whose parent exited,
the MCP Python SDK's stdio client). A scrubbed child cannot rely on the PID-log
``sitecustomize`` (its ``PYTHONPATH`` is gone), so it writes its own PID and
start tick to the log named in its argv; the outer test checks those in /proc.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_leanhost.stopping import poll_until
from tests.inner_runs import InnerPytest, InnerRun
from tests.pidlog import survivors

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc"), reason="lineage needs Linux child subreapers"
)

# A child that writes itself down (PID and start tick, the PID log's format) and waits.
HELPERS = r'''
import os, subprocess, sys, time
import pytest

LOG = os.environ["LEANHOST_TESTS_PID_LOG"]
WAIT = r"""
import os, sys, time
data = open("/proc/self/stat", "rb").read()
start = data[data.rfind(b")") + 2:].split()[19].decode()
for path in sys.argv[1:]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{os.getpid()} {start}\n".encode())
    os.close(fd)
time.sleep(300)
"""
DOUBLE_FORK = r"""
import os, sys
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
os.execv(sys.executable, [sys.executable, "-c", *sys.argv[1:]])
"""
PARENT_EXITS = r"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", *sys.argv[1:]], env={})
"""
HELD = []

# Other workers write to LOG too: a test waits for its own child's line, never a count.
def wait_until(condition):
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "child never wrote itself down"
        time.sleep(0.01)

def logged(pid):
    lines = open(LOG).read().splitlines() if os.path.exists(LOG) else []
    return any(line.split()[0] == str(pid) for line in lines)

def wait_pid(pid):
    wait_until(lambda: logged(pid))

def new_note():
    """A private file a child whose PID the test cannot know writes itself into."""
    import tempfile
    handle, path = tempfile.mkstemp(prefix="note-", dir=os.getcwd())
    os.close(handle)
    return path

def wait_note(path):
    wait_until(lambda: os.path.getsize(path) > 0)

def leak(argv, **kwargs):
    child = subprocess.Popen(argv, **kwargs)
    HELD.append(child)
    wait_pid(child.pid)
'''

LEAKS = r"""
def test_popen_env():
    leak([sys.executable, "-c", WAIT, LOG], env={"PATH": os.environ["PATH"]})

def test_env_i():
    leak(["env", "-i", sys.executable, "-c", WAIT, LOG])

def test_setsid_double_fork():
    note = new_note()
    subprocess.run(
        ["setsid", sys.executable, "-c", DOUBLE_FORK, WAIT, LOG, note], env={}, check=True
    )
    wait_note(note)

def test_fork_without_exec():
    pid = os.fork()
    if pid == 0:
        try:
            data = open("/proc/self/stat", "rb").read()
            start = data[data.rfind(b")") + 2:].split()[19].decode()
            fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, f"{os.getpid()} {start}\n".encode())
            os.close(fd)
            time.sleep(300)
        finally:
            os._exit(0)
    wait_pid(pid)

def test_multiprocessing_spawn():
    import multiprocessing
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(300,))
    process.start()
    HELD.append(process)
    wait_pid(process.pid)  # the spawn child writes itself down through the PID-log site

def test_grandchild_of_exited_parent():
    note = new_note()
    subprocess.run([sys.executable, "-c", PARENT_EXITS, WAIT, LOG, note], check=True, env={})
    wait_note(note)
"""

# multiprocessing's resource tracker starts with the first spawn child and lives as
# long as pytest: started by the conftest, before the session, it is never blamed.
TRACKER = """
import multiprocessing.resource_tracker
multiprocessing.resource_tracker.ensure_running()
"""

LEAK_NAMES = [
    "test_popen_env",
    "test_env_i",
    "test_setsid_double_fork",
    "test_fork_without_exec",
    "test_multiprocessing_spawn",
    "test_grandchild_of_exited_parent",
]

CLEAN = r"""
@pytest.mark.parametrize("n", range(10))
def test_clean_twins(n):
    child = subprocess.Popen([sys.executable, "-c", WAIT, LOG], env={})
    wait_pid(child.pid)
    child.kill()
    child.wait()
    subprocess.run(["env", "-i", sys.executable, "-c", "pass"], check=True)
    subprocess.run(["setsid", sys.executable, "-c", "pass"], check=True, env={})
"""


def leaked(run: InnerRun) -> list[tuple[str, str, str]]:
    return run.findings


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["alone", "xdist"])
def test_every_unmarked_leak_is_found_once_with_its_test_and_stopped(
    inner: InnerPytest, xdist: list[str]
) -> None:
    if xdist:
        pytest.importorskip("xdist")
    inner.pytester.makeconftest(TRACKER)
    inner.pytester.makepyfile(test_matrix=HELPERS + LEAKS)
    run = inner.run(*(["-p", "xdist", *xdist] if xdist else []))
    assert run.result.ret == 1, run.result.stdout.str()
    expected = sorted(
        ("leaked_process", f"test_matrix.py::{name}", "terminated") for name in LEAK_NAMES
    )
    assert leaked(run) == expected, run.result.stdout.str()
    assert all(not f["nodeids"] or len(f["nodeids"]) == 1 for f in run.report["findings"])
    # The resource trackers of pytest and its workers exit when their pytest has exited.
    left = inner.leftovers()
    poll_until(lambda: not inner.leftovers(), timeout=10)
    assert inner.leftovers() == [], [_cmdline(w.pid) for w in left]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} gone"


def test_clean_twins_find_nothing_ten_times(inner: InnerPytest) -> None:
    inner.pytester.makepyfile(test_clean=HELPERS + CLEAN)
    run = inner.run()
    assert run.result.ret == 0, run.result.stdout.str()
    assert run.report["findings"] == []
    run.result.assert_outcomes(passed=10)
    inner.assert_nothing_left()


def test_subreaper_false_keeps_marker_only_behaviour(inner: InnerPytest) -> None:
    inner.pytester.makeconftest(TRACKER)
    inner.pytester.makepyfile(test_matrix=HELPERS + LEAKS)
    run = inner.run("-o", "leanhost_subreaper=false", "-k", "env_i or spawn")
    # Only the marked spawn child is found; the scrubbed one is invisible without lineage.
    assert leaked(run) == [
        ("leaked_process", "test_matrix.py::test_multiprocessing_spawn", "terminated")
    ]
    inner.kill_leftovers()


def test_a_process_alive_before_the_session_is_never_blamed_nor_signalled(
    inner: InnerPytest, tmp_path: Path
) -> None:
    # A conftest starts a scrubbed child at import, before the session starts.
    inner.pytester.makeconftest(
        HELPERS
        + "\nEARLY = subprocess.Popen([sys.executable, '-c', WAIT, LOG], env={})"
        + "\nwait_pid(EARLY.pid)\n"
    )
    inner.pytester.makepyfile(test_one="def test_nothing():\n    pass\n")
    run = inner.run()
    assert run.report["findings"] == [], run.result.stdout.str()
    left = survivors(inner.pid_log)
    assert len(left) == 1  # the early child: never signalled
    inner.kill_leftovers()


def test_subprocess_children_keep_their_exit_status_under_the_subreaper(
    inner: InnerPytest,
) -> None:
    inner.pytester.makepyfile(
        test_status=r"""
import asyncio, subprocess, sys

def test_popen_status():
    assert subprocess.run([sys.executable, "-c", "raise SystemExit(7)"]).returncode == 7

def test_asyncio_status():
    async def main():
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(5)")
        return await proc.wait()
    assert asyncio.run(main()) == 5
"""
    )
    run = inner.run()
    run.result.assert_outcomes(passed=2)
    assert run.report["findings"] == []


def test_a_sigkilled_workers_orphan_is_found_by_the_controller_with_its_test(
    inner: InnerPytest,
) -> None:
    pytest.importorskip("xdist")
    inner.pytester.makepyfile(
        test_dies=HELPERS
        + r"""
import signal

def test_worker_dies():
    child = subprocess.Popen(["sleep", "300"], env={"PATH": os.environ["PATH"]})
    data = open(f"/proc/{child.pid}/stat", "rb").read()
    start = data[data.rfind(b")") + 2:].split()[19].decode()
    with open(LOG, "a") as log:
        log.write(f"{child.pid} {start}\n")
    os.kill(os.getpid(), signal.SIGKILL)

def test_other():
    pass
"""
    )
    run = inner.run("-p", "xdist", "-n", "2")
    sleeps = [f for f in run.report["findings"] if f["kind"] == "leaked_process"]
    assert [(f["nodeid"], f["action"]) for f in sleeps] == [
        ("test_dies.py::test_worker_dies", "terminated")
    ], run.result.stdout.str()
    assert survivors(inner.pid_log) == []


SDK = r'''
import glob, json, threading
import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

HOME_REGISTRY = os.path.join(os.environ["HOME"], ".cache", "lean-host-mcp", "processes")

def params(*faults, env=None):
    args = ["-m", "pytest_leanhost.refserver"]
    for fault in faults:
        args += ["--fault", fault]
    return StdioServerParameters(command=sys.executable, args=args, env=env)

def write_down(pid):
    data = open(f"/proc/{pid}/stat", "rb").read()
    start = data[data.rfind(b")") + 2:].split()[19].decode()
    with open(LOG, "a") as log:
        log.write(f"{pid} {start}\n")

def write_down_records(registry, known=()):
    for path in glob.glob(os.path.join(registry, "*.json")):
        pid = json.load(open(path))["pid"]
        if pid not in known:
            write_down(pid)

def hold_open(server):
    """Keep an SDK client session open for the rest of the run (its server leaks)."""
    ready = threading.Event()
    async def main():
        async with stdio_client(server) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                ready.set()
                await anyio.sleep_forever()
    threading.Thread(target=anyio.run, args=(main,), daemon=True).start()
    assert ready.wait(60)

def test_sdk_orphan_worker():
    async def main():
        async with stdio_client(params("orphan-worker")) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("spawn_worker", {})
                write_down(int(result.content[0].text))
    anyio.run(main)

def test_sdk_sigkills_its_server():
    async def main():
        async with stdio_client(params("ignore-stdin-eof", "ignore-sigterm")) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
    anyio.run(main)

def test_sdk_held_without_env():
    before = {json.load(open(p))["pid"] for p in glob.glob(HOME_REGISTRY + "/*.json")}
    hold_open(params())
    write_down_records(HOME_REGISTRY, before)

def test_sdk_held_with_leanhost_env(leanhost_env):
    assert "LEAN_HOST_MCP_PROCESS_REGISTRY_DIR" in leanhost_env
    hold_open(params(env=leanhost_env))
    write_down_records(leanhost_env["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"])
'''

SDK_EXPECTED = [
    ("leaked_process", "test_sdk.py::test_sdk_orphan_worker", "terminated"),
    ("leaked_server", "test_sdk.py::test_sdk_held_with_leanhost_env", "terminated"),
    ("leaked_server", "test_sdk.py::test_sdk_held_without_env", "terminated"),
    ("stale_record", "test_sdk.py::test_sdk_sigkills_its_server", "record_removed"),
]


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["alone", "xdist"])
def test_python_sdk_leaks_are_found_in_the_home_registry_and_the_tests_own(
    inner: InnerPytest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xdist: list[str]
) -> None:
    pytest.importorskip("mcp")
    if xdist:
        pytest.importorskip("xdist")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    home_registry = inner.pytester.path / ".cache" / "lean-host-mcp" / "processes"
    home_registry.mkdir(parents=True, mode=0o700)
    # What the HOME registry held before the run: a stale record and a live foreign server's.
    stale = home_registry / "999999999.json"
    stale.write_text(json.dumps(_record(999999999)))
    # Started with a scrubbed environment, so it stays out of the PID log: it is not the run's.
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], env={})
    try:
        live = home_registry / f"{foreign.pid}.json"
        live.write_text(json.dumps(_record(foreign.pid)))
        inner.pytester.makepyfile(test_sdk=HELPERS + SDK)
        run = inner.run(*(["-p", "xdist", *xdist] if xdist else []))
        assert run.findings == SDK_EXPECTED, run.result.stdout.str()
        missed = [f for f in run.report["findings"] if f["registry"] == str(home_registry)]
        assert len(missed) == 2
        assert all("leanhost_env" in f["detail"] for f in missed)
        assert stale.exists()
        assert live.exists()
        assert foreign.poll() is None
        assert sorted(p.name for p in home_registry.iterdir()) == sorted([stale.name, live.name])
        poll_until(lambda: not inner.leftovers(), timeout=10)
        assert inner.leftovers() == []
    finally:
        foreign.kill()
        foreign.wait()


def _record(pid: int) -> dict[str, object]:
    import time

    return {
        "pid": pid,
        "executable": sys.executable,
        "cwd": "/",
        "started_unix_millis": int(time.time() * 1000) - 60_000,
        "parent_pid_at_start": 1,
        "process_group_id": pid,
        "transport": "stdio",
    }


TS_SDK = ROOT / "tests/node/node_modules/@modelcontextprotocol/sdk/dist/esm/client"

# The TypeScript SDK's stdio client: starts the reference server (scrubbing its
# environment as getDefaultEnvironment() does), asks for a worker, closes.
TS_CLIENT = """
import { Client } from "%(sdk)s/index.js";
import { StdioClientTransport } from "%(sdk)s/stdio.js";
const [python] = process.argv.slice(2);
const transport = new StdioClientTransport({
  command: python, args: ["-m", "pytest_leanhost.refserver", "--fault", "orphan-worker"],
});
const client = new Client({ name: "leanhost-test", version: "1.0.0" });
await client.connect(transport);
const result = await client.callTool({ name: "spawn_worker", arguments: {} });
console.log(result.content[0].text);
await client.close();
"""

TS_SUITE = r"""
def test_ts_sdk_orphan_worker():
    out = subprocess.run(
        [NODE, CLIENT, sys.executable], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    pid = int(out.split()[-1])
    data = open(f"/proc/{pid}/stat", "rb").read()
    start = data[data.rfind(b")") + 2:].split()[19].decode()
    with open(LOG, "a") as log:
        log.write(f"{pid} {start}\n")
"""


def test_typescript_sdk_clients_orphaned_worker_is_found_with_its_test(
    inner: InnerPytest,
) -> None:
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed"
    elif not (TS_SDK / "stdio.js").is_file():
        missing = "@modelcontextprotocol/sdk is not installed (run: npm ci --prefix tests/node)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}", pytrace=False)
        pytest.skip(f"the TypeScript SDK test needs node and npm ci: {missing}")
    client = inner.pytester.path / "client.mjs"
    client.write_text(TS_CLIENT % {"sdk": TS_SDK.as_posix()})
    inner.pytester.makepyfile(
        test_ts=HELPERS + f"NODE = {node!r}\nCLIENT = {str(client)!r}\n" + TS_SUITE
    )
    run = inner.run()
    assert run.findings == [
        ("leaked_process", "test_ts.py::test_ts_sdk_orphan_worker", "terminated")
    ], run.result.stdout.str()
    poll_until(lambda: not inner.leftovers(), timeout=10)
    assert inner.leftovers() == []


def test_a_module_fixtures_unmarked_process_belongs_to_the_test_whose_setup_ran_it(
    inner: InnerPytest,
) -> None:
    inner.pytester.makepyfile(
        test_fixture=HELPERS
        + r"""
@pytest.fixture(scope="module")
def module_child():
    leak([sys.executable, "-c", WAIT, LOG], env={})

def test_before():
    pass

def test_first(module_child):
    pass

def test_second(module_child):
    pass
"""
    )
    run = inner.run()
    assert run.findings == [("leaked_process", "test_fixture.py::test_first", "terminated")]
    poll_until(lambda: not inner.leftovers(), timeout=10)
    assert inner.leftovers() == []
