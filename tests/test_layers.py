"""Imports run one way: nothing below the plugin imports pytest or the plugin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_leanhost"
BELOW_THE_PLUGIN = sorted(
    [*PACKAGE.glob("*.py"), *(PACKAGE / "core").glob("*.py"), *(PACKAGE / "client").glob("*.py")]
)
FORBIDDEN = ("pytest", "_pytest", "pytest_leanhost.plugin")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    [p for p in BELOW_THE_PLUGIN if p.name != "__init__.py" or p.parent != PACKAGE],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_a_module_below_the_plugin_imports_neither_pytest_nor_the_plugin(path: Path) -> None:
    bad = sorted(
        name
        for name in imported(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    )
    assert bad == [], f"{path.relative_to(PACKAGE)} imports {bad}"
