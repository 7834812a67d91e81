"""The ``leanhost doctor processes`` command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pytest_leanhost.record import REGISTRY_ENV, ProcessRecord
from tests.children import Children

DEAD_PID = 4_000_000  # above Linux's pid_max: never a live process


def leanhost(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_leanhost.core.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def dead_record(registry: Path) -> Path:
    registry.mkdir(exist_ok=True)
    path = registry / f"{DEAD_PID}.json"
    path.write_bytes(ProcessRecord(DEAD_PID, "/x", "/", 1, None, None, "stdio").to_json_bytes())
    return path


def test_listing_exits_zero_whatever_it_finds(tmp_path: Path) -> None:
    path = dead_record(tmp_path)
    result = leanhost("doctor", "processes", "--registry", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"pid={DEAD_PID} alive=false ")
    assert result.stdout.endswith(
        f" record={path}\n  stale_record_cleanup=lean-host-mcp doctor "
        "processes --cleanup-stale-records\n"
    )
    assert path.exists()


def test_the_registry_comes_from_the_environment_by_default(tmp_path: Path) -> None:
    dead_record(tmp_path)
    result = leanhost("doctor", "processes", env={REGISTRY_ENV: str(tmp_path)})
    assert f"record={tmp_path}/{DEAD_PID}.json" in result.stdout


def test_check_fails_on_a_stale_record_and_passes_on_a_live_one(
    tmp_path: Path, children: Children
) -> None:
    children.server(tmp_path)
    assert leanhost("doctor", "processes", "--check", "--registry", str(tmp_path)).returncode == 0
    dead_record(tmp_path)
    assert leanhost("doctor", "processes", "--check", "--registry", str(tmp_path)).returncode == 1


def test_cleanup_removes_stale_records_and_says_so_on_stderr(
    tmp_path: Path, children: Children
) -> None:
    live = children.server(tmp_path)
    path = dead_record(tmp_path)
    result = leanhost("doctor", "processes", "--cleanup-stale-records", "--registry", str(tmp_path))
    assert result.returncode == 0
    assert result.stderr == f"removed stale process record {path}\n"
    assert os.listdir(tmp_path) == [f"{live.pid}.json"]


def test_json_output_is_one_document(tmp_path: Path) -> None:
    dead_record(tmp_path)
    doc = json.loads(leanhost("doctor", "processes", "--json", "--registry", str(tmp_path)).stdout)
    assert doc["schema_version"] == 1
    assert doc["registry"] == str(tmp_path)
    assert [(r["pid"], r["verdict"]) for r in doc["records"]] == [(DEAD_PID, "stale")]


def test_an_unreadable_registry_exits_one_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = leanhost("doctor", "processes", "--registry", str(tmp_path / "file"))
    assert result.returncode == 1
    assert result.stderr == (
        f"leanhost: error: cannot read process registry {tmp_path / 'file'}: not a directory\n"
    )
    assert result.stdout == ""


def test_an_empty_registry_variable_is_a_clear_error() -> None:
    result = leanhost("doctor", "processes", env={REGISTRY_ENV: ""})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"leanhost: error: {REGISTRY_ENV} is set but empty; unset it or name a directory"
    ]


def test_a_bad_option_is_a_usage_error() -> None:
    result = leanhost("doctor", "processes", "--no-such-option")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-option" in result.stderr


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "leanhost"
    result = subprocess.run(
        [str(script), "doctor", "processes", "--help"], capture_output=True, text=True, check=True
    )
    assert "--cleanup-stale-records" in result.stdout
