"""A real llama.cpp server that hangs mid-shard (SIGSTOP: the kernel still accepts its connections and
takes the requests, nothing answers). Each request would wait out its whole timeout, for hours over a
benchmark, while the endpoint bills. The shard stops sending after a run of requests that got no byte
of an answer, its attempts are set aside like a lost endpoint's, the experiment's other shards are not
sent, and the run says what happened and does not end as a success."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from fmbench.api import run_benchmark
from fmbench.errors import silent_timeout
from fmbench.loadgen.engine import HUNG_MIN_REQUESTS
from fmbench.pipeline.shards import SHARD_RETRIES
from tests.support.llama_server import LlamaServer, llama_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REQUESTS = 40
CONCURRENCY = 2
HANG_AFTER = 6  # answers the server logs before it is stopped


def test_a_server_that_stops_answering_stops_the_shard_and_the_experiment(llama_binary: Path, tiny_model: Path,
                                                                         tmp_path: Path) -> None:
    server = LlamaServer(llama_binary, tiny_model, tmp_path / "server.log", parallel=4, ctx_size=4096)
    stopped = threading.Event()
    try:
        server.wait_ready()
        cfg = llama_config("hung", server, tiny_model, max_tokens=16, timeout_s=2, levels=[CONCURRENCY, 4],
                           requests=REQUESTS)

        def hang() -> None:
            deadline = time.monotonic() + 120
            while len(server.timings()) < HANG_AFTER and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(server.proc.pid, signal.SIGSTOP)
            stopped.set()

        threading.Thread(target=hang, daemon=True).start()
        result = run_benchmark(cfg, output=str(tmp_path / "results"), run_id="r", progress=False, png=False)
        assert stopped.is_set()
    finally:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()
    run = Path(result.run_dir)
    shards = run / "shards"
    first = "llama__syn__40-80__c2"
    attempts = sorted(shards.glob(f"{first}.failed-*.parquet"))
    assert len(attempts) == SHARD_RETRIES + 1  # every attempt found it hung, and each was set aside
    for path in attempts:
        rec = pl.read_parquet(path).sort("t_end")
        # It stopped sending: the requests it had to send were never sent, only a run of silent ones
        # (and those in flight when it stopped) after the answers.
        assert rec.height < REQUESTS
        silent = [silent_timeout(k, e) for k, e in zip(rec["error_kind"].to_list(), rec["error"].to_list(),
                                                       strict=True)]
        assert all(silent[-HUNG_MIN_REQUESTS:]), rec.select("error_kind", "error").tail(8)
        assert sum(silent) < HUNG_MIN_REQUESTS + CONCURRENCY
    assert pl.read_parquet(attempts[0])["ok"].sum() >= 1  # the answers before it hung
    manifest = json.loads((run / "manifest.json").read_text())
    outcomes = {s["shard_id"]: s for s in manifest["shards"]}
    assert outcomes[first]["status"] == "failed" and "stopped answering" in outcomes[first]["error"]
    second = outcomes["llama__syn__40-80__c4"]  # not sent at all: no attempt of it
    assert second["status"] == "failed"
    assert second["error"] == f"not measured: the endpoint stopped answering in shard {first}"
    assert not list(shards.glob("llama__syn__40-80__c4.failed-*"))
    report = (run / "report.md").read_text()
    assert "set aside, the endpoint could not be reached or did not answer" in report
    assert "the endpoint stopped answering" in report
