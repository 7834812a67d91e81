"""The fixtures: a test's registry, the server command, a server factory, and a doctor.

They work with the plugin active (``pytest -p leanhost``), where the registry
is the test's own directory under the session root and the session-end check
sees everything; and imported alone into a conftest
(``from pytest_leanhost import leanhost_server, leanhost_registry``), where the
registry is a private temporary directory and there is no session-end check.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_leanhost.core.ownership import NODEID_ENV
from pytest_leanhost.plugin.settings import DEFAULT_SETTINGS, SETTINGS_KEY, Settings
from pytest_leanhost.record import REGISTRY_ENV

if TYPE_CHECKING:  # the fixtures load these only when used, to keep `-p leanhost` light
    from pytest_leanhost.client.contract import Violation
    from pytest_leanhost.client.spawn import ServerProcess, StopResult
    from pytest_leanhost.core.doctor import CleanupResult
    from pytest_leanhost.core.probe import JudgedRecord
from pytest_leanhost.plugin.state import STATE_KEY

__all__ = [
    "RegistryDoctor",
    "ServerFactory",
    "leanhost_doctor",
    "leanhost_env",
    "leanhost_registry",
    "leanhost_server",
    "leanhost_server_command",
    "reference_server_command",
]


def reference_server_command() -> list[str]:
    """The built-in reference server, run with the current Python."""
    return [sys.executable, "-m", "pytest_leanhost.refserver"]


def _settings(config: pytest.Config) -> Settings:
    return config.stash.get(SETTINGS_KEY, DEFAULT_SETTINGS)


@pytest.fixture
def leanhost_registry(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's own registry directory (a ``pathlib.Path``, created, mode 0700).

    ``LEAN_HOST_MCP_PROCESS_REGISTRY_DIR`` points at it for the test, so every
    server the test starts registers there. With the plugin active it is the
    test's directory under the session root, checked at session end (also when
    ``leanhost_isolate = false``); without it, a fresh temporary directory.
    """
    state = request.config.stash.get(STATE_KEY, None)
    if state is not None:
        path = state.registry_for(request.node.nodeid, create=True)
    else:
        # Asked for only here: with the plugin on, ``-p no:tmpdir`` leaves this fixture working.
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        path = factory.mktemp("leanhost-registry")
        path.chmod(0o700)
    monkeypatch.setenv(REGISTRY_ENV, str(path))
    return path


@pytest.fixture
def leanhost_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The variables to hand to a launcher that builds its own environment (``dict[str, str]``).

    This test's registry variable and the ownership markers, as
    :func:`pytest_leanhost.child_env` gives them during the test. Pass it as the
    MCP SDKs' stdio ``env`` (``StdioServerParameters(command=..., env=leanhost_env)``),
    so the server registers in the test's own registry and carries its markers.
    """
    from pytest_leanhost.core.child_env import child_env

    env = child_env()
    state = request.config.stash.get(STATE_KEY, None)
    if state is not None and _settings(request.config).isolate:
        env[REGISTRY_ENV] = state.registry_path(request.node.nodeid)
    return env


@pytest.fixture
def leanhost_server_command(request: pytest.FixtureRequest) -> list[str]:
    """The server command that ``leanhost_server`` starts, as a list of strings.

    In order: ``--leanhost-server-cmd`` (split like a shell), the ini option
    ``leanhost_server_command``, else the reference server
    (``python -m pytest_leanhost.refserver``). Override this fixture to test
    your own server.
    """
    command = _settings(request.config).server_command
    return list(command) if command else reference_server_command()


class ServerFactory:
    """Starts servers in the test's registry and checks each against the contract at the end.

    Call it: ``leanhost_server(*extra_args, transport="stdio", env=None, cwd=None,
    ready=None, port_env=None, http_path=None, rules=None)`` returns a started, ready
    :class:`~pytest_leanhost.client.spawn.ServerProcess`.
    """

    def __init__(self, command: list[str], registry: Path, nodeid: str, settings: Settings) -> None:
        self.command = command
        self.registry = registry
        self.nodeid = nodeid
        self.settings = settings
        self.servers: list[ServerProcess] = []
        self._rules: dict[int, tuple[int, ...]] = {}  # server pid -> rules to check

    def __call__(
        self,
        *extra_args: str,
        transport: str = "stdio",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready: str | Callable[[ServerProcess], bool] | None = None,
        port_env: str | None = None,
        http_path: str | None = None,
        rules: str | Iterable[int] | None = None,
    ) -> ServerProcess:
        if transport not in ("stdio", "http"):
            raise ValueError(f"transport must be 'stdio' or 'http', not {transport!r}")
        from pytest_leanhost.client.spawn import ServerStartError, spawn_server

        __tracebackhide__ = True
        chosen = self.settings.contract_rules if rules is None else _per_call_rules(rules)
        try:
            server = spawn_server(
                [*self.command, *extra_args],
                transport=transport,  # type: ignore[arg-type]
                registry=self.registry,
                env={NODEID_ENV: self.nodeid, **(env or {})},
                cwd=cwd,
                ready_timeout=self.settings.ready_timeout,
                ready=self.settings.ready if ready is None else ready,  # type: ignore[arg-type]
                port_env=port_env,
                http_path=http_path,
            )
        except ServerStartError as exc:
            hint = " (ini leanhost_ready_timeout)" if exc.reason == "timeout" else ""
            pytest.fail(f"leanhost: {exc}{hint}", pytrace=False)
        self.servers.append(server)
        self._rules[server.pid] = chosen
        return server

    def stop_all(self) -> list[str]:
        """Stop every server by the shutdown ladder; return each contract violation.

        Every server gets its stop even when stopping another one raised (a
        timeout plugin firing in teardown, Ctrl-C); the first such error is
        raised again once all are stopped.
        """
        from pytest_leanhost.client.contract import check_running

        problems: list[str] = []
        interrupted: BaseException | None = None
        for server in reversed(self.servers):
            rules = self._rules.get(server.pid, self.settings.contract_rules)
            try:
                # Rule: listening sockets are read while the server still runs.
                running = check_running(server, rules)  # type: ignore[arg-type]
                result = server.stop(self.settings.shutdown_timeout)
            except BaseException as exc:
                interrupted = interrupted or exc
                continue
            problems.extend(
                contract_violations(
                    server, result, self.settings.shutdown_timeout, rules, running=running
                )
            )
        if interrupted is not None:
            raise interrupted
        return problems


def _per_call_rules(rules: str | Iterable[int]) -> tuple[int, ...]:
    from pytest_leanhost.client.contract import parse_rules

    try:
        return parse_rules(rules)
    except ValueError as exc:
        raise ValueError(f"leanhost_server(rules=...): {exc}") from None


def contract_violations(
    server: ServerProcess,
    result: StopResult,
    timeout: float,
    rules: Iterable[int] | None = None,
    *,
    running: Iterable[Violation] = (),
) -> list[str]:
    """What a stopped server did against the selected rules, one line per violation.

    Each line names the rule, the PID and what was seen, then the server's stderr tail.
    """
    from pytest_leanhost.client.contract import ALL_RULES, check_stopped

    chosen = ALL_RULES if rules is None else tuple(rules)
    found = [*running, *check_stopped(server, result, timeout, chosen)]  # type: ignore[arg-type]
    problems = [_line(server, violation) for violation in found]
    if problems:
        tail = server.stderr_tail().rstrip()
        problems.append("stderr tail:\n" + (tail if tail else "  (empty)"))
    return problems


def _line(server: ServerProcess, violation: Violation) -> str:
    """``rule N: server pid=P (transport) what was seen``; a worker's PID is named as one."""
    who = f"server pid={server.pid}"
    if violation.pid != server.pid:
        who = f"pid={violation.pid} (worker of server pid={server.pid})"
    return f"rule {violation.rule}: {who} ({server.transport}) {violation.seen}"


@pytest.fixture
def leanhost_server(
    request: pytest.FixtureRequest, leanhost_registry: Path
) -> Iterator[ServerFactory]:
    """A factory that starts real servers: ``leanhost_server(*args, transport="stdio")``.

    Each call starts ``leanhost_server_command`` plus ``args`` in the test's
    registry (``transport="http"``: on a free loopback port), waits until the
    server registers, and returns its ``ServerProcess`` (an MCP client:
    ``initialize()``, ``list_tools()``, ``call_tool()``...). At teardown every
    server is stopped by the lifecycle contract's ladder; one that breaks a
    rule (no exit on stdin EOF or SIGTERM in time, a record left behind, a
    worker that outlives it) fails the test with an error naming the rule.
    """
    try:
        command = request.getfixturevalue("leanhost_server_command")
    except pytest.FixtureLookupError:  # imported alone into a conftest
        command = _settings(request.config).server_command or reference_server_command()
    factory = ServerFactory(
        list(command), leanhost_registry, request.node.nodeid, _settings(request.config)
    )
    yield factory
    problems = factory.stop_all()
    if problems:
        pytest.fail(
            "leanhost: server broke the lifecycle contract:\n" + "\n".join(problems), pytrace=False
        )


class RegistryDoctor:
    """The doctor for the test's registry (or any other): judge, show, clean, assert."""

    def __init__(self, registry: Path) -> None:
        self.registry = registry

    def inspect(self, registry: str | os.PathLike[str] | None = None) -> list[JudgedRecord]:
        """Judge every record of the registry against one process-table snapshot."""
        from pytest_leanhost.core.doctor import inspect_registry

        return inspect_registry(self.registry if registry is None else registry)

    def text(self, registry: str | os.PathLike[str] | None = None) -> str:
        """The doctor lines, exactly as ``leanhost doctor processes`` prints them."""
        from pytest_leanhost.core.doctor import render_text

        return render_text(self.inspect(registry))

    def cleanup(self, registry: str | os.PathLike[str] | None = None) -> CleanupResult:
        """Remove the records of dead or reused PIDs (never anything else)."""
        from pytest_leanhost.core.doctor import cleanup_stale_records

        return cleanup_stale_records(self.inspect(registry))

    def assert_clean(self, registry: str | os.PathLike[str] | None = None) -> None:
        """Fail with the doctor lines if any record is stale, orphaned, reused or corrupt."""
        from pytest_leanhost.core.doctor import render_text

        judged = self.inspect(registry)
        if any(item.is_problem for item in judged):
            pytest.fail("leanhost: registry is not clean:\n" + render_text(judged), pytrace=False)


@pytest.fixture
def leanhost_doctor(leanhost_registry: Path) -> RegistryDoctor:
    """The doctor for this test's registry: ``inspect()``, ``text()``, ``cleanup()``,
    ``assert_clean()``; each takes another registry directory as an optional argument."""
    return RegistryDoctor(leanhost_registry)
