"""JSON-RPC 2.0 framing and the MCP methods the reference server answers.

Transport-neutral: stdio and HTTP both decode bytes with :func:`decode`, sort the
message with :func:`classify` and let :class:`McpServer` answer it. Every error is
a JSON-RPC error object; nothing here ends the server.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from pytest_leanhost import __version__
from pytest_leanhost.refserver.tools import ToolBox, ToolError

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LATEST_PROTOCOL_VERSION",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SERVER_NAME",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "Incoming",
    "McpServer",
    "RpcError",
    "Session",
    "classify",
    "decode",
    "encode",
    "error_response",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

#: Protocol revisions reachable through ``initialize``, oldest to newest.
SUPPORTED_PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_PROTOCOL_VERSION = SUPPORTED_PROTOCOL_VERSIONS[-1]
SERVER_NAME = "pytest-leanhost-refserver"

JsonObject = dict[str, Any]
RequestId = str | int


class RpcError(Exception):
    """A JSON-RPC error to send back; ``request_id`` is the id to answer (None: id null)."""

    def __init__(self, code: int, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclasses.dataclass(frozen=True)
class Incoming:
    """A well-formed JSON-RPC message: a request (has an id), a notification, or a response."""

    kind: Literal["request", "notification", "response"]
    method: str = ""
    id: RequestId | None = None
    params: Any = None


@dataclasses.dataclass
class Session:
    """What one client negotiated: stdio has one session, HTTP one per ``Mcp-Session-Id``."""

    protocol_version: str | None = None
    initialized: bool = False


def _refuse_constant(name: str) -> object:
    # NaN and Infinity are not JSON, although Python's parser accepts them.
    raise ValueError(f"{name} is not valid JSON")


def decode(data: bytes) -> object:
    """Parse one JSON text; raise :class:`RpcError` (parse error, id null) if it is not JSON."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"Parse error: not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise RpcError(PARSE_ERROR, "Parse error: nested too deeply") from None
    except ValueError as exc:
        raise RpcError(PARSE_ERROR, f"Parse error: {exc}") from None


def encode(message: JsonObject) -> bytes:
    """Serialize a message as one line of compact JSON (no newline inside, none appended)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_response(error: RpcError) -> JsonObject:
    """The JSON-RPC error response for ``error``."""
    return {
        "jsonrpc": "2.0",
        "id": error.request_id,
        "error": {"code": error.code, "message": error.message},
    }


def _valid_id(value: object) -> bool:
    # MCP ids are strings or integers, never null; a bool is not an integer here.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def classify(message: object) -> Incoming:
    """Sort a decoded message; raise :class:`RpcError` (invalid request) if it is none of them.

    A message with a string ``method`` and no ``id`` is a notification and is
    never answered, not even when it is malformed otherwise. Batches are
    refused: MCP 2025-06-18 and later carry one message per frame.
    """
    if isinstance(message, list):
        raise RpcError(INVALID_REQUEST, "Invalid Request: batches are not supported")
    if not isinstance(message, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
    has_id = "id" in message
    request_id = message.get("id")
    answer_id = request_id if _valid_id(request_id) else None
    method = message.get("method")
    if isinstance(method, str) and not has_id:
        return Incoming("notification", method=method, params=message.get("params"))
    if message.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', answer_id)
    if "method" not in message:
        if _valid_id(request_id) and ("result" in message) != ("error" in message):
            return Incoming("response", id=request_id)
        raise RpcError(INVALID_REQUEST, "Invalid Request: no method, result or error", answer_id)
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "method" must be a string', answer_id)
    if not _valid_id(request_id):
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
    params = message.get("params")
    if params is not None and not isinstance(params, (dict, list)):
        raise RpcError(
            INVALID_REQUEST, 'Invalid Request: "params" must be a structured value', answer_id
        )
    return Incoming("request", method=method, id=request_id, params=params)


class McpServer:
    """Answers MCP requests: ``initialize``, ``ping``, ``tools/list`` and ``tools/call``."""

    def __init__(self, tools: ToolBox) -> None:
        self.tools = tools

    def handle(self, message: object, session: Session) -> JsonObject | None:
        """Answer one decoded message; None for notifications and responses (never answered)."""
        try:
            incoming = classify(message)
        except RpcError as error:
            return error_response(error)
        if incoming.kind == "request":
            return self.respond(incoming, session)
        if incoming.kind == "notification":
            self.notify(incoming, session)
        return None

    def respond(self, request: Incoming, session: Session) -> JsonObject:
        """The response to a request: its result, or a JSON-RPC error with its id."""
        try:
            result = self._dispatch(request.method, request.params, session)
        except RpcError as error:
            error.request_id = request.id
            return error_response(error)
        except Exception as exc:  # a bug in a handler answers -32603; the server keeps serving
            return error_response(RpcError(INTERNAL_ERROR, f"Internal error: {exc!r}", request.id))
        return {"jsonrpc": "2.0", "id": request.id, "result": result}

    def notify(self, notification: Incoming, session: Session) -> None:
        """Take in a notification; only ``notifications/initialized`` changes anything."""
        if notification.method == "notifications/initialized":
            session.initialized = True

    def _dispatch(self, method: str, params: Any, session: Session) -> JsonObject:
        if method == "initialize":
            return self._initialize(_params_object(params, required=True), session)
        if method == "ping":
            _params_object(params, required=False)
            return {}
        if method == "tools/list":
            _params_object(params, required=False)
            return {"tools": self.tools.describe()}
        if method == "tools/call":
            call = _params_object(params, required=True)
            name = call.get("name")
            if not isinstance(name, str):
                raise RpcError(INVALID_PARAMS, 'Invalid params: "name" must be a string')
            arguments = call.get("arguments", {})
            if arguments is None:
                arguments = {}
            if not isinstance(arguments, dict):
                raise RpcError(INVALID_PARAMS, 'Invalid params: "arguments" must be an object')
            try:
                return self.tools.call(name, arguments)
            except ToolError as exc:
                raise RpcError(INVALID_PARAMS, f"Invalid params: {exc}") from None
        raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")

    def _initialize(self, params: JsonObject, session: Session) -> JsonObject:
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise RpcError(INVALID_PARAMS, 'Invalid params: "protocolVersion" must be a string')
        for field in ("capabilities", "clientInfo"):
            if field in params and not isinstance(params[field], dict):
                raise RpcError(INVALID_PARAMS, f'Invalid params: "{field}" must be an object')
        # The client's version when we speak it, else our latest: the client decides.
        version = requested if requested in SUPPORTED_PROTOCOL_VERSIONS else LATEST_PROTOCOL_VERSION
        session.protocol_version = version
        return {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": SERVER_NAME, "version": __version__},
        }


def _params_object(params: Any, *, required: bool) -> JsonObject:
    if params is None and not required:
        return {}
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, 'Invalid params: "params" must be an object')
    return params
