"""Sphinx configuration of the pytest-leanhost documentation (``bash .ci/run docs`` builds it).

Pages are Markdown (MyST); the generated reference parts come from
``_ext/leanhost_docs.py`` and the example outputs from ``captured/``, written by
``capture_examples.py``. The build runs with ``-W``: every warning fails it.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import pytest_leanhost  # noqa: E402  (the version the pages describe)

project = "pytest-leanhost"
author = "the pytest-leanhost authors"
copyright = "the pytest-leanhost authors"
release = version = pytest_leanhost.__version__

extensions = ["myst_parser", "leanhost_docs"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "captured", "suites", "requirements.txt", "README.md"]

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]
suppress_warnings: list[str] = []
nitpicky = True
smartquotes = False  # option names and commands are shown as typed: --x stays --x

html_theme = "furo"
html_title = f"pytest-leanhost {release}"
html_static_path: list[str] = []
html_theme_options = {
    "source_repository": "https://github.com/pytest-leanhost/pytest-leanhost",
    "source_branch": "main",
    "source_directory": "docs/",
}
pygments_style = "default"
