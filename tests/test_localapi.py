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
with local_prefect_api() as api:
    print(api.wait())
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
    # Nothing this Prefect home started outlives the test (a server orphaned by its watchdog would).
    deadline = time.monotonic() + 60
    while (left := _processes_of(tmp_path / "prefect-home")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of this Prefect home still run: {left}"


def _processes_of(home: Path) -> list[int]:
    needle = f"PREFECT_HOME={home}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_second_run_reuses_the_local_prefect_api_and_it_stops_when_idle(
        private_api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_PREFECT_API_IDLE_S", "3")  # read by the watchdog process it starts
    with local_prefect_api() as api:
        first = api.wait()
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
    with local_prefect_api() as api:  # the next run, within the idle time, reuses it
        assert not api.started and api.wait() == first
    assert json.loads((api_state_dir() / "state.json").read_text())["pid"] == state["pid"]
    assert _wait_down(first, int(state["pid"]), 120), "the idle local Prefect API did not stop"
    assert not (api_state_dir() / "state.json").exists()


def test_a_set_api_url_or_embedded_mode_starts_nothing(private_api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with local_prefect_api() as api:
        assert api.url is None and api.wait() is None
        assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("FMBENCH_PREFECT_API", "embedded")
    with local_prefect_api() as api:
        assert api.wait() is None and "PREFECT_API_URL" not in os.environ
    assert not (api_state_dir() / "state.json").exists()


def test_a_run_that_starts_while_the_server_is_still_starting_shares_it(private_api: Path) -> None:
    with local_prefect_api() as api:
        assert api.started and api.url  # spawned, not waited for: the run goes on meanwhile
        state = json.loads((api_state_dir() / "state.json").read_text())
        assert state["ready"] is False
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        second = subprocess.run([sys.executable, "-c", _ENTER], env=env, capture_output=True, text=True,
                                timeout=300, check=True).stdout.split()[-1]
        assert second == api.url  # it waited for the same server instead of starting another
        assert api.wait() == api.url and _healthy(api.url)
    state_after = json.loads((api_state_dir() / "state.json").read_text())
    assert state_after["pid"] == state["pid"] and state_after["ready"] is True


def test_a_server_that_does_not_come_up_leaves_the_run_on_the_embedded_one(
        private_api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_PREFECT_API_STARTUP_S", "0.01")
    with local_prefect_api() as api:
        url, pid = api.url, json.loads((api_state_dir() / "state.json").read_text())["pid"]
        assert url and api.wait() is None
        assert "PREFECT_API_URL" not in os.environ and api.url is None
    assert _wait_down(str(url), int(pid), 60), "the server that missed its startup time was not stopped"


_RUN_CONFIG = """
name: localapi
tokenizer: cl100k_base
output: {output}
buckets: [[1, 500]]
datasets:
  - {{name: synthetic, source: synthetic, prompts_per_bucket: 2, seed: 0}}
experiments:
  - name: sim
    endpoint: {{provider: simulated, ttft_ms: 5, tpot_ms: 1, output_tokens: 4, max_batch: 8}}
    inference: {{max_tokens: 4, stream: true}}
    concurrency_levels: [1]
    requests_per_level: 2
    warmup_requests: 0
"""


def test_fmbench_run_on_the_local_api_and_on_the_embedded_one_when_it_does_not_come_up(private_api: Path) -> None:
    cfg = private_api / "run.yml"
    cfg.write_text(_RUN_CONFIG.format(output=private_api / "results"))
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PYTHONPATH": str(root), "FMBENCH_CALIBRATION_LOAD_TOLERANCE": "1000"}

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", "run", str(cfg), "--no-png"], cwd=root,
                              env=env | extra, capture_output=True, text=True, timeout=600, check=False)

    first = run()
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Prefect API: starting a local server" in first.stderr
    url = json.loads((api_state_dir() / "state.json").read_text())["url"]
    with urllib.request.urlopen(urllib.request.Request(  # the flow run was recorded by that server
            f"{url}/api/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"})) as resp:
        assert [r["state_type"] for r in json.loads(resp.read())] == ["COMPLETED"]
    assert stop_local_api()
    second = run(FMBENCH_PREFECT_API_STARTUP_S="0.01")  # the next server misses its start: embedded
    assert second.returncode == 0, second.stderr[-2000:]
    assert "using the embedded one" in second.stderr and "Report: " in second.stdout
    assert len(list((private_api / "results" / "localapi").iterdir())) == 2


def test_a_watchdog_killed_while_its_server_starts_takes_the_server_with_it(private_api: Path) -> None:
    with local_prefect_api() as api:
        watchdog = int(json.loads((api_state_dir() / "state.json").read_text())["pid"])
        deadline = time.monotonic() + 60
        while len(_processes_of(private_api / "prefect-home")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the watchdog has started the server (not yet answering)
        assert len(_processes_of(private_api / "prefect-home")) >= 2
        os.kill(watchdog, 9)  # no handler runs: only the kernel can stop the server now
        assert api.wait() is None  # the run goes on with the embedded server
    # the fixture checks that no process of this Prefect home is left
