"""The TCP sockets a process tree listens on, read from the OS (psutil), never from its word.

Two users: the contract's rule 5 (an HTTP server listens on loopback addresses
only) and spawn's readiness by port (a port someone else took before the server
bound it is not the server). psutil loads on the first call, not at import: the
plugin imports the contract's rules at configure, before any server runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_leanhost.core.processes import PinnedProcess

__all__ = ["listening_addresses"]


def listening_addresses(root: PinnedProcess | None) -> list[tuple[int, str, int]]:
    """``(pid, ip, port)`` of every TCP socket listening in ``root``'s process tree.

    Read from the OS (psutil), so it sees what the server did, not what it was told.
    """
    import psutil  # deferred: the plugin parses rules at configure, before any server

    proc = root.process() if root is not None else None
    if proc is None:
        return []
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found: list[tuple[int, str, int]] = []
    for proc in tree:
        try:
            connections = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                found.append((proc.pid, conn.laddr.ip, conn.laddr.port))
    return sorted(set(found))
