"""The record's wire format, the registry directory, and register_server_process."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_leanhost.record import (
    REGISTRY_ENV,
    ProcessRecord,
    RecordError,
    RegistryError,
    register_server_process,
    registry_dir,
)

# What lean-host-mcp (serde_json::to_vec_pretty) writes for these values, byte for byte:
# two-space indent, ": ", wire order, non-ASCII as UTF-8, control characters escaped
# (short escapes where JSON has them, \u00XX in lowercase hex otherwise), no final newline.
RUST_HTTP_RECORD = (
    b"{\n"
    b'  "pid": 4242,\n'
    b'  "executable": "/opt/lean-host-mcp/bin/lean-host-mcp",\n'
    b'  "cwd": "/home/u/proj \xc3\xa9t\xc3\xa9 \\"q\\" \\\\ \\t\\u001f",\n'
    b'  "started_unix_millis": 1764000000123,\n'
    b'  "parent_pid_at_start": 4200,\n'
    b'  "process_group_id": 4200,\n'
    b'  "transport": "http",\n'
    b'  "bind": "127.0.0.1:8765",\n'
    b'  "http_path": "/mcp"\n'
    b"}"
)
RUST_STDIO_RECORD = (
    b"{\n"
    b'  "pid": 7,\n'
    b'  "executable": "/usr/bin/lean-host-mcp",\n'
    b'  "cwd": "/",\n'
    b'  "started_unix_millis": 0,\n'
    b'  "parent_pid_at_start": null,\n'
    b'  "process_group_id": null,\n'
    b'  "transport": "stdio",\n'
    b'  "bind": null,\n'
    b'  "http_path": null\n'
    b"}"
)


def test_rust_records_round_trip_byte_for_byte() -> None:
    for data in (RUST_HTTP_RECORD, RUST_STDIO_RECORD):
        assert ProcessRecord.from_json_bytes(data).to_json_bytes() == data


def test_rust_record_fields_are_read_exactly() -> None:
    record = ProcessRecord.from_json_bytes(RUST_HTTP_RECORD)
    assert record == ProcessRecord(
        pid=4242,
        executable="/opt/lean-host-mcp/bin/lean-host-mcp",
        cwd='/home/u/proj été "q" \\ \t\x1f',
        started_unix_millis=1764000000123,
        parent_pid_at_start=4200,
        process_group_id=4200,
        transport="http",
        bind="127.0.0.1:8765",
        http_path="/mcp",
    )


def test_optional_fields_may_be_missing_and_unknown_fields_are_ignored() -> None:
    data = (
        b'{"pid": 1, "executable": "/x", "cwd": "/", "started_unix_millis": 340282366920938463463'
        b'374607431768211455, "transport": "stdio", "future_field": [1, {"a": null}]}'
    )
    record = ProcessRecord.from_json_bytes(data)
    assert record.parent_pid_at_start is None
    assert record.process_group_id is None
    assert record.bind is None
    assert record.http_path is None
    assert record.started_unix_millis == 2**128 - 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b'{"pid": 1', "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "not a JSON object but an array"),
        (b'{"executable": "/x"}', "missing field `pid`"),
        (b'{"pid": -1}', "field `pid` is -1, out of range for u32"),
        (b'{"pid": 4294967296}', "out of range for u32"),
        (b'{"pid": 1.0}', "field `pid` is a number, expected u32"),
        (b'{"pid": true}', "field `pid` is a boolean, expected u32"),
        (b'{"pid": "1"}', "field `pid` is a string, expected u32"),
        (b'{"pid": 1, "pid": 2}', "duplicate field `pid`"),
        (
            b'{"pid": 1, "executable": 5, "cwd": "/", "started_unix_millis": 1, "transport": "x"}',
            "field `executable` is a number, expected a string",
        ),
        (
            b'{"pid": 1, "executable": "\\ud800", "cwd": "/", "started_unix_millis": 1,'
            b' "transport": "x"}',
            "lone surrogate",
        ),
        (
            b'{"pid": 1, "executable": "/x", "cwd": "/", "started_unix_millis": 1,'
            b' "transport": "stdio", "bind": 80}',
            "field `bind` is a number",
        ),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_invalid_records_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RecordError, match=re.escape(reason)):
        ProcessRecord.from_json_bytes(data)


def test_registry_dir_prefers_the_environment_variable(tmp_path: Path) -> None:
    assert registry_dir({REGISTRY_ENV: str(tmp_path)}) == tmp_path


def test_registry_dir_defaults_to_the_user_cache(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "HOME": str(tmp_path / "home")}
    code = "from pytest_leanhost.record import registry_dir; print(registry_dir())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(tmp_path / "lean-host-mcp" / "processes")


def test_an_empty_registry_variable_is_an_error() -> None:
    with pytest.raises(RegistryError, match=f"{REGISTRY_ENV} is set but empty"):
        registry_dir({REGISTRY_ENV: ""})


def test_register_writes_every_field_as_the_rust_server_does(tmp_path: Path) -> None:
    registry = tmp_path / "a" / "registry"
    with register_server_process("http", "127.0.0.1:9", "/mcp", registry=registry) as reg:
        assert stat.S_IMODE(registry.stat().st_mode) == 0o700
        data = (registry / f"{os.getpid()}.json").read_bytes()
        record = ProcessRecord.from_json_bytes(data)
        assert data == record.to_json_bytes()
        assert reg.record == record
        assert record.pid == os.getpid()
        if sys.platform.startswith("linux"):
            assert record.executable == os.readlink("/proc/self/exe")
        else:
            assert record.executable == os.path.realpath(sys.executable)
        assert record.cwd == os.getcwd()
        assert record.parent_pid_at_start == os.getppid()
        assert record.process_group_id == os.getpgrp()
        assert (record.transport, record.bind, record.http_path) == ("http", "127.0.0.1:9", "/mcp")
        assert os.listdir(registry) == [f"{os.getpid()}.json"]  # no temporary file left
    assert not reg.path.exists()


def test_close_tolerates_a_record_already_removed(tmp_path: Path) -> None:
    reg = register_server_process("stdio", registry=tmp_path)
    reg.path.unlink()
    reg.close()
    reg.close()
    assert reg.closed


def _run_registering_child(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    code = textwrap.dedent(
        """
        import sys, time
        from pytest_leanhost.record import register_server_process
        reg = register_server_process("stdio", registry=sys.argv[1], **KWARGS)
        print("ready", flush=True)
        BODY
        """
    )
    code = code.replace("BODY", body)
    code = code.replace("**KWARGS", "install_signal_handlers='sig' in sys.argv[2:]")
    return subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), *(["sig"] if "sleep" in body else [])],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_record_is_removed_at_interpreter_exit(tmp_path: Path) -> None:
    with _run_registering_child(tmp_path, "sys.exit(0)") as child:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        assert child.wait(10) == 0
    assert os.listdir(tmp_path) == []


def test_record_is_removed_on_sigterm_when_asked_and_sigterm_still_ends_it(
    tmp_path: Path,
) -> None:
    with _run_registering_child(tmp_path, "time.sleep(60)") as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            assert os.listdir(tmp_path) == [f"{child.pid}.json"]
            child.send_signal(signal.SIGTERM)
            assert child.wait(10) == -signal.SIGTERM
        finally:
            child.kill()
    assert os.listdir(tmp_path) == []
