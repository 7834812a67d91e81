"""Check the built distributions in ``dist/``: what the wheel and the sdist hold.

Run by ``.ci/run check-dist`` after ``python -m build``. The wheel must hold the
package with ``py.typed`` and the report's JSON Schema, the entry points, and
nothing of the repository's tests, examples or CI; its version must be
``pytest_leanhost.__version__`` of the source. The sdist must hold what a
rebuild and the test suite need, and no virtual environment, cache or VCS data.
Prints the wheel's files; exits 1 naming every problem.
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"

WHEEL_MUST_HOLD = [
    "pytest_leanhost/__init__.py",
    "pytest_leanhost/py.typed",
    "pytest_leanhost/schemas/report.schema.json",
]
SDIST_MUST_HOLD = [
    "pyproject.toml",
    "README.md",
    "CHANGELOG.md",
    "CONTRIBUTING.md",
    "docs/conf.py",
    "docs/requirements.txt",
    "pytest_leanhost/py.typed",
    "pytest_leanhost/schemas/report.schema.json",
    "conftest.py",
    "tests/conftest.py",
]
NEVER = re.compile(
    r"(^|/)(\.venv|\.git|\.tox|\.mypy_cache|\.ruff_cache|\.pytest_cache|\.hypothesis|"
    r"__pycache__|dist|build)(/|$)|\.pyc$"
)


def source_version() -> str:
    text = (ROOT / "pytest_leanhost" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if found is None:
        raise SystemExit("no __version__ in pytest_leanhost/__init__.py")
    return found.group(1)


def only(pattern: str) -> Path:
    found = sorted(DIST.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"expected one {pattern} in {DIST}, found {[p.name for p in found]}")
    return found[0]


def check_wheel(wheel: Path, version: str) -> list[str]:
    problems: list[str] = []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = f"pytest_leanhost-{version}.dist-info"
        metadata, entry_points = (
            archive.read(name).decode() if name in names else ""
            for name in (f"{info}/METADATA", f"{info}/entry_points.txt")
        )
    for name in names:
        print(f"  {name}")
    problems += [f"wheel lacks {name}" for name in WHEEL_MUST_HOLD if name not in names]
    for name in names:
        top = name.split("/", 1)[0]
        if top not in ("pytest_leanhost", info) or NEVER.search(name):
            problems.append(f"wheel holds {name}")
    if f"\nVersion: {version}\n" not in metadata:
        problems.append(f"wheel METADATA does not say Version: {version}")
    for line in ("Classifier: Framework :: Pytest", "Project-URL: Changelog, "):
        if line not in metadata:
            problems.append(f"wheel METADATA lacks {line!r}")
    for entry in ("leanhost = pytest_leanhost.", "[pytest11]", "[console_scripts]"):
        if entry not in entry_points:
            problems.append(f"wheel entry_points.txt lacks {entry!r}")
    return problems


def check_sdist(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as archive:
        names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    problems = [f"sdist lacks {name}" for name in SDIST_MUST_HOLD if name not in names]
    problems += [f"sdist holds {name}" for name in names if NEVER.search(name)]
    return problems


def main() -> int:
    version = source_version()
    wheel = only(f"pytest_leanhost-{version}-py3-none-any.whl")
    sdist = only(f"pytest_leanhost-{version}.tar.gz")
    print(f"{wheel.name} ({wheel.stat().st_size} bytes):")
    problems = check_wheel(wheel, version) + check_sdist(sdist)
    print(f"{sdist.name} ({sdist.stat().st_size} bytes)")
    for problem in problems:
        print(f"check-dist: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
