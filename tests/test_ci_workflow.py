"""The GitHub Actions workflow runs what ``.ci/run`` runs: the same steps, in the same order.

``.ci/run`` names its steps (``STEPS``, each a ``step_NAME`` function, echoed as
``== NAME``); the workflow's Linux job has one job step per ``.ci/run`` step,
named after it and running ``bash .ci/run NAME``, and nothing else that runs
a command. The macOS job runs a subset of them, in the same order. Adding a step
to one side and not the other fails here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = ROOT / ".ci" / "run"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]


def ci_run_steps() -> list[str]:
    done = subprocess.run(
        ["bash", str(CI_RUN), "--list"], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.split()


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return loaded


def job_steps(job: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The ``.ci/run`` steps a job runs, in order, and its other command steps."""
    ours: list[str] = []
    others: list[dict[str, Any]] = []
    for step in job["steps"]:
        if "run" not in step:
            assert "uses" in step, step
            continue
        found = re.fullmatch(r"bash \.ci/run ([a-z-]+)", step["run"].strip())
        if found is None:
            others.append(step)
            continue
        assert step.get("name") == found.group(1), step  # the job step is named after it
        ours.append(found.group(1))
    return ours, others


def test_ci_run_lists_every_step_it_defines_and_echoes_each() -> None:
    script = CI_RUN.read_text(encoding="utf-8")
    steps = ci_run_steps()
    assert steps[0] == "install"
    assert {"ruff-check", "mypy", "build", "check-dist", "wheel-smoke", "pytest"} <= set(steps)
    defined = re.findall(r"^step_([a-z_]+)\(\)", script, re.MULTILINE)
    assert sorted(name.replace("_", "-") for name in defined) == sorted(steps)
    assert 'echo "== $step"' in script


def test_the_workflow_parses_and_its_linux_job_runs_every_ci_run_step_in_order() -> None:
    jobs = workflow()["jobs"]
    linux = jobs["linux"]
    assert linux["runs-on"].startswith("ubuntu-")
    assert linux["strategy"]["matrix"]["python-version"] == SUPPORTED
    ours, others = job_steps(linux)
    assert ours == ci_run_steps()
    assert others == []


def test_the_macos_job_runs_a_subset_of_ci_run_steps_in_order() -> None:
    macos = workflow()["jobs"]["macos"]
    assert macos["runs-on"].startswith("macos-")
    ours, others = job_steps(macos)
    steps = ci_run_steps()
    assert ours == [step for step in steps if step in ours]
    assert {"install", "wheel-smoke", "pytest"} <= set(ours)
    assert others == []


def test_the_workflow_runs_on_pushes_and_pull_requests() -> None:
    loaded = workflow()
    triggers: dict[str, Any] = loaded["on"] if "on" in loaded else loaded[True]  # YAML 1.1: `on`
    assert {"push", "pull_request"} <= set(triggers)
    assert loaded["env"]["CI"] == "true"


def test_the_supported_pythons_are_the_classifiers() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    listed = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    assert listed == SUPPORTED
    assert 'requires-python = ">=3.10"' in pyproject


@pytest.mark.parametrize(
    "path",
    re.findall(r"^  (tests/\S+\.py)$", CI_RUN.read_text(encoding="utf-8"), re.MULTILINE),
)
def test_each_portable_test_file_exists(path: str) -> None:
    assert (ROOT / path).is_file()
