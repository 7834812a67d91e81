"""Exited orphans under the plugin: the zombies they leave under pytest, and what they cost.

Run by hand: ``python benchmarks/bench_zombies.py`` (``--tests N [N ...]``, default
1000; ``--rounds R``, default 5). Linux only: it reads ``/proc``.

Each test of a generated suite runs ``sh -c "(sleep 0.01 &); true"``: a launcher
that backgrounds a short job and exits. The job is orphaned; under ``-p leanhost``
pytest is a child subreaper, so pytest adopts it, and when it exits it is a
zombie of pytest until someone reaps it. Without the plugin it goes to init.

For each suite size, whole pytest processes run alternately with ``-p leanhost``
and ``-p no:leanhost`` (the order swapped every round, so neither always runs on
a warmer machine), plugin autoload off for both, HOME and XDG_CACHE_HOME in a
temporary directory, after one warm-up run of each. The table gives the medians
of the wall times, their ratio, and the zombies under pytest at session end, the
most of any round. The zombies are counted by the suite itself, never by the
plugin: its conftest, in a ``trylast`` ``pytest_unconfigure`` (after the
plugin's session-end check and clean-up), reads the direct children of its own
PID in ``/proc/self/task/*/children`` and writes down how many are in state Z.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The file the inner suite writes its zombie count to.
OUT_ENV = "LEANHOST_BENCH_ZOMBIES_OUT"

SUITE = """
import subprocess

import pytest


@pytest.mark.parametrize("n", range({count}))
def test_orphan_exits(n):
    subprocess.run(["sh", "-c", "(sleep 0.01 &); true"], check=True)
"""

CONFTEST = (
    '''
import os

import pytest


def zombie_children():
    """Direct children of this process in state Z, read in /proc (every thread's list)."""
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as handle:
                pids.update(handle.read().split())
        except OSError:
            continue  # the thread has exited
    zombies = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue  # reaped meanwhile
        if data[data.rfind(b")") + 2 :].split()[0] == b"Z":
            zombies += 1
    return zombies


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    with open(os.environ["'''
    + OUT_ENV
    + """"], "w") as handle:
        handle.write(f"{zombie_children()}\\n")
"""
)


def suite_env(home: Path, out: Path) -> dict[str, str]:
    """Autoload off, a throwaway home and cache, bytecode cached, the count's file named."""
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # Registries and session ledgers go to their defaults, under the throwaway cache.
    env.pop("LEAN_HOST_MCP_PROCESS_REGISTRY_DIR", None)
    env.pop("LEANHOST_SESSIONS_DIR", None)
    env.update(HOME=str(home / "home"), XDG_CACHE_HOME=str(home / "cache"), **{OUT_ENV: str(out)})
    return env


def run_suite(suite: Path, plugin: bool, home: Path) -> tuple[float, int]:
    """One whole pytest run of ``suite``: (wall seconds, zombies under pytest at its end)."""
    out = home / "zombies.txt"
    out.unlink(missing_ok=True)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    args += ["-p", "leanhost"] if plugin else ["-p", "no:leanhost"]
    start = time.perf_counter()
    done = subprocess.run(
        args, cwd=suite, env=suite_env(home, out), capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0 or not out.exists():
        variant = "-p leanhost" if plugin else "-p no:leanhost"
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        sys.exit(
            f"bench_zombies: the suite failed with {variant} (exit {done.returncode}):\n{tail}"
        )
    return wall, int(out.read_text())


def bench(tests: int, rounds: int) -> tuple[int, int, float, float]:
    """(zombies with, zombies without, median wall with, median wall without) for one size."""
    with tempfile.TemporaryDirectory(prefix="leanhost-bench-zombies-") as tmp:
        suite, home = Path(tmp) / "suite", Path(tmp) / "env"
        suite.mkdir()
        (home / "home").mkdir(parents=True)
        (suite / "conftest.py").write_text(CONFTEST)
        (suite / "test_orphans.py").write_text(SUITE.format(count=tests))
        for plugin in (True, False):  # bytecode compiled, caches warm
            run_suite(suite, plugin, home)
        samples: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
        for n in range(rounds):
            for plugin in (True, False) if n % 2 == 0 else (False, True):
                samples[plugin].append(run_suite(suite, plugin, home))
    walls = {
        plugin: statistics.median(wall for wall, _ in runs) for plugin, runs in samples.items()
    }
    zombies = {plugin: max(count for _, count in runs) for plugin, runs in samples.items()}
    return zombies[True], zombies[False], walls[True], walls[False]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tests", type=int, nargs="+", default=[1000], help="suite sizes (tests leaving an orphan)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="runs per variant (median)")
    args = parser.parse_args()
    if not os.path.isdir("/proc/self/task"):
        print("bench_zombies: needs Linux (/proc)", file=sys.stderr)
        return 2
    if args.rounds < 1 or any(tests < 1 for tests in args.tests):
        parser.error("--tests and --rounds must be at least 1")
    print(f"each test leaves an exited orphan; medians of {args.rounds} alternating rounds")
    print("zombies: under pytest at session end, the most of any round (with / without)")
    print(f"{'N':>6}  {'zombies':>11}  {'wall with':>10}  {'wall without':>12}  {'ratio':>6}")
    for tests in args.tests:
        with_z, without_z, with_wall, without_wall = bench(tests, args.rounds)
        print(
            f"{tests:>6}  {f'{with_z} / {without_z}':>11}  {with_wall:>9.2f}s"
            f"  {without_wall:>11.2f}s  {with_wall / without_wall:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
