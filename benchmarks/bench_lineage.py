"""Benchmark: what a test boundary costs the lineage recorder.

Run by hand (not a test): ``python benchmarks/bench_lineage.py [--runs N]``. Prints
the median µs of one ``begin`` + ``end`` pair (a test that starts no process: two
small reads of pytest's direct children), of the same with N live children of
the process (a session fixture's servers: one more read per live descendant),
of ``boottime_ticks()`` alone, and (``--descendants N``) the session-end check over
N live unmarked descendants found by lineage (``check_session`` with a
``LineageView``, no grace, nothing stopped). Always exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from pytest_leanhost.core.lineage import Lineage, boottime_ticks


def _pairs(lineage: Lineage, runs: int) -> float:
    samples = []
    for index in range(runs):
        nodeid = f"bench::test_{index}"
        started = time.perf_counter_ns()
        lineage.begin(nodeid)
        lineage.end(nodeid)
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--children", type=int, default=3)
    parser.add_argument("--descendants", type=int, default=200)
    args = parser.parse_args()
    clock = []
    for _ in range(args.runs):
        started = time.perf_counter_ns()
        boottime_ticks()
        clock.append(time.perf_counter_ns() - started)
    print(f"boottime_ticks()                      median {statistics.median(clock) / 1000:8.1f} µs")
    print(f"begin+end, no child                   median {_pairs(Lineage(), args.runs):8.1f} µs")
    children = [
        subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
        for _ in range(args.children)
    ]
    try:
        lineage = Lineage()
        median = _pairs(lineage, args.runs)
        print(f"begin+end, {args.children} live children            median {median:8.1f} µs")
    finally:
        for child in children:
            child.kill()
            child.wait()
            if child.stdin is not None:
                child.stdin.close()
    if args.descendants:
        bench_check(args.descendants)
    return 0


def bench_check(count: int, runs: int = 7) -> None:
    """The session-end check over ``count`` live, unmarked descendants of this process."""
    from pytest_leanhost.core.check import LineageView, check_session

    lineage = Lineage()
    lineage.boundary()
    before = lineage.identities()
    lineage.begin("bench::test_spawns")
    children = [subprocess.Popen(["sleep", "300"], env={}) for _ in range(count)]
    try:
        lineage.end("bench::test_spawns")
        view = LineageView(lineage=lineage, before=before)
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            checked = check_session({}, None, grace=0, lineage=view)
            samples.append(time.perf_counter() - started)
        assert len(checked.findings) == count, len(checked.findings)
        median = statistics.median(samples) * 1000
        print(f"session-end check, {count} live descendants  median {median:8.1f} ms")
    finally:
        for child in children:
            child.kill()
            child.wait()


if __name__ == "__main__":
    sys.exit(main())
