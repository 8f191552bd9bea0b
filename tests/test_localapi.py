"""The reusable local Prefect API: started by the first run, reused by the next, stopped when idle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fmbench.localapi import api_state_dir, local_prefect_api, stop_local_api

pytestmark = pytest.mark.integration

_ENTER = """
from fmbench.localapi import local_prefect_api
with local_prefect_api() as url:
    print(url)
"""


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _wait_down(url: str, pid: int, limit_s: float) -> bool:
    # generous: only that it stops is asserted, never how fast
    from fmbench.localapi import _alive

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return not _healthy(url)
        time.sleep(0.5)
    return False


@pytest.fixture
def private_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    (tmp_path / "prefect-home").mkdir()
    monkeypatch.setenv("FMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FMBENCH_PREFECT_API", "reuse")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    yield tmp_path
    stop_local_api()


def test_a_second_run_reuses_the_local_prefect_api_and_it_stops_when_idle(
        private_api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_PREFECT_API_IDLE_S", "3")  # read by the watchdog process it starts
    with local_prefect_api() as first:
        assert first and _healthy(first)
        assert os.environ["PREFECT_API_URL"] == f"{first}/api"
        state = json.loads((api_state_dir() / "state.json").read_text())
        # a run holds a lease while it runs: the idle timer does not stop the server under it
        time.sleep(8)
        assert _healthy(first)
        # a second run (another process) at the same time shares it
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        second = subprocess.run([sys.executable, "-c", _ENTER], env=env, capture_output=True, text=True,
                                timeout=300, check=True).stdout.split()[-1]
        assert second == first
    assert "PREFECT_API_URL" not in os.environ
    with local_prefect_api() as again:  # the next run, within the idle time, reuses it
        assert again == first
    assert json.loads((api_state_dir() / "state.json").read_text())["pid"] == state["pid"]
    assert _wait_down(first, int(state["pid"]), 120), "the idle local Prefect API did not stop"
    assert not (api_state_dir() / "state.json").exists()


def test_a_set_api_url_or_embedded_mode_starts_nothing(private_api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with local_prefect_api() as url:
        assert url is None and os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("FMBENCH_PREFECT_API", "embedded")
    with local_prefect_api() as url:
        assert url is None and "PREFECT_API_URL" not in os.environ
    assert not (api_state_dir() / "state.json").exists()
