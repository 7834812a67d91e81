"""The README's main job as a user meets it, the sandbox that only the project's tests get,
and the root conftest that every suite of the repository shares."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pytest_leanhost.record import REGISTRY_ENV, registry_dir

ROOT = Path(__file__).resolve().parent.parent


def test_the_project_s_tests_run_with_a_throwaway_home_cache_and_registry() -> None:
    sandbox = Path(os.environ["HOME"]).parent
    assert sandbox.name.startswith("leanhost-tests-")
    assert sandbox.parent == Path(tempfile.gettempdir())
    assert Path(os.environ["XDG_CACHE_HOME"]).parent == sandbox
    # Without the plugin's per-test registry variable: the default registry, in the sandbox;
    # also for a server whose launcher passes on only HOME (as the MCP SDKs do).
    default = {name: value for name, value in os.environ.items() if name != REGISTRY_ENV}
    assert registry_dir(default).is_relative_to(sandbox)
    assert registry_dir({"HOME": os.environ["HOME"]}).is_relative_to(sandbox)


def test_the_main_job_shows_the_user_s_own_default_registry(tmp_path: Path) -> None:
    # A user's environment: their own home and cache, no registry variable. Here both
    # are temporary, so the doctor reads an empty default registry, never the real one.
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    for name in (REGISTRY_ENV, "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER"):
        env.pop(name, None)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "leanhost",
            "--leanhost-doctor",
            "-p",
            "no:cacheprovider",
            "examples/refserver_suite",
            "examples/sdk_suite",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    default = tmp_path / "cache" / "lean-host-mcp" / "processes"
    assert f"default registry {default}:" in out.splitlines(), out
    assert "leanhost-tests-" not in out


def test_the_root_conftest_keeps_builds_environments_and_npm_packages_out_of_collection(
    pytester: pytest.Pytester,
) -> None:
    # Folders that copy or install tests, each with a test that fails if collected.
    planted = [
        "build/lib",
        "dist/pkg/tests",
        ".venv/lib",
        "venv",
        ".tox/py",
        "tests/node/node_modules",
    ]
    for number, folder in enumerate(planted):
        (pytester.path / folder).mkdir(parents=True)
        test = pytester.path / folder / f"test_not_ours_{number}.py"
        test.write_text("def test_not_ours():\n    assert False\n")
    pytester.makepyfile(test_ours="def test_ours():\n    pass\n")
    # Even a run that empties norecursedirs (pytest's own defaults cover some of these).
    args = ("-p", "no:leanhost", "-p", "no:cacheprovider", "-o", "norecursedirs=")
    without = pytester.runpytest_subprocess(*args)
    without.assert_outcomes(passed=1, failed=len(planted))  # the control: all collected
    shutil.copy(ROOT / "conftest.py", pytester.path / "conftest.py")
    with_it = pytester.runpytest_subprocess(*args)
    with_it.assert_outcomes(passed=1)
