"""Fixtures for flow and CLI tests: an environment for `fmbench` subprocesses with their own
(shared, already migrated) Prefect home."""

from __future__ import annotations

import os

import pytest

from tests.support.cli import ROOT


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for `fmbench` subprocesses: their own Prefect home, no Prefect API server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONPATH"] = str(ROOT)
    return env

