"""The same injected faults on the simulated SageMaker and Bedrock routes, through boto3: every
request has exactly one record and each fault lands on the error kind its AWS shape implies."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fmbench.config import BedrockEndpoint, InferenceConfig, SageMakerEndpoint
from fmbench.endpoints import make_client
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.process import SimulatedServerProcess
from tests.support.sim_shards import PROMPTS, SIM, server_faults

REQUESTS = 80
FAULTS = FaultConfig(seed=9, http_500_rate=0.08, http_503_rate=0.08, throttle_rate=0.08, retry_after_s=0.2,
                     hang_rate=0.05, reset_rate=0.08, malformed_rate=0.08, truncated_rate=0.08,
                     slow_first_byte_rate=0.08, slow_first_byte_s=0.2)


@pytest.fixture(autouse=True)
def dummy_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing reaches AWS


def _endpoint(provider: str, url: str) -> Any:
    if provider == "bedrock":
        return BedrockEndpoint(provider="bedrock", region="us-east-1", runtime_endpoint_url=url,
                               model_id="meta.llama3-8b-instruct-v1:0", throttle_retries=0)
    return SageMakerEndpoint(provider="sagemaker", region="us-east-1", runtime_endpoint_url=url,
                             endpoint_name="sim", payload="tgi")


@pytest.mark.parametrize("provider", ["sagemaker", "bedrock"])
def test_aws_routes_account_for_every_fault(provider: str, tmp_path: Path) -> None:
    with SimulatedServerProcess(SIM, faults=FAULTS) as server:
        assert server.url
        client = make_client(_endpoint(provider, server.url), InferenceConfig(max_tokens=8, timeout_s=1.0))
        spec = ShardSpec(shard_id="a", experiment="e", dataset="d", bucket="1-100", bucket_min=1, bucket_max=100,
                         concurrency=8, requests=REQUESTS)
        run_shard(client, PROMPTS, spec, tmp_path / "a.parquet", lambda t: len(t.split()))
        injected = server_faults(server.url)
    records = pl.read_parquet(tmp_path / "a.parquet")
    assert records.height == REQUESTS and sorted(records["request_id"].to_list()) == list(range(REQUESTS))
    assert sum(injected.values()) == REQUESTS  # one server request per record: nothing retried or dropped
    kinds = Counter(records["error_kind"].to_list())
    ok_expected = injected.get("none", 0) + injected.get("slow_first_byte", 0)
    assert kinds[None] == ok_expected, (kinds, injected)
    assert kinds["throttled"] == injected.get("throttle", 0)
    assert kinds["timeout"] == injected.get("hang", 0)
    assert kinds["server_error"] == injected.get("http_500", 0) + injected.get("http_503", 0)
    assert kinds["connection"] + kinds["protocol"] == (
        injected.get("reset", 0) + injected.get("malformed", 0) + injected.get("truncated", 0))
    failed = records.filter(~pl.col("ok"))
    assert failed["error"].null_count() == 0
