"""A real llama.cpp server that crashes mid-shard (SIGKILL, as the kernel's OOM killer would) and is
started again, as a supervisor would: the requests after the crash are refused as fast as the
client sends them, so that attempt's error rate and throughput describe the client, not the
server. The shard is measured again once the server is back, and the report says it was lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import polars as pl
import pytest

from fmbench.api import run_benchmark
from tests.support.llama_server import LlamaServer, llama_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REQUESTS = 40
CRASH_AFTER = 8  # answers the server logs before it is killed
SLOTS = 4  # the server's parallel slots: requests in flight when it is killed


def test_a_server_killed_mid_shard_is_measured_again_once_it_is_back(llama_binary: Path, tiny_model: Path,
                                                                      tmp_path: Path) -> None:
    first = LlamaServer(llama_binary, tiny_model, tmp_path / "first.log", parallel=SLOTS, ctx_size=4096)
    servers = [first]
    try:
        first.wait_ready()
        cfg = llama_config("crash", first, tiny_model, max_tokens=32, timeout_s=60, levels=[SLOTS], requests=REQUESTS)
        shards = tmp_path / "results" / "crash" / "r" / "shards"
        failures: list[BaseException] = []

        def crash_and_restart() -> None:
            try:
                deadline = time.monotonic() + 120
                while len(first.timings()) < CRASH_AFTER and time.monotonic() < deadline:
                    time.sleep(0.02)
                first.proc.kill()
                first.proc.wait(10)
                while not list(shards.glob("*.failed-*.parquet")) and time.monotonic() < deadline:
                    time.sleep(0.02)
                again = LlamaServer(llama_binary, tiny_model, tmp_path / "again.log", parallel=SLOTS, ctx_size=4096,
                                    port=first.port)
                servers.append(again)
                again.wait_ready()
            except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
                failures.append(exc)

        supervisor = threading.Thread(target=crash_and_restart, daemon=True)
        supervisor.start()
        result = run_benchmark(cfg, output=str(tmp_path / "results"), run_id="r", progress=False, png=False)
        supervisor.join(60)
        assert not failures, failures
    finally:
        for s in servers:
            s.stop()
    run = Path(result.run_dir)
    lost = sorted(shards.glob("*.failed-*.parquet"))
    assert lost, "the crash cost no attempt"
    # The attempt the crash cut short: answers until the kill, then only requests that failed.
    rec = pl.read_parquet(lost[0]).sort("request_id")
    assert rec.height == REQUESTS
    # The server logs a request's timings as its slot finishes, before the last bytes of the answer
    # are necessarily on the wire: a kill right after can cut off answers still in flight, at most
    # one per slot (a CI run on a loaded machine had 7 of the 8 logged).
    assert rec["ok"].sum() >= CRASH_AFTER - SLOTS
    assert rec.tail(4)["error_kind"].to_list() == ["connection"] * 4
    # The shard in the report is the attempt after the restart: every request answered.
    requests = pl.read_parquet(run / "requests.parquet")
    assert requests.height == REQUESTS and requests["ok"].all(), requests.filter(~pl.col("ok"))["error"].to_list()
    assert len(list(shards.glob("*.failed-*.json"))) == len(lost)
    report = (run / "report.md").read_text()
    assert "set aside, the endpoint could not be reached" in report
    assert "stopped accepting connections after" in report
