"""child_env(): the variables a launcher that builds its own environment must hand on."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pytest_leanhost
from pytest_leanhost.core.child_env import child_env


def test_child_env_holds_only_the_set_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LEANHOST_SESSION", "LEANHOST_NODEID", "LEANHOST_WORKER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEAN_HOST_MCP_PROCESS_REGISTRY_DIR", "/tmp/reg")
    monkeypatch.setenv("LEANHOST_NODEID", "t.py::test")
    monkeypatch.setenv("UNRELATED", "x")
    assert child_env() == {
        "LEAN_HOST_MCP_PROCESS_REGISTRY_DIR": "/tmp/reg",
        "LEANHOST_NODEID": "t.py::test",
    }
    assert pytest_leanhost.child_env is child_env


def test_child_env_reaches_a_scrubbed_child_and_loads_nothing_heavy() -> None:
    code = (
        "import sys, pytest_leanhost\n"
        "env = pytest_leanhost.child_env()\n"
        "assert not {'pytest', 'psutil', 'platformdirs'} & set(sys.modules), sys.modules\n"
        "print(sorted(env.items()))\n"
    )
    env = {"LEANHOST_SESSION": "lh-1", "LEANHOST_WORKER": "gw0", "OTHER": "y"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[('LEANHOST_SESSION', 'lh-1'), ('LEANHOST_WORKER', 'gw0')]"
