"""What holds for every suite in this repository, and nothing more.

pytest reads this file in every run from the repository: the project's tests,
the main job (``pytest -p leanhost examples/...``), an example on its own. It
only keeps folders that hold builds, copies of the sources and installed tools
out of collection, whatever ``norecursedirs`` a run sets. It sets no variable
and sandboxes nothing: the examples run as a user's suite does and show the
user's own default registry. The project's own sandbox (a throwaway home, cache
and registry) is ``tests/conftest.py``'s, for ``tests/`` only.
"""

from __future__ import annotations

#: Builds (an unpacked sdist holds a second copy of tests/), virtual environments
#: and npm's packages (tests/node/node_modules), at the top or at any depth.
_NOT_OURS = ("build", "dist", ".venv", "venv", ".tox", "node_modules")

collect_ignore_glob = [pattern for name in _NOT_OURS for pattern in (name, f"*/{name}")]
