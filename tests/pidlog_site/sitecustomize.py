"""Put on PYTHONPATH for inner runs only: each Python process writes its own PID down."""

from leanhost_tests_pidlog import install

install()
