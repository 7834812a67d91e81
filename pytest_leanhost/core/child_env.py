"""The variables a launcher that builds its own environment must pass on: ``child_env()``.

A launcher that scrubs the environment (the MCP SDKs' stdio clients,
``Popen(env=...)``) drops the test's registry variable and the ownership
markers; merging :func:`child_env` into the environment it builds keeps them.
Standard library only, so code outside fixtures may call it cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pytest_leanhost.core.ownership import NODEID_ENV, SESSION_ENV, WORKER_ENV
from pytest_leanhost.record import REGISTRY_ENV

__all__ = ["CHILD_ENV_NAMES", "child_env"]

#: The variables :func:`child_env` hands on, in this order.
CHILD_ENV_NAMES: tuple[str, ...] = (REGISTRY_ENV, SESSION_ENV, NODEID_ENV, WORKER_ENV)


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's registry variable and markers, only those that are set.

    ``environ`` defaults to ``os.environ``, which the plugin updates at each
    test boundary, so the values are the running test's.
    """
    env = os.environ if environ is None else environ
    return {name: env[name] for name in CHILD_ENV_NAMES if name in env}
