"""The client against uvicorn, the HTTP server of vLLM's OpenAI server, closing idle connections.

uvicorn closes a keep-alive connection idle for ``timeout_keep_alive`` (vLLM: 5 s) and says nothing
of it beforehand: no ``Keep-Alive`` header. Under open-loop (Poisson) traffic many pooled
connections sit idle about that long, so the client meets closed and closing connections all the
time; none may cost a request. Here the timeout is 0.2 s and requests arrive 5 a second, so about a
third of the gaps between them are longer than it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from fmbench.config import InferenceConfig
from fmbench.endpoints.openai import OpenAIClient
from fmbench.loadgen import run_shard
from fmbench.loadgen.spec import ShardSpec
from fmbench.protocol import Prompt
from tests.support.uvicorn_openai import FIRST_TOKEN_S, TOKENS, UvicornServer

REQUESTS = 60


@pytest.fixture(scope="module")
def uvicorn_url() -> Iterator[str]:
    with UvicornServer(keep_alive_s=0.2) as server:
        yield server.url


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_connections_uvicorn_closes_when_idle_never_cost_a_request(uvicorn_url: str, stream: bool,
                                                                   tmp_path: Path) -> None:
    client = OpenAIClient(uvicorn_url, "m", inference=InferenceConfig(stream=stream, max_tokens=TOKENS))
    spec = ShardSpec(shard_id="uv", experiment="vllm-like", dataset="d", bucket="b", bucket_min=0, bucket_max=10,
                     request_rate=5.0, requests=REQUESTS, warmup=0, seed=3)
    res = run_shard(client, [Prompt("p", "hello", 1)], spec, tmp_path / "r.parquet", len)
    records = pl.read_parquet(tmp_path / "r.parquet")
    failed = records.filter(~pl.col("ok")).select("error_kind", "error").rows()
    assert res.errors == 0 and not failed, failed
    assert records.height == REQUESTS and records["output_tokens"].to_list() == [TOKENS] * REQUESTS
    assert records["usage_source"].unique().to_list() == ["server"]
    # the server's wait is in every TTFT, and a streamed answer's tokens are its chunks
    assert records["ttft_s"].min() >= FIRST_TOKEN_S
    if stream:
        assert records["chunks"].to_list() == [TOKENS] * REQUESTS
    # What the test is about happened: uvicorn closed idle connections (the client opened new ones
    # again and again) and others were reused. Each connection's answers were kernel-stamped.
    assert res.receive_stamps is not None and res.receive_stamps["event_loop"] == 0
    connections = res.receive_stamps["kernel"]
    assert 8 <= connections < REQUESTS, connections
