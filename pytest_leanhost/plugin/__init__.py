"""The pytest plugin ``leanhost``: isolated registries, server fixtures and the leak check.

This module holds the entry hooks only: options, then configure (settings
validated, one :class:`~pytest_leanhost.plugin.session.LeanhostSession` per
pytest process, and, only when pytest-xdist is loaded, its worker or controller
side from :mod:`pytest_leanhost.plugin.xdist`; only when pytest-html writes a
report, :mod:`pytest_leanhost.plugin.html`). The session object's hooks do
the rest, in the order pytest calls them.
"""

from __future__ import annotations

import pytest

from pytest_leanhost.core.kinds import LEAK_KINDS
from pytest_leanhost.plugin.fixtures import (
    leanhost_doctor,
    leanhost_env,
    leanhost_registry,
    leanhost_server,
    leanhost_server_command,
)
from pytest_leanhost.plugin.session import LeanhostSession
from pytest_leanhost.plugin.settings import SETTINGS_KEY, add_options, read_settings

__all__ = [
    "leanhost_doctor",
    "leanhost_env",
    "leanhost_registry",
    "leanhost_server",
    "leanhost_server_command",
]

_ALLOW_MARKER = (
    "leanhost_allow(*kinds): let this test leave the named leak kinds ("
    + ", ".join(LEAK_KINDS)
    + "; none named: all kinds); they are still cleaned up and reported, but do not fail the run"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``leanhost`` option group and ini values."""
    add_options(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Validate the settings and register the session object (and its xdist side)."""
    config.addinivalue_line("markers", _ALLOW_MARKER)
    settings = read_settings(config)
    config.stash[SETTINGS_KEY] = settings
    worker = controller = None
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_leanhost.plugin.xdist import XdistController, XdistWorker

        worker = XdistWorker.of(config)
        if worker is None and not hasattr(config, "workerinput"):
            controller = XdistController()
            config.pluginmanager.register(controller, "leanhost-xdist")
    session = LeanhostSession(config, settings, worker=worker, controller=controller)
    config.pluginmanager.register(session, "leanhost-session")
    if not config.pluginmanager.has_plugin("terminalreporter"):
        # Rule: the phases come from pytest's reports, which only the terminal reporter keeps.
        from pytest_leanhost.plugin.phases import PhaseHooks

        config.pluginmanager.register(PhaseHooks(session.phases), "leanhost-phases")
    if settings.check == "test":
        from pytest_leanhost.plugin.pertest import PerTestCheck

        config.pluginmanager.register(PerTestCheck(session.leak_check), "leanhost-pertest")
    if hasattr(config.hook, "pytest_html_results_summary") and config.getoption("htmlpath", None):
        # Rule: without pytest-html writing a report, nothing of it (or of ours for it) loads.
        # Its hooks exist once its plugin is registered, by whichever name it was loaded.
        from pytest_leanhost.plugin.html import LeanhostHtml

        config.pluginmanager.register(LeanhostHtml(), "leanhost-html")
