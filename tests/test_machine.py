"""Machine identity: what a process knows of its machine, and when two are the same."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pytest_leanhost.core.finding import Finding, FindingShapeError
from pytest_leanhost.core.machine import Machine, MachineShapeError, this_machine
from pytest_leanhost.core.summary import finding_line
from tests.remote_machines import unshare_or_skip

HERE = Machine("ci-1", "b0b0b0b0-1111", "pid:[4026531836]", "mnt:[4026531841]")


def test_this_machine_is_read_from_the_kernel() -> None:
    machine = this_machine()
    assert machine.hostname == socket.gethostname()
    if sys.platform.startswith("linux"):
        with open("/proc/sys/kernel/random/boot_id") as handle:
            assert machine.boot_id == handle.read().strip()
        assert machine.pid_namespace == os.readlink("/proc/self/ns/pid")
        assert machine.mount_namespace == os.readlink("/proc/self/ns/mnt")


def test_a_process_in_its_own_namespaces_is_another_machine() -> None:
    """Read inside a real PID, mount and UTS namespace: another host name, another machine."""
    unshare_or_skip()
    code = (
        "import json; from pytest_leanhost.core.machine import this_machine;"
        " print(json.dumps(this_machine().to_json()))"
    )
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--uts", "sh", "-c",
         'hostname remote-1 && exec "$0" -c "$1"', sys.executable, code],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    there = Machine.from_json(json.loads(out))
    here = this_machine()
    assert there.hostname == "remote-1"
    assert there.boot_id == here.boot_id  # one kernel ...
    assert there.pid_namespace != here.pid_namespace  # ... but its own PIDs
    assert there.mount_namespace != here.mount_namespace
    assert not there.same_as(here)


def test_only_a_machine_equal_in_every_part_is_the_same() -> None:
    assert HERE.same_as(Machine(*HERE))
    for changed in [
        HERE._replace(hostname="ci-2"),
        HERE._replace(boot_id="other"),
        HERE._replace(pid_namespace="pid:[4026532176]"),
        HERE._replace(mount_namespace="mnt:[4026532174]"),
        HERE._replace(mount_namespace=None),  # unknown on one side only: not proven the same
    ]:
        assert not changed.same_as(HERE)
        assert not HERE.same_as(changed)


def test_a_label_tells_apart_machines_with_one_host_name() -> None:
    assert HERE._replace(hostname="remote-1").label(HERE) == "remote-1"
    assert HERE._replace(pid_namespace="pid:[4026532176]").label(HERE) == "ci-1(pid:[4026532176])"
    assert HERE._replace(boot_id="9f2c41d0-aaaa").label(HERE) == "ci-1(boot:9f2c41d0)"
    assert HERE.label(HERE) == HERE.label() == "ci-1"


def test_the_json_form_round_trips_and_bad_shapes_are_one_clear_error() -> None:
    assert Machine.from_json(HERE.to_json()) == HERE
    assert Machine.from_json(json.loads(json.dumps(HERE.to_json()))) == HERE
    assert Machine.from_json("remote-1") == Machine("remote-1")
    assert Machine.from_json({"hostname": "r", "later_key": 1}) == Machine("r")
    for bad, words in [
        (7, "not int"),
        ({"boot_id": "x"}, "hostname is None"),
        ({"hostname": ""}, "hostname is ''"),
        ({"hostname": "r", "pid_namespace": 4}, "pid_namespace is 4"),
    ]:
        with pytest.raises(MachineShapeError, match=words):
            Machine.from_json(bad)


def test_a_finding_carries_its_host_and_shows_it_only_when_it_is_not_this_machine() -> None:
    remote = HERE._replace(hostname="remote-1", pid_namespace="pid:[4026532176]")
    finding = Finding(kind="leaked_process", nodeid="t.py::t", pid=4, host=remote)
    assert Finding.from_json(json.loads(json.dumps(finding.to_json()))) == finding
    assert finding.to_json()["host"] == remote.to_json()
    assert finding_line(finding, HERE).endswith(" host=remote-1")
    assert " host=" not in finding_line(finding._replace(host=HERE), HERE)
    assert " host=" not in finding_line(finding._replace(host=None), HERE)
    alike = finding._replace(host=HERE._replace(pid_namespace="pid:[4026532176]"))
    assert finding_line(alike, HERE).endswith(" host=ci-1(pid:[4026532176])")
    # This process's own machine is the default.
    assert " host=" not in finding_line(finding._replace(host=this_machine()))
    with pytest.raises(FindingShapeError, match="hostname"):
        Finding.from_json({**finding.to_json(), "host": {"boot_id": "x"}})
