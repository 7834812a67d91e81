"""Time the whole ``leanhost doctor processes`` command on registries of N live records.

Run by hand: ``python benchmarks/bench_doctor.py`` (options: ``--sizes``, ``--runs``).

For each N it starts N real idle processes, writes one record per process,
and times the complete command (interpreter start included) as a subprocess,
reporting the median of ``--runs`` runs, the cost per record, and the size of
the process table it walked. For comparison it also times, over the first 50
records, what lean-host-mcp's doctor does per record (five subprocesses:
``kill -0``, two ``ps`` look-ups, a ``ps -axo`` listing, another ``kill -0``)
and extrapolates it to N.
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

from pytest_leanhost.files import write_atomically
from pytest_leanhost.record import ProcessRecord

# Bytecode cached, as for an installed package (PYTHONDONTWRITEBYTECODE would make
# every timed run compile the package from source).
BENCH_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def start_idle_processes(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL) for _ in range(count)]


def write_records(registry: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    now = time.time_ns() // 1_000_000
    for proc in procs:
        record = ProcessRecord(
            pid=proc.pid,
            executable="/usr/bin/sleep",
            cwd="/",
            started_unix_millis=now,
            parent_pid_at_start=os.getpid(),
            process_group_id=os.getpgrp(),
            transport="stdio",
        )
        write_atomically(registry / f"{proc.pid}.json", record.to_json_bytes())


def time_command(argv: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, env=BENCH_ENV, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def original_cost_per_record(procs: list[subprocess.Popen[bytes]]) -> float:
    """Seconds per record of the original's five subprocesses, measured over 50 records."""
    sample = procs[:50]
    start = time.perf_counter()
    for proc in sample:
        pid = str(proc.pid)
        for argv in (
            ["kill", "-0", pid],
            ["ps", "-o", "ppid=", "-p", pid],
            ["ps", "-o", "pgid=", "-p", pid],
            ["ps", "-axo", "pid=,ppid="],
            ["kill", "-0", str(os.getpid())],
        ):
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - start) / len(sample)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,1000", help="comma-separated record counts")
    parser.add_argument("--runs", type=int, default=7, help="runs per size (median reported)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    leanhost = [
        sys.executable,
        "-m",
        "pytest_leanhost.core.cli",
        "doctor",
        "processes",
        "--registry",
    ]
    empty = tempfile.mkdtemp(prefix="leanhost-bench-empty-")
    base = time_command([*leanhost, empty], args.runs)
    print(f"empty registry (start-up and one process-table pass): {base * 1000:.1f} ms")
    print(
        f"{'N':>6} {'processes':>9} {'median ms':>10} {'per record us':>14} "
        f"{'(t-empty)/N us':>15} {'original est. s':>16}"
    )
    original_per_record = None
    for size in sizes:
        procs = start_idle_processes(size)
        try:
            with tempfile.TemporaryDirectory(prefix="leanhost-bench-") as registry:
                write_records(Path(registry), procs)
                table_size = sum(1 for name in os.listdir("/proc") if name.isdigit())
                median = time_command([*leanhost, registry], args.runs)
                if original_per_record is None:
                    original_per_record = original_cost_per_record(procs)
                print(
                    f"{size:>6} {table_size:>9} {median * 1000:>10.1f} "
                    f"{median / size * 1e6:>14.1f} {(median - base) / size * 1e6:>15.1f} "
                    f"{original_per_record * size:>16.1f}"
                )
        finally:
            for proc in procs:
                proc.kill()
            for proc in procs:
                proc.wait()
    os.rmdir(empty)
    return 0


if __name__ == "__main__":
    sys.exit(main())
