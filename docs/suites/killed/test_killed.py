"""A run that is killed outright (SIGKILL) while its test's child still runs.

The test starts a child that keeps the run's markers, writes the child's PID to
``$LEANHOST_DOCS_READY``, and waits: ``capture_examples.py`` kills this pytest
then, as an OOM killer or a CI timeout would.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def test_killed_while_its_child_runs() -> None:
    child = subprocess.Popen(["sleep", "300"])
    Path(os.environ["LEANHOST_DOCS_READY"]).write_text(str(child.pid))
    time.sleep(300)
