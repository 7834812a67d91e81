"""Scanning a registry: every bad file is diagnosed and the good records around it still listed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_leanhost.core.doctor import inspect_registry, render_text
from pytest_leanhost.core.registry import RegistryUnreadableError, scan_registry
from pytest_leanhost.record import MAX_RECORD_BYTES, ProcessRecord

GOOD = ProcessRecord(123456789, "/bin/server", "/", 1, None, None, "stdio")


def write_bad_files(registry: Path) -> dict[str, str]:
    """Plant one file per kind of damage; returns file name -> expected reason fragment."""
    outside = registry.parent / "outside.json"
    outside.write_bytes(GOOD.to_json_bytes())
    (registry / "empty.json").write_bytes(b"")
    (registry / "truncated.json").write_bytes(GOOD.to_json_bytes()[:40])
    (registry / "text.json").write_bytes(b"hello")
    (registry / "types.json").write_bytes(b'{"pid": "12", "executable": "/x"}')
    (registry / "latin1.json").write_bytes(b'{"cwd": "caf\xe9"}')
    (registry / "huge.json").write_bytes(b" " * (MAX_RECORD_BYTES + 1))
    (registry / "link.json").symlink_to(outside)
    (registry / "dangling.json").symlink_to(registry / "nowhere")
    (registry / "loop.json").symlink_to(registry / "loop.json")
    (registry / "dir.json").mkdir()
    os.mkfifo(registry / "fifo.json")
    return {
        "empty.json": "empty file",
        "truncated.json": "not JSON",
        "text.json": "not JSON",
        "types.json": "field `pid` is a string, expected u32",
        "latin1.json": "not UTF-8",
        "huge.json": f"larger than {MAX_RECORD_BYTES} bytes",
        "link.json": "symlink (not followed)",
        "dangling.json": "symlink (not followed)",
        "loop.json": "symlink (not followed)",
        "dir.json": "a directory, not a file",
        "fifo.json": "not a regular file",
    }


def test_every_bad_file_is_diagnosed_and_good_records_are_all_listed(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    expected = write_bad_files(registry)
    good_pids = [7, 1_000_000, 123456789]
    for pid in good_pids:
        record = ProcessRecord(**{**GOOD.__dict__, "pid": pid})
        (registry / f"{pid}.json").write_bytes(record.to_json_bytes())
    (registry / "ignored.txt").write_text("not a record name")
    (registry / ".json").write_text("no extension, as Rust sees it")
    (registry / ".7.json.abc.tmp").write_text("a record being written")

    judged = inspect_registry(registry)

    assert [item.entry.record.pid for item in judged if item.entry.record] == good_pids
    reasons = {
        os.path.basename(item.path): item.entry.problem
        for item in judged
        if item.verdict == "corrupt"
    }
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in str(reasons[name]), name
    text = render_text(judged)
    assert f"record={registry}/dir.json\n  corrupt_record=a directory, not a file\n" in text
    assert (registry.parent / "outside.json").exists()


def test_a_missing_registry_has_no_records(tmp_path: Path) -> None:
    assert scan_registry(tmp_path / "absent") == []


def test_a_file_where_the_registry_should_be_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(RegistryUnreadableError, match="not a directory"):
        scan_registry(tmp_path / "file")


def test_the_record_path_is_the_registry_joined_with_the_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "7.json").write_bytes(GOOD.to_json_bytes())
    monkeypatch.chdir(tmp_path.parent)
    entries = scan_registry(f"{tmp_path.name}/")
    assert [entry.path for entry in entries] == [f"{tmp_path.name}/7.json"]
