"""The process record: one JSON file per running server, and the registry it lives in.

This module is the wire format that lean-host-mcp's ``cli/processes.rs`` defines
(``ProcessRecord``, ``ServerProcessRecord::register``, ``registry_dir``). It reads
every record such a server writes and writes the same bytes that serde_json's
pretty printer writes for the same values. It imports neither pytest nor psutil,
so a server that registers itself through it starts fast.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_leanhost.files import write_atomically

__all__ = [
    "MAX_RECORD_BYTES",
    "REGISTRY_ENV",
    "ProcessRecord",
    "RecordError",
    "RegistryError",
    "ServerProcessRegistration",
    "current_executable",
    "current_process_record",
    "directory_from_env",
    "register_server_process",
    "registry_dir",
]

#: The environment variable that names the registry directory.
REGISTRY_ENV = "LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"

#: A record file larger than this is not read (a server writes a few hundred bytes).
MAX_RECORD_BYTES = 1024 * 1024

_U32_MAX = 2**32 - 1
_U128_MAX = 2**128 - 1

_SignalHandler = Callable[[int, types.FrameType | None], Any] | int | None


class RecordError(ValueError):
    """The bytes of a file are not a valid process record; the message says why."""


class RegistryError(RuntimeError):
    """The registry directory cannot be resolved (for example an empty variable)."""


@dataclasses.dataclass(frozen=True)
class ProcessRecord:
    """One server's process record, field for field as lean-host-mcp writes it.

    Field order is the wire order. ``parent_pid_at_start``, ``process_group_id``,
    ``bind`` and ``http_path`` may be missing or null in a record on disk.
    """

    pid: int
    executable: str
    cwd: str
    started_unix_millis: int
    parent_pid_at_start: int | None
    process_group_id: int | None
    transport: str
    bind: str | None = None
    http_path: str | None = None

    def to_json_bytes(self) -> bytes:
        """Return the record as serde_json's ``to_vec_pretty`` writes it.

        Two-space indent, ``": "`` between key and value, fields in wire order,
        non-ASCII text as UTF-8 (not escaped), no trailing newline.
        """
        fields = dataclasses.asdict(self)
        text = json.dumps(fields, indent=2, ensure_ascii=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:
            # serde refuses a path that is not valid UTF-8; so do we.
            raise RecordError(f"record field is not valid UTF-8 text: {exc.reason}") from exc

    @classmethod
    def from_json_bytes(cls, data: bytes) -> ProcessRecord:
        """Parse a record the way serde_json parses ``ProcessRecord``.

        Unknown fields are ignored; the four optional fields may be missing or
        null; every other deviation (types, ranges, duplicate keys, invalid
        UTF-8, lone surrogates) raises :class:`RecordError` saying what is wrong.
        """
        if not data:
            raise RecordError("empty file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(f"not UTF-8 (byte {exc.start})") from exc
        try:
            value = json.loads(
                text,
                object_pairs_hook=_JsonObject,
                parse_int=_parse_int,
                parse_constant=_refuse_constant,
            )
        except json.JSONDecodeError as exc:
            raise RecordError(
                f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
        except RecursionError as exc:
            raise RecordError("not JSON: nested too deeply") from exc
        if not isinstance(value, _JsonObject):
            raise RecordError(f"not a JSON object but {_json_kind(value)}")
        if value.duplicate is not None:
            raise RecordError(f"duplicate field `{value.duplicate}`")
        return cls(
            pid=_field(value, "pid", _u32),
            executable=_field(value, "executable", _text),
            cwd=_field(value, "cwd", _text),
            started_unix_millis=_field(value, "started_unix_millis", _u128),
            parent_pid_at_start=_optional_field(value, "parent_pid_at_start", _u32),
            process_group_id=_optional_field(value, "process_group_id", _u32),
            transport=_field(value, "transport", _text),
            bind=_optional_field(value, "bind", _text),
            http_path=_optional_field(value, "http_path", _text),
        )


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(ProcessRecord))


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers the first record field it saw twice.

    serde_json refuses a duplicate field of the struct, but ignores unknown fields
    (and everything inside them) unchecked, so only the record's own field names count;
    only the top-level object's ``duplicate`` is looked at.
    """

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.duplicate: str | None = None
        for key, item in pairs:
            if self.duplicate is None and key in self and key in _FIELD_NAMES:
                self.duplicate = key
            self[key] = item


def _parse_int(digits: str) -> int | float:
    # serde_json reads `-0` as a float (so no integer field takes it); Python's int()
    # refuses more than sys.get_int_max_str_digits() digits with a ValueError, where
    # serde_json skips the number in an unknown field and reads it as a float (too
    # large for any integer field) in a known one.
    if digits == "-0":
        return -0.0
    try:
        return int(digits)
    except ValueError:
        return float(digits)


def _refuse_constant(name: str) -> float:
    # Python's json reads NaN, Infinity and -Infinity; JSON (and serde_json) has none.
    raise RecordError(f"not JSON: `{name}` is not a JSON value")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _unsigned(value: object, name: str, maximum: int, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"field `{name}` is {_json_kind(value)}, expected {kind}")
    if not 0 <= value <= maximum:
        raise RecordError(f"field `{name}` is {value}, out of range for {kind}")
    return value


def _u32(value: object, name: str) -> int:
    return _unsigned(value, name, _U32_MAX, "u32")


def _u128(value: object, name: str) -> int:
    return _unsigned(value, name, _U128_MAX, "u128")


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"field `{name}` is {_json_kind(value)}, expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordError(f"field `{name}` holds a lone surrogate") from exc
    return value


def _field(obj: dict[str, Any], name: str, convert: Callable[[object, str], Any]) -> Any:
    if name not in obj:
        raise RecordError(f"missing field `{name}`")
    return convert(obj[name], name)


def _optional_field(obj: dict[str, Any], name: str, convert: Callable[[object, str], Any]) -> Any:
    value = obj.get(name)
    return None if value is None else convert(value, name)


def registry_dir(environ: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """Return the registry directory, as lean-host-mcp resolves it.

    ``$LEAN_HOST_MCP_PROCESS_REGISTRY_DIR`` when set, else
    ``<user cache dir>/lean-host-mcp/processes`` (platformdirs' ``user_cache_dir()``
    with no app name: ``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux). An empty
    variable is an error: it would otherwise silently mean the current directory.
    """
    return directory_from_env(
        environ, REGISTRY_ENV, ("lean-host-mcp", "processes"), error=RegistryError
    )


def directory_from_env(
    environ: Mapping[str, str] | None,
    name: str,
    under_cache: tuple[str, ...],
    *,
    error: type[Exception],
) -> Path:
    """``$name`` when set, else ``<user cache dir>/<under_cache...>``.

    The user cache dir is platformdirs' ``user_cache_dir()`` with no app name. An
    empty variable raises ``error``: it would otherwise silently mean the current
    directory.
    """
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value is not None:
        if not value:
            raise error(f"{name} is set but empty; unset it or name a directory")
        return Path(value)
    import platformdirs  # deferred: a server that names its directory never pays for it

    return Path(platformdirs.user_cache_dir()).joinpath(*under_cache)


def current_executable() -> str:
    """Return this process's executable as Rust's ``std::env::current_exe`` does."""
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/exe")  # Linux: the resolved binary
    return os.path.realpath(sys.executable)


def current_process_record(
    transport: str, bind: str | None = None, http_path: str | None = None
) -> ProcessRecord:
    """The record of this process, every field filled as lean-host-mcp fills it.

    The parent is ``os.getppid()`` (the launching client, or 1 once orphaned); the
    process group is only known on POSIX; the start time is the wall clock now.
    """
    return ProcessRecord(
        pid=os.getpid(),
        executable=current_executable(),
        cwd=os.getcwd(),
        started_unix_millis=time.time_ns() // 1_000_000,
        parent_pid_at_start=os.getppid(),
        process_group_id=os.getpgrp() if os.name == "posix" else None,
        transport=transport,
        bind=bind,
        http_path=http_path,
    )


class ServerProcessRegistration:
    """A written record of this process; :meth:`close` removes it.

    Use :func:`register_server_process` to create one. It is a context manager;
    leaving it, calling :meth:`close`, interpreter exit and (when installed)
    SIGTERM all remove the record. Removing a record that is already gone is
    not an error.
    """

    def __init__(self, path: Path, record: ProcessRecord) -> None:
        self.path = path
        self.record = record
        self._closed = False
        self._previous_sigterm: _SignalHandler = None
        self._sigterm_installed = False
        atexit.register(self.close)

    def __enter__(self) -> ServerProcessRegistration:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the record (once); a record already removed is not an error."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        # Only our own file: the record is named after our PID.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @property
    def closed(self) -> bool:
        """Whether the record has been removed by this object."""
        return self._closed

    def _install_sigterm_handler(self) -> None:
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_IGN:
            return  # the process ignores SIGTERM, so SIGTERM does not end it: keep the record
        self._previous_sigterm = previous
        self._sigterm_installed = True
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: types.FrameType | None) -> None:
        self.close()
        previous = self._previous_sigterm
        if callable(previous):
            previous(signum, frame)
            return
        # The default action: die of SIGTERM, as the process would have without us.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def register_server_process(
    transport: str,
    bind: str | None = None,
    http_path: str | None = None,
    *,
    registry: str | os.PathLike[str] | None = None,
    install_signal_handlers: bool = False,
) -> ServerProcessRegistration:
    """Write this process's record into the registry and return its registration.

    The Python counterpart of lean-host-mcp's ``ServerProcessRecord::register``:
    it creates the registry (mode 0700 when it creates it), fills every field
    as the Rust does, and writes ``<pid>.json`` atomically (a temporary name in
    the same directory, then a rename), so no reader ever sees half a record.
    ``registry`` defaults to :func:`registry_dir`. With
    ``install_signal_handlers=True`` a SIGTERM also removes the record before
    the previous handler (or the default action) runs.
    """
    directory = Path(registry) if registry is not None else registry_dir()
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = current_process_record(transport, bind, http_path)
    path = directory / f"{record.pid}.json"
    write_atomically(path, record.to_json_bytes())
    registration = ServerProcessRegistration(path, record)
    if install_signal_handlers:
        registration._install_sigterm_handler()
    return registration
