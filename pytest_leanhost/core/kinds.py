"""The leak kinds and actions: the words the session-end check, the report and the marker share.

A module of its own, with nothing heavy to import, so that the plugin can name
the kinds (in ``--markers``) without loading the check's machinery before the
end. Each closed set is written once, as a ``Literal``; the tuples and the
descriptions are derived from it, so the lists cannot drift apart.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["ACTIONS", "FOUND_AT", "KINDS", "LEAK_KINDS", "Action", "FoundAt", "LeakKind"]

#: What the session-end check can find.
LeakKind = Literal[
    "stale_record", "orphaned_server", "leaked_server", "leaked_process", "corrupt_record"
]

#: What the plugin did about a finding.
Action = Literal["none", "record_removed", "terminated", "killed"]

#: When the check found a leak: at its test's teardown (``--leanhost-check=test``) or at the end.
FoundAt = Literal["teardown", "session_end"]

KINDS: tuple[LeakKind, ...] = get_args(LeakKind)
FOUND_AT: tuple[FoundAt, ...] = get_args(FoundAt)
ACTIONS: tuple[Action, ...] = get_args(Action)

#: Every kind of leak, in the order the documentation lists them, with what it means.
LEAK_KINDS: dict[LeakKind, str] = dict(
    zip(
        KINDS,
        (
            "a record whose PID is dead, a zombie, or now a younger process",
            "a live stdio server whose launching parent is gone",
            "a live server with a record, after the test that started it ended",
            "a live process without a record that the run started",
            "a .json file in a registry that is not a valid record",
        ),
        strict=True,
    )
)
