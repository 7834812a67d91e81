"""Project-wide test set-up: pytester, and no test ever touches the user's real registry.

``XDG_CACHE_HOME`` and ``LEAN_HOST_MCP_PROCESS_REGISTRY_DIR`` point at a
temporary directory for the whole run, before any test or subprocess starts,
so the default registry (``<cache>/lean-host-mcp/processes``) is a throwaway.
"""

from __future__ import annotations

import os
import shutil
import tempfile

pytest_plugins = ["pytester"]

_SANDBOX = tempfile.mkdtemp(prefix="leanhost-tests-")
os.environ["XDG_CACHE_HOME"] = os.path.join(_SANDBOX, "cache")
os.environ["LEAN_HOST_MCP_PROCESS_REGISTRY_DIR"] = os.path.join(_SANDBOX, "registry")


def pytest_unconfigure() -> None:
    shutil.rmtree(_SANDBOX, ignore_errors=True)
