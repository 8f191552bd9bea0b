"""The simulated endpoint over https (``--tls-cert``/``--tls-key``): an https endpoint for dry runs and
for measuring the client over TLS. Its answers and its timing model are the plain server's; the
client's receive stamps are the kernel's on every connection."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest

from fmbench.config import InferenceConfig, SimulatedEndpoint
from fmbench.endpoints.openai import OpenAIClient
from fmbench.errors import DeploymentError
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.protocol import Prompt
from fmbench.simulator.process import SimulatedServerProcess
from tests.support.tls import self_signed

TTFT_MS, TPOT_MS, TOKENS = 40.0, 4.0, 20
CFG = SimulatedEndpoint(provider="simulated", ttft_ms=TTFT_MS, tpot_ms=TPOT_MS, output_tokens=TOKENS, max_batch=8)
PROMPTS = [Prompt(f"p{i}", f"a prompt about certificates {i}", 6) for i in range(4)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel receive stamps are Linux's")
def test_the_simulator_serves_https_and_the_client_measures_it_like_plain_http(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    with SimulatedServerProcess(CFG, extra_args=["--tls-cert", str(cert), "--tls-key", str(key)]) as sim:
        assert sim.url is not None and sim.url.startswith("https://127.0.0.1:")
        client = OpenAIClient(f"{sim.url}/v1", CFG.model, inference=InferenceConfig(stream=True, max_tokens=TOKENS),
                              ca_bundle=str(cert))
        spec = ShardSpec(shard_id="tls", experiment="e", dataset="d", bucket="b", bucket_min=0, bucket_max=1,
                         concurrency=4, requests=24, warmup=2)
        res = run_shard(client, PROMPTS, spec, tmp_path / "r.parquet", len)
    assert res.errors == 0
    assert res.receive_stamps is not None and res.receive_stamps["event_loop"] == 0
    df = pl.read_parquet(tmp_path / "r.parquet").filter(~pl.col("warmup"))
    assert (df["output_tokens"] == TOKENS).all() and (df["chunks"] == TOKENS).all()
    # the model's timing: no first token before its TTFT, no token faster than its pace
    assert df["ttft_s"].min() >= TTFT_MS / 1000 * 0.95
    assert df["tpot_s"].median() >= TPOT_MS / 1000 * 0.95


def test_a_certificate_that_cannot_be_loaded_stops_the_start_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    server = SimulatedServerProcess(CFG, extra_args=["--tls-cert", str(missing), "--tls-key", str(missing)])
    with pytest.raises(DeploymentError, match="cannot load the TLS certificate"):
        server.start()
    assert not server.running
