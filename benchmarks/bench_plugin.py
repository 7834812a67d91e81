"""The plugin's cost: a 2000-trivial-test suite with and without it, and the session-end check.

Run by hand: ``python benchmarks/bench_plugin.py`` (``--runs``, ``--tests``,
``--xdist N`` to run the suite under pytest-xdist with N workers, ``--check test``
to also run it with ``--leanhost-check=test``). Every suite run also has a
pytest-timeout variant (``-p timeout --timeout=60``, the plugin off), side by
side in the same rotation: the cost of a plugin nearly every suite already
carries, to compare the figures with.

1. Overhead: the same suite of trivial tests, run as whole pytest processes,
   alternating ``-p leanhost`` and ``-p no:leanhost`` (plugin autoload off for
   both, so nothing else differs); medians of ``--runs`` runs each, in wall
   time and in CPU time of the pytest processes (less disturbed by a shared
   machine). A one-test suite in the same rotation gives the fixed cost (import,
   session start and end); what remains, over the tests, is the cost per test. With
   ``--check test`` a third variant, ``-p leanhost --leanhost-check=test``, runs
   in the same rotation, and so does pytest-timeout always, so the figures beside
   each other are from the same machine load (the machine may be shared).
2. The session-end check alone: 2000 test registries of which 200 hold a
   record of a live process, judged by ``check_session`` (grace 0, so the
   figure is the check, not the wait), median of several runs.
3. With ``--servers N``: a suite of N tests, each starting a reference server
   (stdio and HTTP alternating) through ``leanhost_server``, initializing it,
   calling a tool and stopping it; reports servers per second (whole run) and
   the session-end check time from the report (``--xdist`` applies).
4. With ``--instructions`` (valgrind installed): instead of 1 and 2, each
   variant of the suite and of the one-test suite runs once under callgrind,
   and the overhead, fixed cost and cost per test are given in instructions,
   every pytest process summed. A count does not move with the machine's load,
   so it is the figure to compare two versions of the code by; it leaves out
   the kernel's time (reading ``/proc``), which the timed runs include.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from pytest_leanhost.core.check import check_session
from pytest_leanhost.files import write_atomically
from pytest_leanhost.plugin.state import registry_name
from pytest_leanhost.record import ProcessRecord


def bench_env() -> dict[str, str]:
    """The environment of every timed run: other plugins off, bytecode cached.

    An installed package has its bytecode compiled; PYTHONDONTWRITEBYTECODE (set
    on some machines) would make every run compile this package from source and
    charge that to the plugin.
    """
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def write_suite(directory: Path, tests: int, per_module: int = 100) -> None:
    for module in range(0, tests, per_module):
        count = min(per_module, tests - module)
        body = "".join(f"def test_{n}():\n    pass\n\n" for n in range(count))
        (directory / f"test_m{module // per_module:03d}.py").write_text(body)


class Variant(NamedTuple):
    """One way of running the suite: a short name, its label in the table, its arguments."""

    name: str
    label: str
    args: tuple[str, ...]


OFF = Variant("off", "-p no:leanhost", ("-p", "no:leanhost"))
SESSION = Variant("on", "-p leanhost", ("-p", "leanhost"))
PER_TEST = Variant("test", "--leanhost-check=test", ("-p", "leanhost", "--leanhost-check=test"))
# pytest-timeout, the plugin off: a plugin nearly every suite carries, for comparison.
TIMEOUT = Variant(
    "timeout", "pytest-timeout", ("-p", "no:leanhost", "-p", "timeout", "--timeout=60")
)


def variants(check: str) -> list[Variant]:
    """The variants of one benchmark, in their rotation order: the baseline first."""
    chosen = [OFF, SESSION]
    if check == "test":
        chosen.append(PER_TEST)
    chosen.append(TIMEOUT)
    return chosen


def run_pytest(directory: Path, variant: Variant, xdist: int) -> tuple[float, float]:
    """One whole pytest run: (wall seconds, CPU seconds of the pytest processes)."""
    args = pytest_args(variant, xdist)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, cwd=directory, env=bench_env(), stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def pytest_args(variant: Variant, xdist: int) -> list[str]:
    """The command line of one benchmark run of the suite in the current directory."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *variant.args]
    if xdist:
        args += ["-p", "xdist", "-n", str(xdist)]
    return args


def own_pid_namespace() -> list[str]:
    """The prefix that runs a command in a PID namespace of its own, where one can be made.

    The plugin walks the tree at a boundary only when the kernel's PID counter
    moved, and that counter is the namespace's: in a namespace of its own, other
    work on the machine (another test run, a build) no longer moves it, so the
    count is the plugin's own, as on a quiet machine. Empty where ``unshare``
    is missing or refused (not root): then a busy machine adds a little.
    """
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return []
    probe = [unshare, "--pid", "--fork", "--mount-proc", "true"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        return []
    return [unshare, "--pid", "--fork", "--mount-proc"]


def count_instructions(directory: Path, variant: Variant, xdist: int) -> int:
    """The user-space instructions of one whole run, every pytest process (xdist's) summed.

    Under callgrind, with hash randomization off: the same code gives the same count
    within about 0.1 %, however loaded the machine is. (A boundary walks only when
    another process took a PID, so a busy machine adds a little.) Kernel time,
    such as reading ``/proc``, is not counted: the wall-clock figures hold that.
    """
    env = {**bench_env(), "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix="leanhost-bench-cg-") as out:
        valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes"]
        valgrind += [f"--callgrind-out-file={out}/cg.%p.out"]
        basetemp = Path(out) / "basetemp"
        done = subprocess.run(
            [
                *own_pid_namespace(),
                *valgrind,
                *pytest_args(variant, xdist),
                f"--basetemp={basetemp}",
            ],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=True,
        )
    lines = done.stderr.splitlines()
    return sum(int(line.rsplit(":", 1)[1]) for line in lines if "Collected :" in line)


def bench_instructions(tests: int, xdist: int, check: str = "session") -> None:
    """The overhead in instructions: each variant once, the suite and a one-test suite."""
    chosen = variants(check)
    counts: dict[tuple[str, str], int] = {}
    with tempfile.TemporaryDirectory(prefix="leanhost-bench-suite-") as tmp:
        for size, count in (("big", tests), ("small", 1)):
            suite = Path(tmp) / size
            suite.mkdir()
            write_suite(suite, count)
            for variant in chosen:
                run_pytest(suite, variant, xdist)  # bytecode compiled, caches warm
                counts[(size, variant.name)] = count_instructions(suite, variant, xdist)
    mode = f"-n {xdist}" if xdist else "one process"
    print(f"{tests} trivial tests ({mode}), instructions under callgrind:")
    off = counts[("big", OFF.name)]
    print(f"  {OFF.label:<22}{off / 1e6:10.1f} M")
    for variant in chosen[1:]:
        on = counts[("big", variant.name)]
        fixed = counts[("small", variant.name)] - counts[("small", OFF.name)]
        per_test = ((on - off) - fixed) / max(1, tests - 1)
        print(
            f"  {variant.label:<22}{on / 1e6:10.1f} M  ({(on - off) / off * 100:+.2f} %)"
            f"  fixed {fixed / 1e6:+.1f} M, {per_test / 1e3:+.1f} K/test"
        )


def bench_overhead(tests: int, runs: int, xdist: int, check: str = "session") -> None:
    """The suite with and without the plugin, and a one-test suite for the fixed cost.

    The cost per test is the overhead of the whole suite less that of the
    one-test suite (import, session start and end), over the tests in between.
    """
    chosen = variants(check)
    with tempfile.TemporaryDirectory(prefix="leanhost-bench-suite-") as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        big.mkdir()
        small.mkdir()
        write_suite(big, tests)
        write_suite(small, 1)
        for suite in (big, small):  # warm the file-system cache and bytecode
            for variant in chosen:
                run_pytest(suite, variant, xdist)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(runs):
            for suite, size in ((big, "big"), (small, "small")):
                for variant in chosen:
                    times.setdefault((size, variant.name), []).append(
                        run_pytest(suite, variant, xdist)
                    )

    def median(size: str, name: str, index: int) -> float:
        return statistics.median(sample[index] for sample in times[(size, name)])

    mode = f"-n {xdist}" if xdist else "one process"
    print(f"{tests} trivial tests ({mode}), medians of {runs} alternating runs:")
    for index, clock in ((0, "wall"), (1, "cpu")):
        off = median("big", OFF.name, index)
        print(f"  {f'[{clock}]':<6} {OFF.label:<22}{off * 1000:8.1f} ms")
        for variant in chosen[1:]:
            on = median("big", variant.name, index)
            fixed = median("small", variant.name, index) - median("small", OFF.name, index)
            per_test = ((on - off) - fixed) / max(1, tests - 1) * 1e6
            print(
                f"  {f'[{clock}]':<6} {variant.label:<22}{on * 1000:8.1f} ms"
                f"  ({(on - off) / off * 100:+.2f} %)"
                f"  fixed {fixed * 1000:+.1f} ms, {per_test:+.1f} us/test"
            )


def bench_session_check(registries: int, records: int, runs: int) -> None:
    procs = [subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL) for _ in range(records)]
    try:
        with tempfile.TemporaryDirectory(prefix="leanhost-bench-check-") as tmp:
            root = Path(tmp)
            mapping: dict[str, str | None] = {}
            now = time.time_ns() // 1_000_000
            for n in range(registries):
                nodeid = f"tests/test_m{n // 100:03d}.py::test_{n % 100}"
                path = root / registry_name(nodeid)
                path.mkdir()
                mapping[str(path)] = nodeid
                if n < records:
                    proc = procs[n]
                    record = ProcessRecord(
                        proc.pid, "/usr/bin/sleep", "/", now, os.getpid(), os.getpgrp(), "stdio"
                    )
                    write_atomically(path / f"{proc.pid}.json", record.to_json_bytes())
            samples = []
            for _ in range(runs):
                start = time.perf_counter()
                scan = check_session(mapping, "lh-benchmark", grace=0)
                samples.append(time.perf_counter() - start)
            assert len(scan.findings) == records
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
    print(
        f"session-end check, {registries} registries holding {records} live records: "
        f"median {statistics.median(samples) * 1000:.1f} ms over {runs} runs"
    )


SERVER_SUITE = """
import pytest

@pytest.mark.parametrize("n", range({count}))
def test_server(leanhost_server, n):
    server = leanhost_server(transport="http" if n % 2 else "stdio")
    server.initialize()
    server.call_tool("echo", {{"text": "x"}})
"""


def bench_servers(count: int, xdist: int) -> None:
    with tempfile.TemporaryDirectory(prefix="leanhost-bench-servers-") as tmp:
        suite = Path(tmp)
        (suite / "test_servers.py").write_text(SERVER_SUITE.format(count=count))
        report = suite / "report.json"
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "leanhost"]
        args += ["--leanhost-report", str(report)]
        if xdist:
            args += ["-p", "xdist", "-n", str(xdist)]
        start = time.perf_counter()
        subprocess.run(args, cwd=suite, env=bench_env(), stdout=subprocess.DEVNULL, check=True)
        wall = time.perf_counter() - start
        data = json.loads(report.read_text())
    assert data["findings"] == [], data["findings"]
    mode = f"-n {xdist}" if xdist else "one process"
    print(
        f"{count} server tests ({mode}): {wall:.1f} s wall, {count / wall:.1f} servers/s, "
        f"session-end check {data['check_seconds'] * 1000:.1f} ms over "
        f"{data['registries_checked']} registries"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=2000, help="trivial tests in the suite")
    parser.add_argument("--runs", type=int, default=7, help="runs per variant (median)")
    parser.add_argument("--xdist", type=int, default=0, help="pytest-xdist workers (0: none)")
    parser.add_argument(
        "--check",
        choices=("session", "test"),
        default="session",
        help="test: also run the suite with --leanhost-check=test",
    )
    parser.add_argument("--skip-suite", action="store_true", help="only the session-end check")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions under valgrind's callgrind instead of timing (one run each)",
    )
    parser.add_argument("--servers", type=int, default=0, help="also run N real server tests")
    args = parser.parse_args()
    if args.instructions:
        bench_instructions(args.tests, args.xdist, args.check)
        return 0
    if not args.skip_suite:
        bench_overhead(args.tests, args.runs, args.xdist, args.check)
    bench_session_check(2000, 200, max(args.runs, 5))
    if args.servers:
        bench_servers(args.servers, args.xdist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
