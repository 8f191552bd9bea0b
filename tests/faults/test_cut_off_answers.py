"""An answer the endpoint began and then broke off (reset mid-body) is the endpoint failing that answer,
counted in the error rate, not a failure to connect: the shard stands, nothing is measured again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import polars as pl
import pytest

from fmbench.config import InferenceConfig, load_config_text
from fmbench.endpoints import make_client
from fmbench.errors import EndpointConnectionError, EndpointProtocolError
from fmbench.protocol import Prompt
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.process import SimulatedServerProcess
from tests.support.sim_shards import SIM, run_sim_shard, server_faults

RESET = FaultConfig(reset_rate=1.0)


def test_a_stream_reset_after_its_headers_is_a_cut_off_answer(tmp_path: Path) -> None:
    with SimulatedServerProcess(SIM, faults=RESET) as server:
        assert server.url
        result, records = run_sim_shard(server.url, tmp_path / "r.parquet", requests=6, concurrency=2)
        assert server_faults(server.url) == {"reset": 6}
    assert result.errors == 6 and not records["ok"].any()
    assert set(records["error_kind"].to_list()) == {"protocol"}
    assert all(e.startswith("answer cut off") for e in records["error"].to_list())
    assert records["resends"].sum() == 0  # not the stale-connection resend: the answer had begun


def test_a_reset_before_any_byte_of_the_answer_stays_a_connection_failure() -> None:
    # Without streaming, the simulator resets before the status line: nothing of an answer arrived.
    async def go(stream: bool) -> None:
        client = make_client(SIM, InferenceConfig(max_tokens=8, stream=stream, timeout_s=5), url=url)
        await client.open(1)
        try:
            await client.complete(Prompt("p", "hello there", 2))
        finally:
            await client.close()

    with SimulatedServerProcess(SIM, faults=RESET) as server:
        assert server.url
        url = server.url
        with pytest.raises(EndpointConnectionError) as before:
            asyncio.run(go(stream=False))
        with pytest.raises(EndpointProtocolError) as during:
            asyncio.run(go(stream=True))
    assert before.value.kind == "connection"
    assert during.value.kind == "protocol" and "answer cut off" in str(during.value)


CONFIG = """\
name: cut
output: {out}
buckets: [[1, 200]]
datasets:
  - {{name: syn, source: synthetic, prompts_per_bucket: 4, seed: 0}}
experiments:
  - name: reset
    endpoint: {{provider: simulated, ttft_ms: 10, tpot_ms: 1, output_tokens: 8, faults: {{reset_rate: 1.0}}}}
    inference: {{max_tokens: 8}}
    concurrency_levels: [2]
    requests_per_level: 6
    warmup_requests: 1
    pricing: {{hourly_usd: 1.0}}
slo: {{latency_p95_s: 5.0, max_error_rate: 0.0}}
"""


def test_a_shard_whose_every_answer_is_cut_off_is_measured_once_with_its_error_rate(tmp_path: Path) -> None:
    from fmbench.pipeline import run_benchmark

    cfg = load_config_text(CONFIG.format(out=tmp_path / "results"), source="cut.yml")
    report = Path(run_benchmark(cfg, run_id="r", png=False))
    run = report.parent
    [shard] = json.loads((run / "manifest.json").read_text())["shards"]
    assert shard["status"] == "ok" and shard["requests"] == 6 and shard["errors"] == 6, shard
    assert not list((run / "shards").glob("*.failed-*.parquet"))  # not taken for an endpoint that is down
    metrics = pl.read_parquet(run / "metrics.parquet")
    assert metrics["error_rate"].to_list() == [1.0]
    requests = pl.read_parquet(run / "requests.parquet")
    assert requests.height == 7 and set(requests["error_kind"].to_list()) == {"protocol"}  # warm-up included
    text = report.read_text()
    assert "failed to connect" not in text and "not considered" not in text
    assert "| reset | 7 |" in text  # the cost table's requests sent
