"""``python -m pytest_leanhost.refserver``: run the reference MCP server."""

from __future__ import annotations

import sys

from pytest_leanhost.refserver import main

if __name__ == "__main__":
    sys.exit(main())
