"""The plugin's cost on a real third-party suite: pytest's own tests, with and without it.

Run by hand: ``python benchmarks/bench_thirdparty.py`` (``--runs N``, ``--xdist N``,
``--select "testing/python testing/test_*.py"``, ``--select all``, ``--workdir DIR``).

Why pytest's suite: it is thousands of tests (4,775 in pytest 9.2.0, 3,218 in the
default selection) that spawn real processes: ``pytester.runpytest_subprocess``
(``acceptance_test.py``, ``test_capture.py``, ``test_faulthandler.py``), pexpect
sessions on a pseudo-terminal (``test_debugging.py``), a Python subprocess per
module (``test_meta.py``), timeouts that kill a child (``test_pytester.py``).

1. Preparation, cached under ``--workdir`` (default
   ``$TMPDIR/leanhost-bench-thirdparty``) so a second invocation skips it: the sdist
   of the pytest version installed here (``pip download --no-binary :all:``),
   unpacked; a virtual environment with ``pytest[dev]`` of that version (the suite's
   test dependencies) and pytest-leanhost installed from this repository (reinstalled
   when its files change).
2. Runs: the suite as whole pytest processes, alternating ``-p leanhost`` (with
   ``--leanhost-report``) and ``-p no:leanhost``, plugin autoload off for both and
   otherwise the same arguments; each run gets its own HOME, XDG_CACHE_HOME,
   TMPDIR and cache directory. Medians of ``--runs`` runs each: wall time, and the
   user+sys CPU of the run (``RUSAGE_CHILDREN`` deltas), steadier than wall time
   on a shared machine.
3. Verdicts: the findings of every report (must be 0) and the check time; the
   (test, outcome) pairs of every run from its JUnit XML, compared between the
   variants: "identical" or the differences.

Only tests that fail in this sandbox without the plugin are deselected
(``KNOWN_FAILING``, printed with the reason). Exits 1 when a report has a finding
or the outcomes differ, else 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import importlib.metadata
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pytest_leanhost.core.child_env import CHILD_ENV_NAMES
from pytest_leanhost.core.earlier_sessions import SESSIONS_ENV

Variant = Literal["with", "without"]
VARIANTS: tuple[Variant, ...] = ("with", "without")

REPO = Path(__file__).resolve().parent.parent

#: The default selection: 3,218 tests of pytest 9.2.0, among them every kind of process the
#: suite spawns (see the module docstring); under half of the whole suite's time.
DEFAULT_SELECT = (
    "testing/python",
    "testing/code",
    "testing/_py",
    "testing/io",
    "testing/logging",
    "testing/acceptance_test.py",
    "testing/test_assertrewrite.py",
    "testing/test_assertrewrite_coverage.py",
    "testing/test_capture.py",
    "testing/test_config.py",
    "testing/test_conftest.py",
    "testing/test_debugging.py",
    "testing/test_doctest.py",
    "testing/test_faulthandler.py",
    "testing/test_main.py",
    "testing/test_mark.py",
    "testing/test_mark_expression.py",
    "testing/test_meta.py",
    "testing/test_monkeypatch.py",
    "testing/test_parseopt.py",
    "testing/test_pathlib.py",
    "testing/test_pytester.py",
    "testing/test_recwarn.py",
)

#: Tests that fail in this sandbox without the plugin, and why; deselected in both variants.
KNOWN_FAILING: dict[str, str] = {
    "testing/test_helpconfig.py::test_version_verbose": (
        "re-enables plugin autoload in-process; hypothesis, already imported by the outer "
        "run, refuses its late plugin load with HypothesisSideeffectWarning (INTERNALERROR)"
    ),
}


@dataclasses.dataclass(frozen=True)
class Suite:
    """A prepared suite: the unpacked sdist and the interpreter of its environment."""

    name: str
    version: str
    root: Path
    python: Path


@dataclasses.dataclass(frozen=True)
class Run:
    """One timed run of the suite: times, exit status, outcomes and (with) the report."""

    variant: Variant
    wall: float
    cpu: float
    returncode: int
    outcomes: dict[str, str]
    report: dict[str, Any] | None
    log: Path


def sh(args: Sequence[str]) -> None:
    """Run a preparation step, echoing it; its output goes to the terminal."""
    print("  $", shlex.join(args), flush=True)
    subprocess.run(args, check=True)


def repo_digest(repo: Path) -> str:
    """A digest of what ``pip install REPO`` installs, to know when to reinstall it."""
    digest = hashlib.sha256()
    paths = [repo / "pyproject.toml", repo / "README.md"]
    paths += sorted(
        path
        for path in (repo / "pytest_leanhost").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    for path in paths:
        if path.is_file():
            digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def unpack(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python before 3.10.12: no extraction filters
            tar.extractall(into)


def prepare(workdir: Path, version: str, repo: Path) -> Suite:
    """Download and unpack pytest's sdist and build its environment, once per workdir.

    The stamp ``prepared.json`` is written last, so an interrupted preparation is
    redone from the start; pytest-leanhost is reinstalled whenever the repository's
    files differ from those last installed.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / f"pytest-{version}"
    venv = workdir / "venv"
    python = venv / "bin" / "python"
    stamp = workdir / "prepared.json"
    wanted = {"pytest": version, "python": sys.version}
    if not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
        print(f"preparing pytest {version}'s suite in {workdir}", flush=True)
        stamp.unlink(missing_ok=True)
        (workdir / "leanhost.digest").unlink(missing_ok=True)
        for stale in (root, venv, workdir / "sdist"):
            shutil.rmtree(stale, ignore_errors=True)
        sh([sys.executable, "-m", "venv", str(venv)])
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
        sdist = workdir / "sdist"
        sh(
            [
                *pip,
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-d",
                str(sdist),
                f"pytest=={version}",
            ]
        )
        (archive,) = sdist.glob(f"pytest-{version}.tar.gz")
        unpack(archive, workdir)
        if not (root / "testing").is_dir():
            raise SystemExit(f"{archive} has no testing/ directory")
        digest = repo_digest(repo)
        sh([*pip, "install", f"pytest[dev]=={version}", str(repo)])
        (workdir / "leanhost.digest").write_text(digest)
        stamp.write_text(json.dumps(wanted))
    digest_file = workdir / "leanhost.digest"
    digest = repo_digest(repo)
    if not digest_file.is_file() or digest_file.read_text() != digest:
        print(f"installing pytest-leanhost from {repo}", flush=True)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install"]
        sh([*pip, "--force-reinstall", "--no-deps", str(repo)])
        sh([*pip, str(repo), f"pytest=={version}"])  # any dependency the new version added
        digest_file.write_text(digest)
    return Suite("pytest", version, root, python)


def selection(suite: Suite, select: str) -> list[str]:
    """The paths (or node ids) to run, globs expanded relative to the suite's root."""
    if select == "all":
        return ["testing"]
    if not select:
        return list(DEFAULT_SELECT)
    chosen: list[str] = []
    for word in shlex.split(select):
        path = word.split("::", 1)[0]
        if glob.has_magic(path):
            matches = sorted(glob.glob(path, root_dir=suite.root))
            if not matches:
                raise SystemExit(f"--select: {word!r} matches nothing under {suite.root}")
            chosen += matches
        elif not (suite.root / path).exists():
            raise SystemExit(f"--select: {path!r} does not exist under {suite.root}")
        else:
            chosen.append(word)
    return chosen


def run_env(tmp: Path, suite: Suite) -> dict[str, str]:
    """The environment of every run: autoload off, private HOME/caches/TMPDIR, no outer markers.

    Bytecode stays cached (PYTHONDONTWRITEBYTECODE, set on some machines, would
    charge recompiling to every run). A leanhost session around this script
    must not hand its registry variable and markers to the runs.
    """
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    for name in (*CHILD_ENV_NAMES, SESSIONS_ENV, "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "VIRTUAL_ENV"):
        env.pop(name, None)
    for name in ("home", "cache", "tmp"):
        (tmp / name).mkdir()
    env["HOME"] = str(tmp / "home")
    env["XDG_CACHE_HOME"] = str(tmp / "cache")
    env["TMPDIR"] = str(tmp / "tmp")
    env["PATH"] = f"{suite.python.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def read_outcomes(junit: Path) -> dict[str, str]:
    """Each test case's outcome from a JUnit XML file, keyed ``classname::name``.

    The outcome is the case's verdict elements joined (``failure``, ``error``,
    ``skipped``, ``xfailed``, or ``passed`` when it has none): a test that failed
    and then errored at teardown reads ``error+failure``; an xpass reads ``passed``.
    """
    outcomes: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        tags = sorted(
            "xfailed" if child.get("type") == "pytest.xfail" else child.tag
            for child in case
            if child.tag in {"failure", "error", "skipped"}
        )
        outcome = "+".join(tags) or "passed"
        while key in outcomes:  # two modules with the same dotted name: keep both
            key += "'"
        outcomes[key] = outcome
    return outcomes


def run_suite(
    suite: Suite,
    variant: Variant,
    paths: Sequence[str],
    deselect: Iterable[str],
    xdist: int,
    log: Path,
    timeout: float,
) -> Run:
    with tempfile.TemporaryDirectory(prefix="lh3p-") as name:
        tmp = Path(name)
        env = run_env(tmp, suite)
        junit, report = tmp / "junit.xml", tmp / "report.json"
        args = [str(suite.python), "-m", "pytest", "-q"]
        if variant == "with":
            args += ["-p", "leanhost", f"--leanhost-report={report}"]
        else:
            args += ["-p", "no:leanhost"]
        args += ["-o", f"cache_dir={tmp / 'pytest-cache'}", f"--junitxml={junit}"]
        args += [f"--deselect={nodeid}" for nodeid in deselect]
        if xdist:
            args += ["-p", "xdist", "-n", str(xdist)]
        args += paths
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        with log.open("w") as out:
            out.write(shlex.join(args) + "\n")
            out.flush()
            try:
                proc = subprocess.run(
                    args,
                    cwd=suite.root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise SystemExit(f"{variant} run exceeded {timeout:.0f} s; see {log}") from None
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if not junit.is_file():
            raise SystemExit(
                f"{variant} run wrote no JUnit XML (exit {proc.returncode}); see {log}"
            )
        data = json.loads(report.read_text()) if variant == "with" else None
        if variant == "with" and data is None:
            raise SystemExit(f"the with-plugin run wrote no report; see {log}")
        return Run(variant, wall, cpu, proc.returncode, read_outcomes(junit), data, log)


def warm_up(suite: Suite, paths: Sequence[str]) -> None:
    """Collect once per variant: the test modules' rewritten bytecode cached, files read once."""
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory(prefix="lh3p-") as name:
            tmp = Path(name)
            plugin = "leanhost" if variant == "with" else "no:leanhost"
            args = [str(suite.python), "-m", "pytest", "-q", "--collect-only", "-p", plugin]
            args += ["-o", f"cache_dir={tmp / 'pytest-cache'}", *paths]
            subprocess.run(
                args,
                cwd=suite.root,
                env=run_env(tmp, suite),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                check=True,
            )


def counts(outcomes: dict[str, str]) -> str:
    tally: dict[str, int] = {}
    for outcome in outcomes.values():
        tally[outcome] = tally.get(outcome, 0) + 1
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally.items()))


def differences(runs: Sequence[Run]) -> list[str]:
    """One line per test whose outcome is not the same in every run of both variants."""
    seen: dict[str, dict[Variant, set[str]]] = {}
    for run in runs:
        for key, outcome in run.outcomes.items():
            seen.setdefault(key, {"with": set(), "without": set()})[run.variant].add(outcome)
    for run in runs:
        for key, by_variant in seen.items():
            if key not in run.outcomes:
                by_variant[run.variant].add("absent")
    lines = []
    for key, by_variant in sorted(seen.items()):
        on, off = by_variant["with"], by_variant["without"]
        if len(on) != 1 or on != off:
            lines.append(f"{key}: with {'/'.join(sorted(on))}, without {'/'.join(sorted(off))}")
    return lines


def describe_finding(finding: dict[str, Any]) -> str:
    process = finding.get("process") or {}
    cmdline = shlex.join(process.get("cmdline") or [])
    escaped = ",".join(process.get("escaped") or []) or "-"
    return (
        f"{finding.get('kind')} pid={finding.get('pid')} test={finding.get('nodeid')} "
        f"escaped={escaped} cmdline={cmdline!r}"
    )


def summarize(suite: Suite, runs: Sequence[Run], xdist: int) -> int:
    by = {variant: [run for run in runs if run.variant == variant] for variant in VARIANTS}
    tests = len(runs[0].outcomes)
    mode = f"-n {xdist}" if xdist else "one process"
    on, off = (statistics.median(run.wall for run in by[v]) for v in VARIANTS)
    cpu_on, cpu_off = (statistics.median(run.cpu for run in by[v]) for v in VARIANTS)
    n = len(by["with"])
    print(f"\n{suite.name} {suite.version}'s own suite: {tests} tests ({mode}), medians of {n}:")
    for variant, wall, cpu in (("no:leanhost", off, cpu_off), ("leanhost", on, cpu_on)):
        print(f"  -p {variant:<12} wall {wall:8.2f} s   user+sys CPU {cpu:8.2f} s")
    print(
        f"  overhead: wall {(on - off) / off * 100:+.2f} % ({(on - off) / tests * 1000:+.3f} ms "
        f"per test), CPU {(cpu_on - cpu_off) / cpu_off * 100:+.2f} % "
        f"({(cpu_on - cpu_off) / tests * 1000:+.3f} ms per test)"
    )
    for variant in VARIANTS:
        codes = sorted({run.returncode for run in by[variant]})
        print(f"  {variant} plugin: exit {codes}, {counts(by[variant][0].outcomes)}")
    findings = [f for run in by["with"] if run.report for f in run.report["findings"]]
    checks = [float(run.report["check_seconds"]) for run in by["with"] if run.report]
    checked = max(int(run.report["registries_checked"]) for run in by["with"] if run.report)
    print(
        f"  findings: {len(findings)}; session-end check median "
        f"{statistics.median(checks) * 1000:.1f} ms over {checked} registries"
    )
    for finding in findings:
        print(f"    {describe_finding(finding)}")
    diffs = differences(runs)
    if diffs:
        print(f"  outcomes: {len(diffs)} tests differ (logs: {runs[-1].log.parent})")
        for line in diffs:
            print(f"    {line}")
    else:
        print(f"  outcomes: identical ({tests} tests, every run of both variants)")
    return 1 if findings or diffs else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per variant (median)")
    parser.add_argument("--xdist", type=int, default=0, help="pytest-xdist workers (0: none)")
    parser.add_argument(
        "--select",
        default="",
        help="paths, globs or node ids under the suite's root, space-separated "
        "(default: a selection of 3,218 tests of pytest 9.2.0; 'all': the whole suite)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "leanhost-bench-thirdparty",
        help="where the suite and its environment are prepared and cached",
    )
    parser.add_argument(
        "--pytest-version",
        default=importlib.metadata.version("pytest"),
        help="the pytest release whose suite runs (default: the one installed here)",
    )
    parser.add_argument("--repo", type=Path, default=REPO, help="the pytest-leanhost to install")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one run may take")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    suite = prepare(args.workdir.resolve(), args.pytest_version, args.repo.resolve())
    paths = selection(suite, args.select)
    print(f"suite: pytest {suite.version}'s testing/ in {suite.root}")
    print(f"selection: {' '.join(paths)}")
    print(f"deselected ({len(KNOWN_FAILING)}, they fail here without the plugin):")
    for nodeid, why in KNOWN_FAILING.items():
        print(f"  {nodeid}: {why}")
    warm_up(suite, paths)
    logs = args.workdir.resolve() / "logs"
    logs.mkdir(exist_ok=True)
    runs: list[Run] = []
    for index in range(args.runs):
        # Alternate which variant goes first, so a drift in machine load hits both alike.
        order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            log = logs / f"{variant}-{index}.log"
            run = run_suite(suite, variant, paths, KNOWN_FAILING, args.xdist, log, args.timeout)
            runs.append(run)
            print(
                f"  run {index + 1}/{args.runs} {variant:<7} plugin: {run.wall:7.1f} s wall, "
                f"{run.cpu:7.1f} s CPU, exit {run.returncode}, {len(run.outcomes)} tests",
                flush=True,
            )
    return summarize(suite, runs, args.xdist)


if __name__ == "__main__":
    sys.exit(main())
