"""The project's tests."""

import pytest

# The shared helpers assert too: rewrite them, so a failure shows what was left.
pytest.register_assert_rewrite("tests.inner_runs", "tests.pidlog")
