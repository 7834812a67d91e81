"""Benchmark: what a test boundary costs the lineage recorder.

Run by hand (not a test): ``python benchmarks/bench_lineage.py [--runs N]``. Prints
the median µs of one ``begin`` + ``end`` pair (a test that starts no process: two
small reads of pytest's direct children), of the same with N live children of
the process (a session fixture's servers: one more read per live descendant),
and of ``boottime_ticks()`` alone. Always exits 0.
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
