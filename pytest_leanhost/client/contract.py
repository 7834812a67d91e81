"""The lifecycle contract, checked from outside, for any MCP server (no pytest here).

Each rule is judged from what the OS and the stop showed: the record (rules 1 and 2,
only for a server that registered), the exit on stdin EOF (rule 3, stdio), SIGTERM and
loopback-only listening sockets (rule 5, HTTP), and workers that outlive their server
(rule 6). Rules 4 and 7 are not teardown checks and are not selectable here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pytest_leanhost.client.rules import ALL_RULES, Rule, parse_rules
from pytest_leanhost.core.listening import listening_addresses

if TYPE_CHECKING:
    from pytest_leanhost.client.spawn import ServerProcess, StopResult

__all__ = [
    "ALL_RULES",
    "Rule",
    "Violation",
    "check_running",
    "check_stopped",
    "parse_rules",
]


@dataclasses.dataclass(frozen=True)
class Violation:
    """One rule a server broke: the rule's number, the PID concerned, and what was seen."""

    rule: Rule
    pid: int
    seen: str

    def __str__(self) -> str:
        return f"rule {self.rule}: pid {self.pid}: {self.seen}"


def _is_loopback(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_running(server: ServerProcess, rules: Iterable[Rule] = ALL_RULES) -> list[Violation]:
    """What can only be seen while the server runs: rule 5's loopback-only listening sockets.

    Every listening socket of the server's whole process tree that is not on a loopback
    address (``0.0.0.0`` and ``::`` included) is a violation naming the address: an MCP
    server reachable from the network is the hole MCP's specification warns about.
    """
    if 5 not in set(rules) or server.transport != "http" or server.returncode is not None:
        return []
    return [
        Violation(5, pid, f"listens on {_shown(ip, port)}, not a loopback address")
        for pid, ip, port in listening_addresses(server.pinned)
        if not _is_loopback(ip)
    ]


def _shown(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def check_stopped(
    server: ServerProcess, result: StopResult, timeout: float, rules: Iterable[Rule] = ALL_RULES
) -> list[Violation]:
    """What the stop showed, for the selected rules that apply to this server."""
    selected = set(rules)
    found: list[Violation] = []
    pid = server.pid
    registered = server.registered
    if 1 in selected and registered:
        record = server.record
        if record.transport != server.transport:
            found.append(
                Violation(
                    1,
                    pid,
                    f"record says transport {record.transport!r}, started as {server.transport!r}",
                )
            )
    if 2 in selected and registered and not result.record_removed and result.rung != "sigkill":
        # After SIGKILL a left record is not the server's doing; rule 3 or 5 says why.
        found.append(Violation(2, pid, f"did not remove its record {server.record_path}"))
    graceful = result.rung in ("stdin_eof", "sigterm")
    if 3 in selected and server.transport == "stdio":
        if result.rung in ("sigterm", "sigkill"):
            found.append(
                Violation(
                    3,
                    pid,
                    f"did not exit on stdin EOF within {timeout:g}s "
                    f"(ended by {result.rung.upper()})",
                )
            )
        elif graceful and result.returncode not in (0, None):
            found.append(Violation(3, pid, f"exited with status {result.returncode}, not 0"))
    if 5 in selected and server.transport == "http":
        if result.rung == "sigkill":
            found.append(Violation(5, pid, f"did not exit on SIGTERM within {timeout:g}s"))
        elif result.rung == "sigterm" and result.returncode == -signal.SIGTERM:
            found.append(
                Violation(
                    5,
                    pid,
                    "died of SIGTERM (no handler: no graceful shutdown), "
                    "did not exit with status 0",
                )
            )
        elif graceful and result.returncode not in (0, None):
            found.append(
                Violation(5, pid, f"exited on SIGTERM with status {result.returncode}, not 0")
            )
    if 6 in selected and result.surviving_workers:
        pids = ",".join(str(p) for p in result.surviving_workers)
        found.append(Violation(6, pid, f"left worker children alive: {pids}"))
    return found
