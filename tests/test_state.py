"""Registry naming, and the session root's shared index."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_leanhost.plugin.state import SessionState, nodeid_of_registry_name, registry_name


def test_a_registry_name_maps_back_to_its_node_id() -> None:
    nodeid = "tests/test_x.py::TestY::test_z[a/b-c:d ü]"
    name = registry_name(nodeid)
    assert "/" not in name
    assert nodeid_of_registry_name(name) == nodeid


def test_a_long_node_id_gets_a_short_name_found_through_the_index(tmp_path: Path) -> None:
    nodeid = "tests/test_x.py::test_param[" + "x" * 400 + "]"
    name = registry_name(nodeid)
    assert len(name.encode()) < 255
    assert nodeid_of_registry_name(name) is None
    writer = SessionState("lh-1", tmp_path, worker="gw0")
    path = writer.registry_for(nodeid, create=True)
    reader = SessionState("lh-1", tmp_path)  # the controller knows nothing of gw0's tests
    assert reader.all_registries() == {str(path): nodeid}


def test_a_test_without_a_server_leaves_no_directory(tmp_path: Path) -> None:
    state = SessionState("lh-1", tmp_path)
    path = state.registry_path("tests/test_x.py::test_idle")
    assert not os.path.exists(path)
    assert state.own_registries() == {}
    assert state.all_registries() == {}


def test_worker_pids_are_shared_through_the_session_root(tmp_path: Path) -> None:
    SessionState("lh-1", tmp_path, worker="gw0").register_worker("gw0", 11)
    SessionState("lh-1", tmp_path, worker="gw1").register_worker("gw1", 12)
    assert SessionState("lh-1", tmp_path).worker_pids() == {11, 12}
    assert not list(tmp_path.glob("*.tmp"))
