"""Benchmark: how fast the reference server starts, answers and stops, and how big it is.

Run by hand (not a test): ``python benchmarks/bench_spawn.py [--runs N]``. For stdio
and Streamable HTTP it reports medians over N runs (default 50) of: spawn until the
record is written (the record's own timestamp) and until ``spawn_server`` returned,
spawn until the ``initialize`` reply, stop until exited with the record removed, and
the server's resident memory (and for server-everything, when tests/node is installed:
spawn until ready by each ready mode, stop time and RSS); and, as the baseline, a bare
``python -c "import pytest_leanhost.refserver"``, with the ratio registered/baseline.
Targets on a 2-core machine: registered within 1.5x the baseline, stdio stop under
50 ms, RSS under 30 MB. Always exits 0; the table marks each target ok or MISSED.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import psutil

from pytest_leanhost.client.spawn import spawn_server

Transport = Literal["stdio", "http"]
REFSERVER = [sys.executable, "-m", "pytest_leanhost.refserver"]
TRANSPORTS: tuple[Transport, ...] = ("stdio", "http")


def _bare_startup() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pytest_leanhost.refserver"], check=True)
    return time.perf_counter() - started


def _one_cycle(transport: Transport, registry: Path) -> dict[str, float]:
    """Spawn, initialize and stop one server; return its timings (s) and RSS (bytes)."""
    wall_start_ms = time.time() * 1000
    started = time.perf_counter()
    server = spawn_server(REFSERVER, transport=transport, registry=registry)
    try:
        returned = time.perf_counter() - started
        written = (server.record.started_unix_millis - wall_start_ms) / 1000
        server.initialize()
        initialized = time.perf_counter() - started
        rss = float(psutil.Process(server.pid).memory_info().rss)
        stopping = time.perf_counter()
        result = server.stop()
        stopped = time.perf_counter() - stopping
        if result.returncode != 0 or not result.record_removed:
            raise RuntimeError(f"unclean stop: {result}")
    finally:
        server.stop()
    return {
        "written": written,
        "registered": returned,
        "initialized": initialized,
        "stopped": stopped,
        "rss": rss,
    }


EVERYTHING_JS = (
    Path(__file__).resolve().parent.parent
    / "tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
)


def _everything_cycle(transport: Transport, ready: str, registry: Path) -> dict[str, float]:
    """server-everything: spawn until ready by ``ready``, stop, RSS (it writes no record)."""
    mode = "stdio" if transport == "stdio" else "streamableHttp"
    started = time.perf_counter()
    server = spawn_server(
        ["node", str(EVERYTHING_JS), mode],
        transport=transport,
        registry=registry,
        ready=ready,  # type: ignore[arg-type]
        port_env="PORT" if transport == "http" else None,
    )
    try:
        ready_s = time.perf_counter() - started
        rss = float(psutil.Process(server.pid).memory_info().rss)
        stopping = time.perf_counter()
        server.stop()
        stopped = time.perf_counter() - stopping
    finally:
        server.stop()
    return {"ready": ready_s, "stopped": stopped, "rss": rss}


def _everything_table(runs: int, registry: Path) -> None:
    if not EVERYTHING_JS.is_file():
        print("server-everything: not installed (npm ci --prefix tests/node); skipped")
        return
    print()
    print(f"@modelcontextprotocol/server-everything, medians over {runs} runs")
    print(f"{'transport/ready':26}{'ready':>14}{'stop':>14}{'RSS':>14}")
    combos = [
        ("stdio", "initialize"),
        ("stdio", "auto"),
        ("http", "initialize"),
        ("http", "auto"),
        ("http", "port"),
    ]
    for transport, ready in combos:
        got = [_everything_cycle(transport, ready, registry) for _ in range(runs)]  # type: ignore[arg-type]
        med = {key: statistics.median(g[key] for g in got) for key in got[0]}
        print(
            f"{transport + ' ' + ready:26}{_ms(med['ready']):>14}{_ms(med['stopped']):>14}"
            f"{med['rss'] / 2**20:11.1f} MB"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="runs per measurement (>= 1)")
    args = parser.parse_args(argv)
    runs = max(1, args.runs)
    samples: dict[str, list[dict[str, float]]] = {transport: [] for transport in TRANSPORTS}
    baseline_samples = []
    with tempfile.TemporaryDirectory(prefix="leanhost-bench-") as tmp:
        registry = Path(tmp) / "registry"
        _one_cycle("stdio", registry)  # warm the file system caches
        for _ in range(runs):
            # Interleaved, so a drifting machine load touches every column alike.
            baseline_samples.append(_bare_startup())
            for transport in TRANSPORTS:
                samples[transport].append(_one_cycle(transport, registry))
    baseline = statistics.median(baseline_samples)
    print(f"pytest-leanhost reference server, medians over {runs} runs")
    print(f"baseline: python -c 'import pytest_leanhost.refserver'  {_ms(baseline)}")
    print()
    header = f"{'':26}" + "".join(f"{transport:>14}" for transport in TRANSPORTS)
    print(header)
    rows = [
        ("spawn -> record written", "written"),
        ("spawn -> registered", "registered"),
        ("spawn -> initialize reply", "initialized"),
        ("stop -> exited, no record", "stopped"),
    ]
    medians = {
        transport: {
            key: statistics.median(s[key] for s in samples[transport])
            for key in samples[transport][0]
        }
        for transport in TRANSPORTS
    }
    for label, key in rows:
        print(f"{label:26}" + "".join(f"{_ms(medians[t][key]):>14}" for t in TRANSPORTS))
    print(
        f"{'registered / baseline':26}"
        + "".join(f"{medians[t]['registered'] / baseline:13.2f}x" for t in TRANSPORTS)
    )
    print(
        f"{'resident memory (RSS)':26}"
        + "".join(f"{medians[t]['rss'] / 2**20:11.1f} MB" for t in TRANSPORTS)
    )
    print()
    checks = [
        (f"registered within 1.5x the baseline ({t})", medians[t]["registered"] <= 1.5 * baseline)
        for t in TRANSPORTS
    ]
    checks.append(("stdio stop under 50 ms", medians["stdio"]["stopped"] < 0.050))
    checks += [(f"RSS under 30 MB ({t})", medians[t]["rss"] < 30 * 2**20) for t in TRANSPORTS]
    for label, ok in checks:
        print(f"  {'ok    ' if ok else 'MISSED'}  {label}")
    with tempfile.TemporaryDirectory(prefix="leanhost-bench-") as tmp:
        _everything_table(max(1, min(runs, 10)), Path(tmp) / "registry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
