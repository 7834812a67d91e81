"""Capture every example output the documentation shows, from real runs.

    .venv/bin/python docs/capture_examples.py

Runs real inner suites (``examples/leaky``, ``examples/refserver_suite`` and the
suites under ``docs/suites/``) with the plugin, and the ``leanhost`` command, in a
temporary project whose ``HOME`` and ``XDG_CACHE_HOME`` are temporary too, so
nothing touches your own registry or session ledger. It writes what they print
into ``docs/captured/`` (the pages include those files) and into the README's
``<!-- captured:NAME -->`` blocks. Run it again to regenerate them; commit the
result. Nothing in those files is typed by hand: the only edit is replacing the
temporary paths with the ones a user would see (``~/project``, ``/home/me``,
``/tmp/pytest-of-me/pytest-0``), so the examples do not change with the machine.

Each run is checked for what it must show (exit status, leak kinds, escape
words); a run that does not show it stops the script with one line saying what.
The only process it ever signals is a pytest it started itself (the "killed
outright" example); what that run left is stopped by ``leanhost doctor sessions
--terminate``, and the script checks that it is gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CAPTURED = HERE / "captured"
README = ROOT / "README.md"

KINDS = ("stale_record", "orphaned_server", "leaked_server", "leaked_process", "corrupt_record")
ESCAPES = ("environment_dropped", "new_session", "new_process_group", "reparented", "daemonized")
_FINDING = re.compile(rf"^ *(?:└─ )?({'|'.join(KINDS)}) ")


class CaptureError(RuntimeError):
    """A run that did not show what its example must show."""


class Workspace:
    """A temporary project, home and cache; every command runs there, every path is masked."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.project = base / "project"
        self.home = base / "home"
        self.tmp = base / "tmp"
        self.project.mkdir()
        self.home.mkdir(mode=0o700)
        self.tmp.mkdir()
        for suite in ("leaky", "refserver_suite"):
            shutil.copytree(ROOT / "examples" / suite, self.project / "examples" / suite)
        for suite in ("escapes", "pertest", "killed", "contract"):
            shutil.copytree(HERE / "suites" / suite, self.project / "tests" / suite)
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("LEANHOST_", "PYTEST_", "GITHUB_"))
            and name not in ("LEAN_HOST_MCP_PROCESS_REGISTRY_DIR", "CI", "PYTHONPATH")
        }
        env.update(
            HOME=str(self.home),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            COLUMNS="80",
            TMPDIR=str(self.tmp),  # pytest's own base temp goes there
            PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        )
        return env

    def mask(self, text: str) -> str:
        """The output with the temporary paths replaced by the ones a user would see."""
        text = re.sub(
            rf"{re.escape(str(self.tmp))}/pytest-of-[^/]+/pytest-\d+",
            "/tmp/pytest-of-me/pytest-0",
            text,
        )
        for real, shown in (
            (str(self.project), "~/project"),
            (str(self.home), "/home/me"),
            (sys.prefix, "~/project/.venv"),
        ):
            text = text.replace(real, shown)
        return text

    def run(self, args: Sequence[str], *, expect: int, env: dict[str, str] | None = None) -> str:
        """Run a command in the project; its masked output, or an error on another status."""
        done = subprocess.run(
            list(args),
            cwd=self.project,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != expect:
            raise CaptureError(
                f"{' '.join(args)}: exit status {done.returncode}, expected {expect}\n{done.stdout}"
            )
        return self.mask(done.stdout)

    def pytest(self, *args: str, expect: int, env: dict[str, str] | None = None) -> str:
        command = [sys.executable, "-m", "pytest", "-p", "leanhost"]
        return self.run([*command, *args], expect=expect, env=env)

    def leanhost(self, *args: str, expect: int = 0) -> str:
        return self.run([str(Path(sys.executable).parent / "leanhost"), *args], expect=expect)


def section(output: str, title: str) -> str:
    """A terminal summary section (``=== title ===``) through the end of the output."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if re.fullmatch(rf"=+ {re.escape(title)} =+", line):
            return "\n".join(lines[index:]) + "\n"
    raise CaptureError(f"no '{title}' section in:\n{output}")


def section_only(output: str, title: str) -> str:
    """One section, up to the next separator line."""
    lines = section(output, title).splitlines()
    end = next(
        (i for i, line in enumerate(lines[1:], 1) if re.fullmatch(r"={3,} .* ={3,}", line)),
        len(lines),
    )
    return "\n".join(lines[:end]) + "\n"


def finding_blocks(output: str) -> list[str]:
    """Each finding of a ``leanhost`` section: its first line and the indented lines under it."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in output.splitlines():
        if _FINDING.match(line):
            current = [line]
            blocks.append(current)
        elif current is not None and line.startswith(" "):
            current.append(line)
        else:
            current = None
    return ["\n".join(block) + "\n" for block in blocks]


def write(name: str, text: str) -> None:
    (CAPTURED / name).write_text(text, encoding="utf-8")
    print(f"  docs/captured/{name}: {len(text.splitlines())} lines")


def capture_leaky(ws: Workspace) -> list[str]:
    report = ws.project / "report.json"
    out = ws.pytest("examples/leaky", "--leanhost-report=report.json", expect=1)
    if "leanhost: 9 leak(s) failed the run" not in out:
        raise CaptureError(f"examples/leaky did not report its 9 leaks:\n{out}")
    write("leaky-session.txt", f"$ pytest -p leanhost examples/leaky\n{section(out, 'leanhost')}")
    document = json.loads(report.read_text())
    first = next(f for f in document["findings"] if f["kind"] == "leaked_server")
    document["findings"] = [first]
    write("report.json", ws.mask(json.dumps(document, indent=2)) + "\n")
    excerpt = _readme_excerpt(section(out, "leanhost"))
    _readme_block("leaky", excerpt)
    write("leaky-excerpt.txt", excerpt + "\n")
    return finding_blocks(section(out, "leanhost"))


def _readme_excerpt(summary: str) -> str:
    """Three tests' leaks of the leaky run and its closing lines, for the README."""
    keep = ("test_leaked_server[stdio]", "test_leaked_process[stdio]", "test_stale_record[stdio]")
    lines = summary.splitlines()
    out = [lines[0]]
    keeping = False
    for line in lines[1:]:
        if line.endswith(" leak(s)") and not line.startswith(" "):
            keeping = any(f"::{name}:" in line for name in keep)
        elif line.startswith(("leanhost: ", "=")):
            keeping = True
        if keeping:
            out.append(line)
    return "$ pytest -p leanhost examples/leaky    # 3 of its 9 leaks shown\n" + "\n".join(out)


def _readme_block(name: str, text: str) -> None:
    readme = README.read_text(encoding="utf-8")
    pattern = re.compile(
        rf"(<!-- captured:{name} -->\n```text\n).*?(\n```\n<!-- /captured -->)", re.DOTALL
    )
    if not pattern.search(readme):
        raise CaptureError(f"README.md has no <!-- captured:{name} --> block")
    README.write_text(pattern.sub(lambda m: m.group(1) + text + m.group(2), readme), "utf-8")
    print(f"  README.md: block {name}")


def capture_ci(ws: Workspace) -> None:
    junit = ws.project / "junit.xml"
    out = ws.pytest(
        "examples/leaky", "--junitxml=junit.xml", expect=1, env={"GITHUB_ACTIONS": "true"}
    )
    annotations = [line for line in out.splitlines() if line.startswith("::error ")]
    if len(annotations) != 9:
        raise CaptureError(f"expected 9 ::error annotations:\n{out}")
    write("github-annotations.txt", "\n".join(annotations[:3]) + "\n")
    xml = ws.mask(junit.read_text())
    case = re.search(r"<testcase classname=\"leanhost\".*?</testcase>", xml, re.DOTALL)
    if case is None:
        raise CaptureError(f"no leanhost test case in the JUnit XML:\n{xml}")
    text = case.group(0)
    text = re.sub(
        r"(<properties>)(<property [^>]*/>)(<property [^>]*/>).*?(</properties>)",
        r"\1\n  \2\n  \3\n  ...\n\4",
        text,
        flags=re.DOTALL,
    )
    write("junit-case.xml", text.split("<failure")[0].rstrip() + "\n")


def capture_xdist(ws: Workspace) -> None:
    out = ws.pytest("examples/leaky", "-p", "xdist", "-n", "2", expect=1)
    if not re.search(r" worker=gw[01]", out):
        raise CaptureError(f"no worker named under -n 2:\n{out}")
    summary = section(out, "leanhost")
    blocks = [b for b in finding_blocks(summary) if b.startswith("leaked_server")]
    tail = [line for line in summary.splitlines() if line.startswith(("leanhost: ", "="))][-2:]
    write(
        "xdist.txt",
        "$ pytest -p leanhost examples/leaky -p xdist -n 2\n...\n"
        + blocks[0]
        + "...\n"
        + "\n".join(tail)
        + "\n",
    )


def capture_escapes(ws: Workspace) -> list[str]:
    out = ws.pytest("tests/escapes", expect=1)
    summary = section(out, "leanhost")
    write("escapes-session.txt", f"$ pytest -p leanhost tests/escapes\n{summary}")
    return finding_blocks(summary)


def capture_pertest(ws: Workspace) -> None:
    out = ws.pytest("tests/pertest", "--leanhost-check=test", expect=1)
    if "ERROR at teardown of test_forgets_a_child" not in out:
        raise CaptureError(f"no teardown error in the per-test run:\n{out}")
    last = out.rstrip().splitlines()[-1]
    write(
        "pertest.txt",
        "$ pytest -p leanhost tests/pertest --leanhost-check=test\n"
        + section_only(out, "ERRORS")
        + "...\n"
        + last
        + "\n",
    )


def capture_contract(ws: Workspace) -> None:
    out = ws.pytest("tests/contract", "-o", "leanhost_shutdown_timeout=1", expect=1)
    if "rule 3:" not in out or "rule 2:" not in out:
        raise CaptureError(f"the contract run did not break rules 2 and 3:\n{out}")
    write(
        "contract.txt",
        "$ pytest -p leanhost tests/contract -o leanhost_shutdown_timeout=1\n"
        + section_only(out, "ERRORS"),
    )


def capture_clean(ws: Workspace) -> None:
    out = ws.pytest("examples/refserver_suite", expect=0)
    tail = [line for line in out.splitlines() if line.strip()][-2:]
    if not tail[0].startswith("leanhost: no leaks ("):
        raise CaptureError(f"a clean run without its 'no leaks' line:\n{out}")
    write(
        "clean-run.txt",
        "$ pytest -p leanhost examples/refserver_suite\n...\n" + "\n".join(tail) + "\n",
    )


def capture_doctor_section(ws: Workspace) -> None:
    out = ws.pytest("examples/refserver_suite", "--leanhost-doctor", expect=0)
    write(
        "doctor-section.txt",
        "$ pytest -p leanhost examples/refserver_suite --leanhost-doctor\n"
        + section(out, "leanhost doctor"),
    )


def capture_doctor_processes(ws: Workspace) -> None:
    from pytest_leanhost.client.spawn import spawn_server
    from pytest_leanhost.plugin.fixtures import reference_server_command

    registry = ws.home / ".cache" / "lean-host-mcp" / "processes"
    env = {**ws.env, "LEAN_HOST_MCP_PROCESS_REGISTRY_DIR": str(registry)}
    with spawn_server(
        reference_server_command(), registry=registry, env=env, cwd=ws.project
    ) as dead:
        dead.kill()  # SIGKILL: its record stays, a stale record
        dead.stop()
    with spawn_server(
        reference_server_command(), transport="http", registry=registry, env=env, cwd=ws.project
    ) as live:
        live.initialize()
        live.call_tool("spawn_worker", {})
        time.sleep(0.2)
        listing = ws.leanhost("doctor", "processes")
        cleaned = ws.leanhost("doctor", "processes", "--cleanup-stale-records")
        live.stop()
    if "stale_record_cleanup=" not in listing or "child_pids=" not in listing:
        raise CaptureError(f"the doctor listing lacks a stale record or a child:\n{listing}")
    write(
        "doctor-processes.txt",
        f"$ leanhost doctor processes\n{listing}"
        f"$ leanhost doctor processes --cleanup-stale-records\n{cleaned}",
    )


def capture_earlier_run(ws: Workspace) -> None:
    ready = ws.base / "ready"
    command = [sys.executable, "-m", "pytest", "-p", "leanhost", "tests/killed"]
    killed = subprocess.Popen(
        command,
        cwd=ws.project,
        env={**ws.env, "LEANHOST_DOCS_READY": str(ready)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() or not ready.read_text():
            if time.monotonic() > deadline or killed.poll() is not None:
                raise CaptureError("the run to be killed never started its child")
            time.sleep(0.05)
        child = psutil.Process(int(ready.read_text()))
    finally:
        killed.send_signal(signal.SIGKILL)  # our own child, as an OOM kill or a CI timeout would
        killed.wait(30)
    listing = ws.leanhost("doctor", "sessions")
    shutil.rmtree(ws.project / "tests" / "killed")
    out = ws.pytest("examples/refserver_suite", expect=0)
    stopped = ws.leanhost("doctor", "sessions", "--terminate")
    if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
        raise CaptureError(f"leanhost doctor sessions --terminate left pid {child.pid}:\n{stopped}")
    write(
        "earlier-sessions.txt",
        f"$ leanhost doctor sessions\n{listing}$ leanhost doctor sessions --terminate\n{stopped}",
    )
    write(
        "earlier-run.txt",
        "$ pytest -p leanhost examples/refserver_suite\n"
        + section_only(out, "leanhost: left by an earlier run"),
    )


def examples_per_word(blocks: list[str]) -> None:
    """One finding per leak kind and per escape word, for the troubleshooting page."""
    for kind in KINDS:
        found = next((b for b in blocks if b.startswith(kind)), None)
        if found is None:
            raise CaptureError(f"no captured finding of kind {kind}")
        write(f"kind-{kind}.txt", found)
    for word in ESCAPES:
        found = next((b for b in blocks if re.search(rf"escaped=(\S+,)?{word}\b", b)), None)
        if found is None:
            raise CaptureError(f"no captured finding that escaped by {word}")
        write(f"escape-{word}.txt", found)


def main() -> int:
    CAPTURED.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="leanhost-docs-") as temporary:
        ws = Workspace(Path(temporary))
        try:
            print("examples/leaky")
            blocks = capture_leaky(ws)
            print("examples/leaky, as on GitHub Actions, with JUnit XML")
            capture_ci(ws)
            print("examples/leaky under pytest-xdist")
            capture_xdist(ws)
            print("tests/escapes")
            blocks += capture_escapes(ws)
            examples_per_word(blocks)
            print("tests/pertest with --leanhost-check=test")
            capture_pertest(ws)
            print("tests/contract")
            capture_contract(ws)
            print("examples/refserver_suite")
            capture_clean(ws)
            print("examples/refserver_suite with --leanhost-doctor")
            capture_doctor_section(ws)
            print("leanhost doctor processes")
            capture_doctor_processes(ws)
            print("a run killed outright, then the next run")
            capture_earlier_run(ws)
        except CaptureError as exc:
            print(f"capture_examples: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
