"""The leak kinds: the words the session-end check, the report and the marker share.

A module of its own, with nothing to import, so that the plugin can name the
kinds (in ``--markers``) without loading the check's machinery before the end.
"""

from __future__ import annotations

__all__ = ["LEAK_KINDS"]

#: Every kind of leak, in the order the documentation lists them, with what it means.
LEAK_KINDS: dict[str, str] = {
    "stale_record": "a record whose PID is dead, a zombie, or now a younger process",
    "orphaned_server": "a live stdio server whose launching parent is gone",
    "leaked_server": "a live server with a record, after the test that started it ended",
    "leaked_process": "a live process without a record that the run started",
    "corrupt_record": "a .json file in a registry that is not a valid record",
}
