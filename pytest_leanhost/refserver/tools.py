"""The reference server's tools: ``echo``, ``sleep`` and ``spawn_worker``.

Unknown tools and bad arguments are JSON-RPC errors (-32602); a tool that runs
but cannot do its job answers ``isError: true``, as MCP asks.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_leanhost.refserver.workers import Workers

__all__ = ["MAX_SLEEP_MS", "TOOLS", "ToolBox", "ToolError"]

MAX_SLEEP_MS = 60_000

JsonObject = dict[str, Any]

#: What ``tools/list`` says about each tool.
TOOLS: tuple[JsonObject, ...] = (
    {
        "name": "echo",
        "description": "Return the given text unchanged.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string", "description": "the text to return"}},
            "required": ["text"],
            "additionalProperties": False,
        },
    },
    {
        "name": "sleep",
        "description": "Sleep for the given number of milliseconds, then return.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "ms": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_SLEEP_MS,
                    "description": "milliseconds to sleep",
                }
            },
            "required": ["ms"],
            "additionalProperties": False,
        },
    },
    {
        "name": "spawn_worker",
        "description": (
            "Start a worker child process that the server owns and that exits with the server;"
            " return its PID."
        ),
        "inputSchema": {"type": "object", "properties": {}, "additionalProperties": False},
        "outputSchema": {
            "type": "object",
            "properties": {"pid": {"type": "integer", "description": "the worker's PID"}},
            "required": ["pid"],
        },
    },
)


class ToolError(Exception):
    """An unknown tool or bad arguments: the caller answers JSON-RPC -32602 (invalid params)."""


def _text_result(text: str, *, is_error: bool = False) -> JsonObject:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


class ToolBox:
    """Runs tool calls; ``stopping`` set means the server is shutting down (sleeps end early)."""

    def __init__(self, workers: Workers, stopping: threading.Event) -> None:
        self._workers = workers
        self._stopping = stopping

    def describe(self) -> list[JsonObject]:
        """The ``tools`` list of a ``tools/list`` result."""
        return [dict(tool) for tool in TOOLS]

    def call(self, name: str, arguments: JsonObject) -> JsonObject:
        """Run a tool and return its ``tools/call`` result; :class:`ToolError` on bad input."""
        if name == "echo":
            return self._echo(arguments)
        if name == "sleep":
            return self._sleep(arguments)
        if name == "spawn_worker":
            return self._spawn_worker(arguments)
        raise ToolError(f"unknown tool: {name}")

    def _echo(self, arguments: JsonObject) -> JsonObject:
        _only(arguments, "text")
        text = arguments.get("text")
        if not isinstance(text, str):
            raise ToolError('echo needs "text", a string')
        return _text_result(text)

    def _sleep(self, arguments: JsonObject) -> JsonObject:
        _only(arguments, "ms")
        ms = arguments.get("ms")
        if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= MAX_SLEEP_MS:
            raise ToolError(f'sleep needs "ms", an integer from 0 to {MAX_SLEEP_MS}')
        started = time.monotonic()
        # A shutdown wakes the sleep, so an in-flight call finishes instead of holding the exit.
        if self._stopping.wait(ms / 1000):
            slept = round((time.monotonic() - started) * 1000)
            return _text_result(f"sleep interrupted after {slept} ms: shutting down", is_error=True)
        return _text_result(f"slept {ms} ms")

    def _spawn_worker(self, arguments: JsonObject) -> JsonObject:
        _only(arguments)
        try:
            pid = self._workers.spawn()
        except (OSError, RuntimeError) as exc:
            return _text_result(f"cannot start a worker: {exc}", is_error=True)
        result = _text_result(str(pid))
        result["structuredContent"] = {"pid": pid}
        return result


def _only(arguments: JsonObject, *allowed: str) -> None:
    extra = sorted(set(arguments) - set(allowed))
    if extra:
        raise ToolError(f"unexpected argument(s): {', '.join(extra)}")
