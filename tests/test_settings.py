"""Settings validation in-process: each bad value is its own one-line usage error.

``pytester.parseconfig`` builds a real ``pytest.Config`` with the plugin's options
in this process (no subprocess), so every case costs milliseconds; the end-to-end
check that such an error stops a real run before any test is in test_plugin_options.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_leanhost.plugin.settings import Settings, read_settings, split_command


def settings_of(pytester: pytest.Pytester, *args: str) -> Settings:
    """Parse ``args`` as a command line with the plugin loaded, and read its settings."""
    return read_settings(pytester.parseconfig("-p", "leanhost", *args))


def usage_error(pytester: pytest.Pytester, *args: str) -> str:
    """The one line of the usage error that ``args`` give."""
    with pytest.raises(pytest.UsageError) as caught:
        settings_of(pytester, *args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_defaults_are_the_documented_ones(pytester: pytest.Pytester) -> None:
    assert settings_of(pytester) == Settings()


def test_every_value_is_read(pytester: pytest.Pytester, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    settings = settings_of(
        pytester,
        "--leanhost-doctor",
        "--leanhost-keep-leaks",
        f"--leanhost-report={report}",
        "--leanhost-server-cmd=lean-host-mcp serve --flag 'a b'",
        "-o",
        "leanhost_isolate=false",
        "-o",
        "leanhost_ready_timeout=2.5",
        "-o",
        "leanhost_shutdown_timeout=3",
        "-o",
        "leanhost_grace=0",
        "-o",
        "leanhost_earlier_sessions=terminate",
        "--leanhost-check=test",
    )
    assert settings == Settings(
        check="test",
        earlier_sessions="terminate",
        doctor=True,
        report_path=str(report),
        server_command=("lean-host-mcp", "serve", "--flag", "a b"),
        keep_leaks=True,
        isolate=False,
        ready_timeout=2.5,
        shutdown_timeout=3.0,
        grace=0.0,
    )


def test_the_check_option_wins_over_the_ini_value(pytester: pytest.Pytester) -> None:
    assert settings_of(pytester, "-o", "leanhost_check=test").check == "test"
    assert settings_of(pytester, "-o", "leanhost_check=test", "--leanhost-check=session").check == (
        "session"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--leanhost-check=bogus",),
            "leanhost: --leanhost-check 'bogus' must be one of session, test",
        ),
        (
            ("-o", "leanhost_check=per-test"),
            "leanhost: leanhost_check = 'per-test' must be one of session, test",
        ),
    ],
)
def test_a_bad_check_mode_is_a_one_line_usage_error(
    pytester: pytest.Pytester, args: tuple[str, ...], message: str
) -> None:
    assert usage_error(pytester, *args) == message


def test_the_option_wins_over_the_ini_command(pytester: pytest.Pytester) -> None:
    args = ("-o", "leanhost_server_command=from-ini", "--leanhost-server-cmd", "from-option")
    assert settings_of(pytester, *args).server_command == ("from-option",)
    assert settings_of(pytester, *args[:2]).server_command == ("from-ini",)


def test_a_blank_ini_command_means_the_reference_server(pytester: pytest.Pytester) -> None:
    assert settings_of(pytester, "-o", "leanhost_server_command=   ").server_command is None


@pytest.mark.parametrize("name", ["leanhost_ready_timeout", "leanhost_shutdown_timeout"])
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("soon", "leanhost: {name} = 'soon' is not a number of seconds"),
        ("", "leanhost: {name} = '' is not a number of seconds"),
        ("-1", "leanhost: {name} = '-1' must be more than zero seconds"),
        ("0", "leanhost: {name} = '0' must be more than zero seconds"),
        ("inf", "leanhost: {name} = 'inf' must be more than zero seconds"),
        ("nan", "leanhost: {name} = 'nan' must be more than zero seconds"),
    ],
)
def test_a_bad_timeout_is_a_one_line_usage_error(
    pytester: pytest.Pytester, name: str, raw: str, message: str
) -> None:
    assert usage_error(pytester, "-o", f"{name}={raw}") == message.format(name=name)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("-0.5", "leanhost: leanhost_grace = '-0.5' must be zero or more seconds"),
        ("inf", "leanhost: leanhost_grace = 'inf' must be zero or more seconds"),
        ("a while", "leanhost: leanhost_grace = 'a while' is not a number of seconds"),
    ],
)
def test_a_bad_grace_is_a_one_line_usage_error(
    pytester: pytest.Pytester, raw: str, message: str
) -> None:
    assert usage_error(pytester, "-o", f"leanhost_grace={raw}") == message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--leanhost-server-cmd", "python '-m"],
            'leanhost: --leanhost-server-cmd "python \'-m" cannot be split: No closing quotation',
        ),
        (["--leanhost-server-cmd", ""], "leanhost: --leanhost-server-cmd is empty"),
        (["--leanhost-server-cmd", "  "], "leanhost: --leanhost-server-cmd is empty"),
        (
            ["-o", "leanhost_server_command=python '-m"],
            'leanhost: ini leanhost_server_command "python \'-m" cannot be split:'
            " No closing quotation",
        ),
    ],
)
def test_a_bad_server_command_is_a_one_line_usage_error(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    assert usage_error(pytester, *args) == message


def test_a_report_in_a_missing_directory_is_a_one_line_usage_error(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    report = tmp_path / "missing" / "report.json"
    assert usage_error(pytester, "--leanhost-report", str(report)) == (
        f"leanhost: --leanhost-report {report}: directory {report.parent} does not exist"
    )


@pytest.mark.parametrize(
    ("value", "parts"),
    [("a", ("a",)), ("a 'b c' d\\ e", ("a", "b c", "d e")), ("  x  ", ("x",))],
)
def test_split_command_splits_like_a_shell(value: str, parts: tuple[str, ...]) -> None:
    assert split_command(value, "src") == parts


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "leanhost: src is empty"),
        ("\t\n", "leanhost: src is empty"),
        ('say "hi', "leanhost: src 'say \"hi' cannot be split: No closing quotation"),
        ("trailing\\", "leanhost: src 'trailing\\\\' cannot be split: No escaped character"),
    ],
)
def test_split_command_refuses_with_one_line(value: str, message: str) -> None:
    with pytest.raises(pytest.UsageError) as caught:
        split_command(value, "src")
    assert str(caught.value) == message


def test_a_bad_earlier_sessions_mode_is_a_one_line_usage_error(pytester: pytest.Pytester) -> None:
    assert usage_error(pytester, "-o", "leanhost_earlier_sessions=kill") == (
        "leanhost: leanhost_earlier_sessions = 'kill' must be one of report, fail, terminate"
    )
