"""What a user looks for on the package index: URLs, keywords, classifiers, a clean README."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

import pytest_leanhost

ROOT = Path(__file__).resolve().parent.parent
URL = "https://github.com/pytest-leanhost/pytest-leanhost"


def pyproject() -> dict[str, Any]:
    tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    loaded: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project: dict[str, Any] = loaded["project"]
    return project


def test_the_project_urls_name_source_issues_and_changelog() -> None:
    urls = pyproject()["urls"]
    assert urls["Source"] == URL
    assert urls["Issues"] == f"{URL}/issues"
    assert urls["Changelog"] == f"{URL}/blob/main/CHANGELOG.md"


def test_keywords_and_classifiers() -> None:
    project = pyproject()
    assert {"pytest", "mcp"} <= set(project["keywords"])
    assert "Framework :: Pytest" in project["classifiers"]
    assert "Typing :: Typed" in project["classifiers"]
    assert project["readme"] == "README.md"


def test_the_readme_has_no_relative_link_or_image() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)]*)\)", text)  # [text](target), ![alt](target)
    targets += re.findall(r"^\[[^\]]+\]:\s*(\S+)", text, re.MULTILINE)  # [ref]: target
    targets += re.findall(r"""(?:src|href)=["']([^"']*)["']""", text)
    assert targets, "the README links to the changelog at least"
    relative = [target for target in targets if not re.match(r"https://|#", target)]
    assert relative == []


def test_the_changelog_has_a_section_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(
        rf"^## {re.escape(pytest_leanhost.__version__)}( |$)", changelog, re.MULTILINE
    ), pytest_leanhost.__version__
