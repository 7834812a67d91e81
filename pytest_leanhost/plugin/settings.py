"""The plugin's settings: every option and ini value, read and validated in one place.

A bad value (a negative timeout, a command that cannot be split, a report path
in a missing directory) is a usage error with one clear line, before any test runs.
"""

from __future__ import annotations

import math
import os
import shlex
from typing import Literal, NamedTuple, cast

import pytest

from pytest_leanhost.client.rules import ALL_RULES
from pytest_leanhost.client.rules import parse_rules as parse

#: The readiness modes (``pytest_leanhost.client.spawn.READY_MODES``, kept light here).
READY_MODES = ("record", "initialize", "port", "auto")
#: What to do about what an earlier, killed run left (``plugin.earlier_sessions``).
EARLIER_MODES = ("report", "fail", "terminate")
#: When leaks are judged: once at session end, or each test right after its teardown too.
CheckMode = Literal["session", "test"]
CHECK_MODES: tuple[CheckMode, ...] = ("session", "test")

__all__ = ["DEFAULT_SETTINGS", "SETTINGS_KEY", "Settings", "add_options", "read_settings"]


class Settings(NamedTuple):
    """What the options and ini values say, validated."""

    doctor: bool = False
    report_path: str | None = None
    server_command: tuple[str, ...] | None = None
    keep_leaks: bool = False
    isolate: bool = True
    ready_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    grace: float = 1.0
    ready: str = "auto"
    contract_rules: tuple[int, ...] = ALL_RULES
    earlier_sessions: str = "report"
    subreaper: bool = True
    watch_registries: tuple[str, ...] = ()
    check: CheckMode = "session"


#: The settings of a run without the plugin (fixtures imported into a conftest).
DEFAULT_SETTINGS = Settings()

SETTINGS_KEY = pytest.StashKey[Settings]()


def add_options(parser: pytest.Parser) -> None:
    """Register the ``leanhost`` option group and the ini values (settable in pyproject.toml)."""
    group = parser.getgroup("leanhost", "leanhost: prove that servers leak no process or record")
    group.addoption(
        "--leanhost-doctor",
        action="store_true",
        default=False,
        help="add a 'leanhost doctor' section to the summary: the doctor lines of every "
        "record the session saw, by test, and of the user's default registry",
    )
    group.addoption(
        "--leanhost-report",
        metavar="PATH",
        default=None,
        help="write the session-end findings as JSON to PATH (also when there are none)",
    )
    group.addoption(
        "--leanhost-server-cmd",
        metavar="CMD",
        default=None,
        help="the server command for the leanhost_server fixture, split like a shell "
        "(default: ini leanhost_server_command, else the built-in reference server)",
    )
    group.addoption(
        "--leanhost-keep-leaks",
        action="store_true",
        default=False,
        help="report leaks but do not stop leaked processes or remove records (debugging)",
    )
    group.addoption(
        "--leanhost-check",
        metavar="WHEN",
        default=None,
        help="when leaks are judged: 'session' (default: once, at session end) or 'test' "
        "(each test right after its teardown too: a leak is an error at teardown of the "
        "test that leaked; default: ini leanhost_check)",
    )
    parser.addini(
        "leanhost_check",
        "when leaks are judged: session (default) or test (each test after its teardown too)",
        default="session",
    )
    parser.addini(
        "leanhost_earlier_sessions",
        "processes an earlier run killed outright left: report (default), fail the run, "
        "or terminate them (exact PIDs, session marker checked)",
        default="report",
    )
    parser.addini(
        "leanhost_server_command",
        "server command for the leanhost_server fixture, split like a shell",
        default="",
    )
    parser.addini(
        "leanhost_isolate",
        "give every test its own registry directory (default: true)",
        type="bool",
        default=True,
    )
    parser.addini(
        "leanhost_ready_timeout",
        "seconds a server may take to register (default: 30)",
        default="30",
    )
    parser.addini(
        "leanhost_ready",
        "when a started server counts as ready: record, initialize (it answered MCP "
        "initialize), port (HTTP: the port accepts) or auto (record or initialize, "
        "whichever first; default)",
        default="auto",
    )
    parser.addini(
        "leanhost_contract_rules",
        "lifecycle rules checked at teardown: all (default: every rule that applies), "
        "none, or rule numbers from 1,2,3,5,6 (e.g. '3,5')",
        default="all",
    )
    parser.addini(
        "leanhost_shutdown_timeout",
        "seconds a server may take to exit at each rung of the shutdown ladder (default: 10)",
        default="10",
    )
    parser.addini(
        "leanhost_subreaper",
        "Linux: make pytest (and each xdist worker) a child subreaper, so every process "
        "the run starts stays its descendant and is found without markers (default: true; "
        "ignored where the OS has no subreapers)",
        type="bool",
        default=True,
    )
    parser.addini(
        "leanhost_watch_registries",
        "extra registry directories (one per line) a server could reach without the "
        "variable; the run's default registry and the HOME-only one are always watched",
        type="linelist",
        default=[],
    )
    parser.addini(
        "leanhost_grace",
        "seconds a leftover process may take to exit by itself at session end, and, "
        "with --leanhost-check=test, at each test's teardown (default: 1)",
        default="1",
    )


def read_settings(config: pytest.Config) -> Settings:
    """Read and validate every option; raises ``pytest.UsageError`` with one line."""
    report = config.getoption("leanhost_report")
    if report is not None:
        directory = os.path.dirname(os.path.abspath(report))
        if not os.path.isdir(directory):
            raise pytest.UsageError(
                f"leanhost: --leanhost-report {report}: directory {directory} does not exist"
            )
    return Settings(
        doctor=bool(config.getoption("leanhost_doctor")),
        report_path=report,
        server_command=_server_command(config),
        keep_leaks=bool(config.getoption("leanhost_keep_leaks")),
        isolate=bool(config.getini("leanhost_isolate")),
        ready_timeout=_seconds(config, "leanhost_ready_timeout", allow_zero=False),
        shutdown_timeout=_seconds(config, "leanhost_shutdown_timeout", allow_zero=False),
        grace=_seconds(config, "leanhost_grace", allow_zero=True),
        ready=_ready(config),
        contract_rules=_rules(config),
        earlier_sessions=_choice(config, "leanhost_earlier_sessions", EARLIER_MODES),
        subreaper=bool(config.getini("leanhost_subreaper")),
        watch_registries=tuple(
            os.path.expanduser(str(line)) for line in config.getini("leanhost_watch_registries")
        ),
        check=_check_mode(config),
    )


def _check_mode(config: pytest.Config) -> CheckMode:
    option = config.getoption("leanhost_check")
    if option is None:
        return cast(CheckMode, _choice(config, "leanhost_check", CHECK_MODES))
    if option not in CHECK_MODES:
        raise pytest.UsageError(
            f"leanhost: --leanhost-check {option!r} must be one of {', '.join(CHECK_MODES)}"
        )
    return cast(CheckMode, option)


def _choice(config: pytest.Config, name: str, choices: tuple[str, ...]) -> str:
    raw = str(config.getini(name)).strip()
    if raw not in choices:
        raise pytest.UsageError(f"leanhost: {name} = {raw!r} must be one of {', '.join(choices)}")
    return raw


def _ready(config: pytest.Config) -> str:
    raw = str(config.getini("leanhost_ready")).strip()
    if raw not in READY_MODES:
        raise pytest.UsageError(
            f"leanhost: leanhost_ready = {raw!r} must be one of {', '.join(READY_MODES)}"
        )
    return raw


def parse_rules(value: object, source: str) -> tuple[int, ...]:
    """``all``/None: every rule; ``none``: none; numbers: those; else a usage error."""
    try:
        return parse(value)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise pytest.UsageError(f"leanhost: {source}: {exc}") from None


def _rules(config: pytest.Config) -> tuple[int, ...]:
    raw = str(config.getini("leanhost_contract_rules"))
    return parse_rules(raw, f"leanhost_contract_rules = {raw.strip()!r}")


def _server_command(config: pytest.Config) -> tuple[str, ...] | None:
    option = config.getoption("leanhost_server_cmd")
    if option is not None:
        return split_command(option, "--leanhost-server-cmd")
    ini = str(config.getini("leanhost_server_command") or "")
    if ini.strip():
        return split_command(ini, "ini leanhost_server_command")
    return None


def split_command(value: str, source: str) -> tuple[str, ...]:
    """Split a command like a shell; one that cannot be split, or is empty, is a usage error."""
    try:
        parts = shlex.split(value)
    except ValueError as exc:
        raise pytest.UsageError(f"leanhost: {source} {value!r} cannot be split: {exc}") from None
    if not parts:
        raise pytest.UsageError(f"leanhost: {source} is empty")
    return tuple(parts)


def _seconds(config: pytest.Config, name: str, *, allow_zero: bool) -> float:
    raw = str(config.getini(name)).strip()
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"leanhost: {name} = {raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise pytest.UsageError(f"leanhost: {name} = {raw!r} must be {bound} seconds")
    return value
