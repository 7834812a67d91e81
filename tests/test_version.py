"""One version, in one place: ``pytest_leanhost.__version__``, as pytest and pip see it."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_leanhost

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_distribution_has_the_package_version() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev|\.post)?\d*", pytest_leanhost.__version__)
    # An editable install's metadata is written at install time: reinstall after a bump.
    assert importlib.metadata.version("pytest-leanhost") == pytest_leanhost.__version__


def test_pyproject_takes_the_version_from_the_package_only() -> None:
    tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "pytest_leanhost/__init__.py"


def test_the_package_writes_its_version_in_one_place() -> None:
    # The MCP client's clientInfo and everything else take pytest_leanhost.__version__,
    # so a bump in __init__.py reaches them all: no other source file spells it out.
    literal = f'"{pytest_leanhost.__version__}"'
    package = ROOT / "pytest_leanhost"
    spelled = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if literal in path.read_text(encoding="utf-8")
    )
    assert spelled == ["__init__.py"]


@pytest.mark.parametrize(
    ("autoload", "args"),
    [("on", ()), ("off", ("-p", "leanhost"))],
    ids=["entry-point", "dash-p-without-autoload"],
)
def test_pytest_version_lists_the_plugin_with_its_version(
    tmp_path: Path, autoload: str, args: tuple[str, ...]
) -> None:
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("PYTEST_ADDOPTS", None)
    if autoload == "off":
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    # Outside the repository, so neither its pyproject.toml nor a conftest takes part.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--version", "--version", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert "registered third-party plugins:" in lines
    ours = [line.strip() for line in lines if "pytest-leanhost" in line]
    assert len(ours) == 1, lines
    assert ours[0].startswith(f"pytest-leanhost-{pytest_leanhost.__version__} at ")
