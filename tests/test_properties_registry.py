"""Properties of the registry scan and of stale-record cleanup, on generated registries of real
files, directories, FIFOs and symlinks (and, for cleanup, records of real live processes)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_leanhost.core.doctor import cleanup_stale_records, inspect_registry
from pytest_leanhost.core.registry import RegistryEntry, is_record_name, scan_registry
from pytest_leanhost.record import MAX_RECORD_BYTES, ProcessRecord, RecordError
from tests.children import Children
from tests.test_properties_record import json_values, parsed, records

pytestmark = pytest.mark.timeout(180)

REGISTRY_PROPERTY = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_PID_MAX_FILE = Path("/proc/sys/kernel/pid_max")
# Linux says; macOS PIDs stay below 100000.
PID_MAX = int(_PID_MAX_FILE.read_text()) if _PID_MAX_FILE.exists() else 99_999
DEAD_PIDS = st.integers(PID_MAX + 1, 2**32 - 1)  # no process can have such a PID

# File names as the file system takes them: any bytes but "/" and NUL, at most 255 of
# them, not "." or ".."; UTF-8 text, invalid UTF-8, control characters, and suffixes that
# are and are not a record's (".json" alone is a hidden name without an extension).
_stems = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), max_size=12).map(str.encode),
    st.binary(max_size=12).map(lambda raw: raw.replace(b"/", b"%").replace(b"\x00", b"%")),
    st.sampled_from([b"", b"123", b" ", b"-", b"\n", b".", b".tmp.", b"x.json"]),
    st.integers(200, 250).map(lambda size: b"n" * size),
)
_suffixes = st.sampled_from(
    [b".json", b".json", b".json", b"", b".JSON", b".json.tmp", b".json~", b"json", b".jsonl"]
)


def _valid_name(name: bytes) -> bool:
    return name not in (b"", b".", b"..") and len(name) <= 255


file_names = st.builds(bytes.__add__, _stems, _suffixes).filter(_valid_name)
# Mostly record names, for cleanup, where the records are what matters.
record_heavy_names = st.builds(
    bytes.__add__, _stems, st.sampled_from([b".json"] * 6 + [b"", b".JSON", b".json.tmp"])
).filter(_valid_name)

valid_record_bytes = records.map(ProcessRecord.to_json_bytes)
file_contents = st.one_of(
    valid_record_bytes,
    st.binary(max_size=120),
    json_values.map(str.encode),  # any JSON document, numbers past 4300 digits included
    valid_record_bytes.flatmap(
        lambda data: st.integers(0, len(data) - 1).map(lambda cut: data[:cut])
    ),
)


def record_name(name: bytes) -> bool:
    """The extension rule, written out independently of the code under test: the name ends
    with ".json" and is not exactly ".json" (Rust's ``extension() == Some("json")``)."""
    return name.endswith(b".json") and name != b".json"


def padded(data: bytes, size: int) -> bytes:
    """``data`` followed by JSON whitespace up to exactly ``size`` bytes."""
    return data + b"\n" * (size - len(data))


@dataclasses.dataclass(frozen=True)
class Plant:
    """One directory entry to create: ``kind`` and, for a file its bytes, for a link its target."""

    name: bytes
    kind: str
    content: bytes = b""


SYMLINK_KINDS = ("link_inside", "link_outside", "dangling", "loop")
KINDS = ("file", "file", "file", "dir", "fifo", *SYMLINK_KINDS)
OUTSIDE_TARGETS = (b"record.json", b"fifo.json", b"dir.json", b"missing.json")


@st.composite
def registries(draw: st.DrawFn) -> list[Plant]:
    """A registry's entries; at most one file near the 1 MiB limit, and not often."""
    names = draw(st.lists(file_names, max_size=10, unique=True))
    plants = []
    for name in names:
        kind = draw(st.sampled_from(KINDS))
        if kind == "file":
            plants.append(Plant(name, kind, draw(file_contents)))
        elif kind == "link_inside":
            plants.append(Plant(name, kind, draw(st.sampled_from(names))))
        elif kind == "link_outside":
            plants.append(Plant(name, kind, draw(st.sampled_from(OUTSIDE_TARGETS))))
        else:
            plants.append(Plant(name, kind))
    big = draw(st.sampled_from([None] * 7 + [MAX_RECORD_BYTES - 1, MAX_RECORD_BYTES]))
    if big is not None and b"big.json" not in names:
        size = big + draw(st.sampled_from([0, 1]))
        plants.append(Plant(b"big.json", "file", padded(draw(valid_record_bytes), size)))
    return plants


def make_outside(outside: bytes) -> ProcessRecord:
    """Targets outside the registry: a valid record, a FIFO, a directory."""
    os.mkdir(outside)
    record = ProcessRecord(7, "/bin/outside", "/", 1, None, None, "stdio")
    with open(os.path.join(outside, b"record.json"), "wb") as handle:
        handle.write(record.to_json_bytes())
    os.mkfifo(os.path.join(outside, b"fifo.json"))
    os.mkdir(os.path.join(outside, b"dir.json"))
    return record


def plant(registry: bytes, outside: bytes, item: Plant) -> None:
    path = os.path.join(registry, item.name)
    if item.kind == "file":
        with open(path, "wb") as handle:
            handle.write(item.content)
    elif item.kind == "dir":
        os.mkdir(path)
        with open(os.path.join(path, b"inner.json"), "wb") as handle:
            handle.write(ProcessRecord(8, "/x", "/", 1, None, None, "stdio").to_json_bytes())
    elif item.kind == "fifo":
        os.mkfifo(path)
    elif item.kind == "link_inside":
        os.symlink(item.content, path)  # relative: another entry, maybe a record, maybe itself
    elif item.kind == "link_outside":
        os.symlink(os.path.join(outside, item.content), path)
    elif item.kind == "dangling":
        os.symlink(os.path.join(registry, b"no such file"), path)
    else:
        os.symlink(item.name, path)  # a loop: the link points at itself


def snapshot(directory: bytes) -> dict[bytes, tuple[str, bytes]]:
    """Every entry below ``directory`` (links not followed): its type and bytes or target."""
    found: dict[bytes, tuple[str, bytes]] = {}
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            found[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(mode):
            found[name] = ("dir", b"")
            for inner, value in snapshot(path).items():
                found[os.path.join(name, inner)] = value
        elif stat.S_ISREG(mode):
            with open(path, "rb") as handle:
                found[name] = ("file", handle.read())
        else:
            found[name] = ("other", b"")
    return found


@contextlib.contextmanager
def registry_and_outside() -> Iterator[tuple[bytes, bytes]]:
    with tempfile.TemporaryDirectory(prefix="leanhost-props-") as tmp:
        base = os.fsencode(tmp)
        registry = os.path.join(base, b"registry")
        os.mkdir(registry, 0o700)
        yield registry, os.path.join(base, b"outside")


def check_entry(entry: RegistryEntry, item: Plant) -> None:
    """What the scan must say about one planted ``*.json`` entry."""
    assert entry.owner_uid == os.geteuid()
    if item.kind == "file" and len(item.content) > MAX_RECORD_BYTES:
        assert entry.record is None
        assert entry.problem is not None
        assert entry.problem.startswith(f"larger than {MAX_RECORD_BYTES} bytes")
    elif item.kind == "file":
        assert entry.data == item.content
        expected = parsed(item.content)
        if isinstance(expected, RecordError):
            assert (entry.record, entry.problem) == (None, str(expected))
        else:
            assert (entry.record, entry.problem) == (expected, None)
    else:
        reason = {
            "dir": "a directory, not a file",
            "fifo": "not a regular file",
        }.get(item.kind, "symlink (not followed)")  # never read through, whatever the target
        assert (entry.record, entry.problem, entry.data) == (None, reason, None)


@REGISTRY_PROPERTY
@given(registries())
def test_scan_gives_one_faithful_entry_per_record_name_and_follows_no_link(
    plants: list[Plant],
) -> None:
    """Whatever the directory holds, the scan returns exactly one entry per ``*.json`` name,
    parses every valid record file up to the size limit, reads no symlink (not even one to a
    valid record or to a FIFO) and changes nothing; ``inspect_registry`` judges the same set."""
    with registry_and_outside() as (registry, outside):
        make_outside(outside)
        for item in plants:
            plant(registry, outside, item)
        before = snapshot(registry)
        reg = os.fsdecode(registry)

        entries = scan_registry(reg)

        wanted = {
            os.path.join(reg, os.fsdecode(item.name)): item
            for item in plants
            if record_name(item.name)
        }
        paths = [entry.path for entry in entries]
        assert len(paths) == len(set(paths))
        assert set(paths) == set(wanted)
        for entry in entries:
            check_entry(entry, wanted[entry.path])
        judged = inspect_registry(reg)
        assert sorted(item.path for item in judged) == sorted(paths)
        for one in judged:
            assert (one.verdict == "corrupt") == (one.entry.record is None)
        assert snapshot(registry) == before


@settings(REGISTRY_PROPERTY, max_examples=300)
@given(file_names)
def test_record_name_rule_is_the_extension_rule(name: bytes) -> None:
    """``is_record_name`` agrees with the rule the properties above check against."""
    assert is_record_name(os.fsdecode(name)) == record_name(name)


CHURN_NAMES = [f"{index}.json".encode() for index in range(5)] + [b".json", b"x.json.tmp"]


def write_in_place(path: bytes, *parts: bytes) -> None:
    """Truncate and write ``path`` in steps; never through a symlink, never blocking on a FIFO."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
    fd = os.open(path, flags, 0o600)
    try:
        for part in parts:
            os.write(fd, part)
    finally:
        os.close(fd)


def churn(registry: bytes, outside: bytes, rng: random.Random, stop: threading.Event) -> int:
    """Delete, rewrite and swap the registry's files until ``stop`` is set; returns the count.

    Every change is one the scan can meet between listing and reading: a file removed,
    truncated and rewritten in place, atomically replaced, grown past the size limit,
    or replaced by a symlink, a FIFO or a directory.
    """
    record = ProcessRecord(4_000_000_000, "/x", "/", 1, None, None, "stdio").to_json_bytes()
    half = len(record) // 2
    tmp = os.path.join(registry, b".churn.tmp")
    changes = 0
    while not stop.is_set():
        path = os.path.join(registry, rng.choice(CHURN_NAMES))
        action = rng.choice(["remove", "remove", "rewrite", "half", "replace", "link", "fifo"])
        action = rng.choice([action, action, action, "dir", "big"])
        with contextlib.suppress(OSError):
            os.rmdir(path)  # a directory planted earlier goes first
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        with contextlib.suppress(OSError):  # the path may be anything by now: try, move on
            if action == "remove":
                os.unlink(path)
            elif action == "rewrite":
                write_in_place(path, record[:half], record[half:])
            elif action == "half":
                write_in_place(path, record[:half])
            elif action == "replace":
                write_in_place(tmp, record)
                os.replace(tmp, path)
            elif action == "link":
                os.symlink(os.path.join(outside, b"record.json"), tmp)
                os.replace(tmp, path)
            elif action == "fifo":
                os.mkfifo(tmp)
                os.replace(tmp, path)
            elif action == "dir":
                os.unlink(path)
                os.mkdir(path)
            elif rng.random() < 0.2:  # "big", sparingly: at the size limit, or one byte past
                write_in_place(path, padded(record, MAX_RECORD_BYTES + rng.choice([0, 1])))
        changes += 1
    return changes


@settings(REGISTRY_PROPERTY, max_examples=6)
@given(st.integers(0, 2**32))
def test_scan_never_raises_while_files_vanish_and_change(seed: int) -> None:
    """A thread keeps deleting, rewriting and swapping files while the scan, the doctor's
    judgement and cleanup run over and over: none of them ever raises, and every entry still
    names a record file and carries exactly one of a record and a reason."""
    with registry_and_outside() as (registry, outside):
        outside_record = make_outside(outside)
        reg = os.fsdecode(registry)
        stop = threading.Event()
        changes: list[int] = []
        worker = threading.Thread(
            target=lambda: changes.append(churn(registry, outside, random.Random(seed), stop)),
            daemon=True,
        )
        worker.start()
        try:
            scans = 0
            deadline = time.monotonic() + 0.4
            while time.monotonic() < deadline or scans < 20:
                for entry in scan_registry(reg):
                    assert record_name(os.fsencode(os.path.basename(entry.path)))
                    assert (entry.record is None) != (entry.problem is None)
                cleanup_stale_records(inspect_registry(reg))
                scans += 1
        finally:
            stop.set()
            worker.join(10)
        assert not worker.is_alive()
        assert changes[0] > 0  # the churn really ran alongside
        with open(os.path.join(outside, b"record.json"), "rb") as handle:
            assert handle.read() == outside_record.to_json_bytes()


@contextlib.contextmanager
def sleepers(count: int) -> Iterator[list[psutil.Process]]:
    """``count`` real ``sleep`` processes, each killed by its exact PID on the way out."""
    with Children() as children:
        started = [
            children.track(
                subprocess.Popen(
                    ["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
                )
            )
            for _ in range(count)
        ]
        yield [psutil.Process(child.pid) for child in started]


@dataclasses.dataclass(frozen=True)
class Seeded:
    """One registry entry for the cleanup property, and whether cleanup must remove it."""

    item: Plant
    removable: bool
    verdict: str | None = None  # the doctor's verdict for a record file


def record_for(pid: int, started: int, base: ProcessRecord) -> bytes:
    return dataclasses.replace(base, pid=pid, started_unix_millis=started).to_json_bytes()


@st.composite
def cleanup_registries(draw: st.DrawFn, live: list[tuple[int, int]]) -> list[Seeded]:
    """Records of dead PIDs, of live processes, of live PIDs reused by a younger process,
    corrupt and oversized files, symlinks, hard links, directories, FIFOs and non-record names
    holding dead records; ``live`` is (pid, create time in ms) of running processes."""
    names = draw(st.lists(record_heavy_names, min_size=1, max_size=12, unique=True))
    seeded = []
    for name in names:
        base = draw(records)
        dead = record_for(draw(DEAD_PIDS), base.started_unix_millis, base)
        if not record_name(name):
            seeded.append(Seeded(Plant(name, "file", dead), False))
            continue
        kind = draw(
            st.sampled_from(
                ["dead", "dead", "live", "live", "reused", "corrupt", "hardlink", *KINDS[3:]]
            )
        )
        pid, created_ms = draw(st.sampled_from(live))
        if kind == "dead":
            seeded.append(Seeded(Plant(name, "file", dead), True, "stale"))
        elif kind == "live":
            started = created_ms + draw(st.integers(0, 10**9))
            # The sleeps' parent is this test process: a stdio record naming another
            # parent (> 1) is an orphaned server's, still alive, still kept.
            orphaned = (
                base.transport == "stdio"
                and base.parent_pid_at_start is not None
                and base.parent_pid_at_start not in (0, 1, os.getpid())
            )
            verdict = "orphaned" if orphaned else "alive"
            seeded.append(
                Seeded(Plant(name, "file", record_for(pid, started, base)), False, verdict)
            )
        elif kind == "reused":
            started = created_ms - draw(st.integers(1_100, created_ms))
            seeded.append(
                Seeded(Plant(name, "file", record_for(pid, started, base)), True, "reused")
            )
        elif kind == "corrupt":
            damaged = draw(
                st.sampled_from(
                    [dead[:-1], dead + b"}", b"\xff" + dead, dead.replace(b"{", b"[", 1)]
                )
                | st.binary(max_size=64)
            )
            if draw(st.booleans()) and len(seeded) < 2:  # sparingly: a dead record, too big
                damaged = padded(dead, MAX_RECORD_BYTES + 1)
            if not isinstance(parsed(damaged), RecordError):
                damaged = b"{"
            seeded.append(Seeded(Plant(name, "file", damaged), False))
        elif kind == "hardlink":
            seeded.append(Seeded(Plant(name, "hardlink", b"dead.json"), True, "stale"))
        elif kind == "link_inside":
            seeded.append(Seeded(Plant(name, kind, draw(st.sampled_from(names))), False))
        elif kind == "link_outside":
            target = draw(st.sampled_from([b"dead.json", b"live.json", *OUTSIDE_TARGETS]))
            seeded.append(Seeded(Plant(name, kind, target), False))
        else:
            seeded.append(Seeded(Plant(name, kind), False))
    return seeded


def test_cleanup_removes_exactly_the_records_of_dead_or_reused_pids() -> None:
    """Over generated registries, ``cleanup_stale_records`` removes every regular-file
    record whose PID is dead or reused and nothing else: not a live process's record, not a
    corrupt or oversized file, not a symlink (nor its target), not a directory or FIFO, not
    a file without the record extension, and nothing outside the registry; the live
    processes are never touched. A second cleanup finds nothing left to do."""
    with sleepers(3) as procs:
        live = [(proc.pid, int(proc.create_time() * 1000)) for proc in procs]
        outside_live = record_for(
            live[0][0], live[0][1], ProcessRecord(0, "/bin/live", "/", 0, None, None, "http")
        )

        @settings(REGISTRY_PROPERTY, max_examples=100)
        @given(cleanup_registries(live))
        def check(seeded: list[Seeded]) -> None:
            with registry_and_outside() as (registry, outside):
                make_outside(outside)
                dead_outside = record_for(
                    PID_MAX + 1, 1, ProcessRecord(0, "/bin/x", "/", 1, None, None, "stdio")
                )
                for name, content in ((b"dead.json", dead_outside), (b"live.json", outside_live)):
                    with open(os.path.join(outside, name), "wb") as handle:
                        handle.write(content)
                for entry in seeded:
                    if entry.item.kind == "hardlink":
                        os.link(
                            os.path.join(outside, entry.item.content),
                            os.path.join(registry, entry.item.name),
                        )
                    else:
                        plant(registry, outside, entry.item)
                registry_before = snapshot(registry)
                outside_before = snapshot(outside)
                reg = os.fsdecode(registry)

                judged = inspect_registry(reg)
                verdicts = {item.path: item.verdict for item in judged}
                result = cleanup_stale_records(judged)

                path_of = {
                    entry.item.name: os.path.join(reg, os.fsdecode(entry.item.name))
                    for entry in seeded
                }
                for entry in seeded:
                    if entry.verdict is not None:
                        assert verdicts[path_of[entry.item.name]] == entry.verdict
                removable = {path_of[entry.item.name] for entry in seeded if entry.removable}
                assert set(result.removed) == removable
                assert len(result.removed) == len(removable)
                assert result.failed == ()
                kept = {
                    name: value
                    for name, value in registry_before.items()
                    if os.path.join(reg, os.fsdecode(name)) not in removable
                }
                assert snapshot(registry) == kept
                assert snapshot(outside) == outside_before
                assert cleanup_stale_records(judged).removed == ()

        check()
        for proc in procs:
            assert proc.is_running()
            assert proc.status() != psutil.STATUS_ZOMBIE
