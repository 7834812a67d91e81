"""pytest-leanhost: prove that an MCP server test suite leaks no server process or record.

The package namespace is lazy: ``import pytest_leanhost`` loads nothing heavy,
so ``python -m pytest_leanhost.refserver`` and ``pytest_leanhost.record`` start
without pytest or psutil. Each public name is imported from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ProcessRecord": "pytest_leanhost.record",
    "RecordError": "pytest_leanhost.record",
    "RegistryError": "pytest_leanhost.record",
    "register_server_process": "pytest_leanhost.record",
    "registry_dir": "pytest_leanhost.record",
    "child_env": "pytest_leanhost.core.child_env",
    "inspect_registry": "pytest_leanhost.core.doctor",
    "cleanup_stale_records": "pytest_leanhost.core.doctor",
    "render_text": "pytest_leanhost.core.doctor",
    "spawn_server": "pytest_leanhost.client.spawn",
    "ServerProcess": "pytest_leanhost.client.spawn",
    "StopResult": "pytest_leanhost.client.spawn",
    "leanhost_doctor": "pytest_leanhost.plugin.fixtures",
    "leanhost_env": "pytest_leanhost.plugin.fixtures",
    "leanhost_registry": "pytest_leanhost.plugin.fixtures",
    "leanhost_server": "pytest_leanhost.plugin.fixtures",
    "leanhost_server_command": "pytest_leanhost.plugin.fixtures",
}

__all__ = [  # noqa: PLE0604 (the names are the keys of _EXPORTS)
    "__version__",
    *_EXPORTS,
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
