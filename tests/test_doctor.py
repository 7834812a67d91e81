"""The probe and doctor against real processes, checked field by field against ``ps``."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil

from pytest_leanhost.core.doctor import (
    CLEANUP_HINT,
    cleanup_stale_records,
    inspect_registry,
    render_json,
    render_lines,
    render_text,
)
from pytest_leanhost.core.probe import JudgedRecord, ProcessTable
from pytest_leanhost.core.registry import RegistryEntry
from pytest_leanhost.files import write_atomically
from pytest_leanhost.record import ProcessRecord
from tests.children import Children, poll


def ps_parent_and_group(pid: int) -> tuple[int, int]:
    """What ``ps`` says of a process: its parent PID and its process group."""
    out = subprocess.run(
        ["ps", "-o", "ppid=,pgid=", "-p", str(pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), int(out[1])


def ps_children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-axo", "pid=,ppid="], capture_output=True, text=True, check=True)
    pairs = (line.split() for line in out.stdout.splitlines())
    return sorted(int(child) for child, parent in pairs if int(parent) == pid)


def only(registry: Path) -> JudgedRecord:
    judged = inspect_registry(registry)
    assert len(judged) == 1, render_text(judged)
    return judged[0]


def plant_record(registry: Path, pid: int, *, started: int, transport: str = "stdio") -> Path:
    """Write a record for ``pid`` as its server would have, started at ``started`` ms."""
    registry.mkdir(exist_ok=True)
    record = ProcessRecord(
        pid=pid,
        executable=psutil.Process(pid).exe(),
        cwd="/",
        started_unix_millis=started,
        parent_pid_at_start=os.getpid(),
        process_group_id=os.getpgrp(),
        transport=transport,
    )
    path = registry / f"{pid}.json"
    write_atomically(path, record.to_json_bytes())
    return path


def test_a_live_server_matches_what_ps_says(tmp_path: Path, children: Children) -> None:
    server = children.server(tmp_path)
    judged = only(tmp_path)
    parent, group = ps_parent_and_group(server.pid)
    assert judged.alive is True
    assert judged.verdict == "alive"
    assert judged.executable_match is True
    assert judged.current_parent_pid == parent == os.getpid()
    assert judged.current_process_group_id == group
    assert judged.parent_alive_at_start is True
    assert list(judged.child_pids) == ps_children(server.pid)
    assert judged.stale_client is False
    lines = render_lines(judged)
    assert lines[0].startswith(f"pid={server.pid} alive=true executable_match=yes transport=stdio")
    assert f" current_parent_pid={parent} " in lines[0]
    assert f" current_process_group_id={group} " in lines[0]
    assert lines[0].endswith(f" stale_client=false record={tmp_path}/{server.pid}.json")
    assert lines[1:] == []


def test_direct_children_are_listed_as_ps_lists_them(tmp_path: Path, children: Children) -> None:
    code = (
        "import subprocess, sys\n"
        "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])"
        " for _ in range(2)]\n"
        "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
        "sys.stdin.read()\n"
        "[k.kill() for k in kids]\n"
    )
    parent = children.start(code)
    assert parent.stdout is not None
    kids = sorted(int(pid) for pid in parent.stdout.readline().split())
    try:
        plant_record(
            tmp_path, parent.pid, started=int(psutil.Process(parent.pid).create_time() * 1000)
        )
        judged = only(tmp_path)
        assert list(judged.child_pids) == kids == ps_children(parent.pid)
        assert render_lines(judged)[1] == f"  child_pids={kids[0]},{kids[1]}"
    finally:
        for pid in kids:
            proc = psutil.Process(pid)
            if proc.ppid() == parent.pid:  # still the child we started
                proc.kill()


def test_a_killed_server_leaves_a_stale_record(tmp_path: Path, children: Children) -> None:
    server = children.server(tmp_path)
    server.kill()
    server.wait(10)
    judged = only(tmp_path)
    assert (judged.alive, judged.verdict, judged.zombie) == (False, "stale", False)
    assert judged.executable_match is None
    assert judged.current_parent_pid is None
    assert judged.current_process_group_id is None
    assert judged.child_pids == ()
    lines = render_lines(judged)
    assert " alive=false executable_match=unknown " in lines[0]
    assert " current_parent_pid=- " in lines[0]
    assert " current_process_group_id=- " in lines[0]
    assert lines[1:] == [f"  stale_record_cleanup={CLEANUP_HINT}"]


def test_a_zombie_server_is_dead_not_alive(tmp_path: Path, children: Children) -> None:
    server = children.server(tmp_path)
    os.kill(server.pid, signal.SIGKILL)  # our own unreaped child: its PID cannot be reused
    assert poll(lambda: psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE)
    judged = only(tmp_path)
    assert (judged.alive, judged.zombie, judged.verdict) == (False, True, "stale")
    assert render_lines(judged)[1:] == [f"  stale_record_cleanup={CLEANUP_HINT}", "  zombie=yes"]
    server.wait(10)


def test_an_orphaned_stdio_server_is_a_stale_client(tmp_path: Path, children: Children) -> None:
    server = children.orphaned_server(tmp_path)
    judged = only(tmp_path)
    record = judged.entry.record
    assert record is not None
    parent, group = ps_parent_and_group(server.pid)
    assert judged.alive is True
    assert judged.current_parent_pid == parent != record.parent_pid_at_start
    assert judged.current_process_group_id == group
    assert judged.parent_alive_at_start is False
    assert judged.stale_client is True
    assert judged.verdict == "orphaned"
    lines = render_lines(judged)
    assert " stale_client=true " in lines[0]
    assert " parent_alive_at_start=no " in lines[0]
    assert lines[1:] == [f"  exact_terminate=kill -TERM {server.pid}"]


def test_a_pid_held_by_a_process_younger_than_the_record_is_reused(
    tmp_path: Path, children: Children
) -> None:
    newcomer = children.start("import sys; sys.stdin.read()")
    # The record says its server started a minute before this process existed.
    created = psutil.Process(newcomer.pid).create_time()
    plant_record(tmp_path, newcomer.pid, started=int((created - 60) * 1000))
    judged = only(tmp_path)
    assert (judged.alive, judged.pid_reused, judged.verdict) == (False, True, "reused")
    assert render_lines(judged)[1:] == [
        f"  stale_record_cleanup={CLEANUP_HINT}",
        "  pid_reused=yes",
    ]
    assert newcomer.poll() is None  # judged, never signalled


def test_http_record_shows_bind_and_path(tmp_path: Path, children: Children) -> None:
    server = children.server(tmp_path, transport="http")
    path = tmp_path / f"{server.pid}.json"
    record = ProcessRecord.from_json_bytes(path.read_bytes())
    http = ProcessRecord(**{**record.__dict__, "bind": "127.0.0.1:8765", "http_path": "/mcp"})
    write_atomically(path, http.to_json_bytes())
    line = render_lines(only(tmp_path))[0]
    assert " transport=http bind=127.0.0.1:8765 http_path=/mcp " in line


def test_doctor_line_format_is_the_originals_to_the_letter() -> None:
    record = ProcessRecord(
        pid=100,
        executable="/bin/lean-host-mcp",
        cwd="/tmp/project",
        started_unix_millis=1,
        parent_pid_at_start=50,
        process_group_id=25,
        transport="stdio",
    )
    entry = RegistryEntry("/reg/100.json", record, None, os.geteuid())
    judged = JudgedRecord(
        entry,
        alive=True,
        executable_match=True,
        current_parent_pid=1,
        current_process_group_id=25,
        parent_alive_at_start=False,
        child_pids=(101, 102),
    )
    assert render_text([judged]) == (
        "pid=100 alive=true executable_match=yes transport=stdio bind=- http_path=-"
        " cwd=/tmp/project started_unix_millis=1 parent_pid_at_start=50 current_parent_pid=1"
        " parent_alive_at_start=no process_group_id=25 current_process_group_id=25"
        " stale_client=true record=/reg/100.json\n"
        "  child_pids=101,102\n"
        "  exact_terminate=kill -TERM 100\n"
    )
    # The original's unit test: an exact parent change makes a stale client, nothing else does.
    same_parent = JudgedRecord(entry, alive=True, current_parent_pid=50)
    assert not same_parent.stale_client
    http = RegistryEntry(
        "/reg/100.json", ProcessRecord(**{**record.__dict__, "transport": "http"}), None, None
    )
    assert not JudgedRecord(http, alive=True, current_parent_pid=1).stale_client
    launched_by_init = ProcessRecord(**{**record.__dict__, "parent_pid_at_start": 1})
    init_entry = RegistryEntry("/reg/100.json", launched_by_init, None, None)
    assert not JudgedRecord(init_entry, alive=True, current_parent_pid=7).stale_client


def test_a_foreign_record_is_flagged_and_never_gets_a_kill_suggestion() -> None:
    record = ProcessRecord(100, "/x", "/", 1, 50, 25, "stdio")
    foreign = JudgedRecord(
        RegistryEntry("/reg/100.json", record, None, os.geteuid() + 1),
        alive=True,
        current_parent_pid=1,
        foreign_owner_uid=os.geteuid() + 1,
    )
    assert foreign.stale_client
    assert render_lines(foreign)[1:] == [f"  foreign_owner_uid={os.geteuid() + 1}"]


def test_cleanup_removes_only_records_of_dead_or_reused_pids(
    tmp_path: Path, children: Children
) -> None:
    live = children.server(tmp_path)
    dead = children.server(tmp_path)
    dead.kill()
    dead.wait(10)
    newcomer = children.start("import sys; sys.stdin.read()")
    created = psutil.Process(newcomer.pid).create_time()
    reused = plant_record(tmp_path, newcomer.pid, started=int((created - 60) * 1000))
    (tmp_path / "corrupt.json").write_bytes(b"{")
    (tmp_path / "notes.txt").write_text("not a record")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    write_atomically(outside, (tmp_path / f"{dead.pid}.json").read_bytes())
    (tmp_path / "link.json").symlink_to(outside)
    judged = inspect_registry(tmp_path)
    result = cleanup_stale_records(judged)
    assert sorted(result.removed) == sorted([f"{tmp_path}/{dead.pid}.json", str(reused)])
    assert result.failed == ()
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"{live.pid}.json", "corrupt.json", "notes.txt", "link.json"]
    )
    assert outside.exists()
    assert newcomer.poll() is None
    assert live.poll() is None
    # A second cleanup over the same judgement finds them gone: not an error.
    assert cleanup_stale_records(judged).removed == ()


def test_cleanup_leaves_a_record_rewritten_since_it_was_judged(
    tmp_path: Path, children: Children
) -> None:
    dead = children.server(tmp_path)
    dead.kill()
    dead.wait(10)
    judged = inspect_registry(tmp_path)
    path = tmp_path / f"{dead.pid}.json"
    fresh = ProcessRecord.from_json_bytes(path.read_bytes())
    write_atomically(path, ProcessRecord(**{**fresh.__dict__, "cwd": "/new"}).to_json_bytes())
    assert cleanup_stale_records(judged).removed == ()
    assert path.exists()


def test_json_document_holds_every_fact(tmp_path: Path, children: Children) -> None:
    server = children.server(tmp_path)
    (tmp_path / "bad.json").write_bytes(b"")
    doc = render_json(tmp_path, inspect_registry(tmp_path))
    assert doc["schema_version"] == 1
    assert doc["registry"] == str(tmp_path)
    good, bad = doc["records"]
    assert good["pid"] == server.pid
    assert good["verdict"] == "alive"
    assert good["current_parent_pid"] == os.getpid()
    assert good["executable_match"] is True
    assert good["child_pids"] == []
    assert bad == {
        **{key: None for key in good if key not in ("record", "verdict", "reason")},
        "record": f"{tmp_path}/bad.json",
        "verdict": "corrupt",
        "reason": "empty file",
        "alive": False,
        "child_pids": [],
        "stale_client": False,
        "zombie": False,
        "pid_reused": False,
    }


def test_one_snapshot_serves_every_record(tmp_path: Path, children: Children) -> None:
    servers = [children.server(tmp_path) for _ in range(3)]
    table = ProcessTable.snapshot()
    judged = inspect_registry(tmp_path, table)
    assert [item.entry.record.pid for item in judged if item.entry.record] == sorted(
        server.pid for server in servers
    )
    assert all(item.alive for item in judged)
    for server in servers:
        info = table.get(server.pid)
        assert info is not None
        assert info.create_time == psutil.Process(server.pid).create_time()


def test_a_registry_others_can_write_gets_no_kill_suggestion(
    tmp_path: Path, children: Children
) -> None:
    server = children.orphaned_server(tmp_path)
    tmp_path.chmod(0o777)
    judged = only(tmp_path)
    assert judged.stale_client is True
    assert judged.foreign_registry == "writable_by_others"
    assert render_lines(judged)[1:] == ["  foreign_registry=writable_by_others"]
    assert server.is_running()  # judged, never signalled


def test_a_record_cannot_forge_doctor_lines() -> None:
    forged = ProcessRecord(7, "/x", "/\n  exact_terminate=kill -TERM 1", 1, None, None, "stdio\t")
    lines = render_lines(JudgedRecord(RegistryEntry("/reg/7\x1b.json", forged, None, None)))
    assert lines[0].count("\n") == 0
    assert " cwd=/\\n  exact_terminate=kill -TERM 1 " in lines[0]
    assert " transport=stdio\\t " in lines[0]
    assert lines[0].endswith(" record=/reg/7\\x1b.json")
    assert lines[1:] == [f"  stale_record_cleanup={CLEANUP_HINT}"]
