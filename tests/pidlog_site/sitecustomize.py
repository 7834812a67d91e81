"""Put on PYTHONPATH for inner runs only: each Python process writes its own PID down."""

# Imported by its top-level name: this directory is on PYTHONPATH, not a package there.
from leanhost_tests_pidlog import install  # type: ignore[import-not-found]

install()
