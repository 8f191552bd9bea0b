"""BedrockClient through the real boto3 bedrock-runtime client over HTTP to the simulated
endpoint's Converse routes: model id forms, usage, timing accuracy, throttling retries, errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import boto3
import polars as pl
import pytest

from fmbench.config import BedrockEndpoint, InferenceConfig
from fmbench.endpoints import make_client
from fmbench.endpoints.base import Prompt
from fmbench.endpoints.bedrock import BedrockClient, BedrockCompletion
from fmbench.endpoints.simulated.faults import FaultConfig
from fmbench.errors import (
    EndpointConnectionError,
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointThrottled,
    EndpointTimeout,
)

from .conftest import SIM, timing_within_tolerance

PROMPT = Prompt("p0", "Name three rivers of Europe.", 7)
MODEL_IDS = [
    "meta.llama3-8b-instruct-v1:0",
    "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
    "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/a1b2c3d4e5f6",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-1-8b-instruct-v1:0",
]


def _client(url: str, model_id: str = MODEL_IDS[0], retries: int = 3, backoff: float = 0.01,
            **inference: Any) -> BedrockClient:
    return BedrockClient(model_id, InferenceConfig(**inference), runtime_endpoint_url=url,
                         throttle_retries=retries, throttle_backoff_s=backoff)


def _run(client: BedrockClient, n: int = 1) -> list[BedrockCompletion]:
    async def go() -> list[BedrockCompletion]:
        await client.open(1)
        try:
            return [await client.complete(PROMPT) for _ in range(n)]
        finally:
            await client.close()

    return asyncio.run(go())


@pytest.mark.parametrize("stream", [True, False])
def test_converse_reports_text_and_usage(sim_url: str, stream: bool) -> None:
    (c,) = _run(_client(sim_url, stream=stream, max_tokens=9))
    assert len(c.text.split()) == 9
    assert c.output_tokens == 9 and c.input_tokens is not None and c.input_tokens > 0
    assert c.attempts == 1 and c.http_status == 200
    if stream:
        assert len(c.chunk_times) == 9 and c.t_first_token == c.chunk_times[0]
    else:
        assert c.chunk_times == [] and c.t_first_token == c.t_end


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_model_ids_profiles_and_arns_reach_the_server_intact(sim_url: str, model_id: str) -> None:
    rt = boto3.client("bedrock-runtime", endpoint_url=sim_url, region_name="us-east-1")
    msgs = [{"role": "user", "content": [{"text": "hi"}]}]
    resp = rt.converse(modelId=model_id, messages=msgs, inferenceConfig={"maxTokens": 2})
    assert resp["ResponseMetadata"]["HTTPHeaders"]["x-fmbench-model-id"] == model_id
    assert resp["stopReason"] == "max_tokens" and resp["usage"]["outputTokens"] == 2
    (c,) = _run(_client(sim_url, model_id, max_tokens=3))
    assert c.output_tokens == 3


def test_request_parameters() -> None:
    params = _client("http://unused", temperature=0.3, top_p=0.8, max_tokens=5,
                     extra_body={"top_k": 20}).request(PROMPT)
    assert params["inferenceConfig"] == {"maxTokens": 5, "temperature": 0.3, "topP": 0.8}
    assert params["messages"] == [{"role": "user", "content": [{"text": PROMPT.text}]}]
    assert params["additionalModelRequestFields"] == {"top_k": 20}


def test_converse_stream_ttft_and_tpot_match_the_model_at_concurrency_1(sim_url: str) -> None:
    ttft, tpot = timing_within_tolerance(_client(sim_url), PROMPT, sim_url)
    model_ttft, model_tpot = SIM.ttft_ms / 1000, SIM.tpot_ms / 1000
    assert abs(ttft - model_ttft) <= 0.02 * model_ttft + 0.002, f"TTFT {ttft * 1000:.2f} ms"
    assert abs(tpot - model_tpot) <= 0.02 * model_tpot + 0.002, f"TPOT {tpot * 1000:.2f} ms"


def test_throttling_retried_then_raised_with_attempt_count(sim_thread: Any) -> None:
    url = sim_thread(faults=FaultConfig(throttle_rate=1.0))
    t0 = time.monotonic()
    with pytest.raises(EndpointThrottled) as info:
        _run(_client(url, retries=2, backoff=0.02))
    elapsed = time.monotonic() - t0
    assert info.value.attempts == 3  # type: ignore[attr-defined]
    assert "all 3 attempts" in str(info.value) and "ThrottlingException" in str(info.value)
    assert info.value.kind == "throttled" and info.value.status == 429
    assert 0.02 + 0.04 <= elapsed < 3  # both backoffs were waited, nothing more


def test_throttled_then_successful_requests_count_their_attempts(sim_thread: Any) -> None:
    url = sim_thread(faults=FaultConfig(throttle_rate=0.5, seed=11))
    done = _run(_client(url, retries=10, backoff=0.005, max_tokens=3), n=12)
    attempts = [c.attempts for c in done]
    assert all(c.output_tokens == 3 for c in done)
    assert max(attempts) > 1 and min(attempts) == 1
    for c in done:
        if c.attempts > 1:  # latency counts from the first attempt: at least the backoffs
            assert c.t_end - c.t_start >= 0.005


def test_retries_never_outlast_the_request_timeout(sim_thread: Any) -> None:
    url = sim_thread(faults=FaultConfig(throttle_rate=1.0))
    t0 = time.monotonic()
    with pytest.raises(EndpointThrottled) as info:
        _run(_client(url, retries=10, backoff=0.4, timeout_s=1.0))
    assert time.monotonic() - t0 < 3  # far less than 10 retries with doubling backoff
    assert "no time left" in str(info.value) and info.value.attempts < 4  # type: ignore[attr-defined]


def test_zero_retries_raise_on_the_first_throttle(sim_thread: Any) -> None:
    url = sim_thread(faults=FaultConfig(throttle_rate=1.0))
    with pytest.raises(EndpointThrottled) as info:
        _run(_client(url, retries=0))
    assert info.value.attempts == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("faults", "stream", "error", "status"),
    [
        (FaultConfig(http_500_rate=1.0), True, EndpointHTTPError, 500),
        (FaultConfig(http_503_rate=1.0), False, EndpointHTTPError, 503),
        (FaultConfig(malformed_rate=1.0), True, EndpointProtocolError, None),
        (FaultConfig(malformed_rate=1.0), False, EndpointProtocolError, None),
        (FaultConfig(truncated_rate=1.0), True, EndpointProtocolError, None),
        (FaultConfig(reset_rate=1.0), True, EndpointConnectionError, None),
    ],
)
def test_faults_map_to_error_kinds(sim_thread: Any, faults: FaultConfig, stream: bool, error: type,
                                   status: int | None) -> None:
    url = sim_thread(faults=faults)
    with pytest.raises(error) as info:
        _run(_client(url, stream=stream))
    assert type(info.value) is error
    if status is not None:
        assert info.value.status == status  # type: ignore[attr-defined]
    assert MODEL_IDS[0] in str(info.value)


def test_hung_request_times_out(sim_thread: Any) -> None:
    url = sim_thread(faults=FaultConfig(hang_rate=1.0))
    with pytest.raises(EndpointTimeout):
        _run(_client(url, timeout_s=0.5))


def test_throttled_requests_are_recorded_by_the_engine(sim_thread: Any, tmp_path: Path) -> None:
    from fmbench.loadgen import run_shard
    from fmbench.loadgen.spec import ShardSpec

    url = sim_thread(faults=FaultConfig(throttle_rate=0.5, seed=5))
    endpoint = BedrockEndpoint(provider="bedrock", model_id=MODEL_IDS[1], runtime_endpoint_url=url,
                               throttle_retries=1, throttle_backoff_s=0.01)
    client = make_client(endpoint, InferenceConfig(max_tokens=4))
    spec = ShardSpec(shard_id="b1", experiment="br", dataset="d", bucket="1-100", bucket_min=1, bucket_max=100,
                     concurrency=4, requests=40)
    t0 = time.monotonic()
    run_shard(client, [PROMPT], spec, tmp_path / "b1.parquet", lambda text: len(text.split()))
    assert time.monotonic() - t0 < 20  # bounded retries: no request waits on throttling for long
    records = pl.read_parquet(tmp_path / "b1.parquet")
    assert records.height == 40
    throttled = records.filter(pl.col("error_kind") == "throttled")
    ok = records.filter(pl.col("ok"))
    # with one retry at 50 %, about a quarter fail after two throttled attempts
    assert 2 <= throttled.height <= 20 and ok.height + throttled.height == 40
    assert set(ok["usage_source"].to_list()) == {"server"}
    assert all("2 attempts" in e for e in throttled["error"].to_list())


def test_an_error_after_throttled_attempts_says_so(sim_thread: Any) -> None:
    url = sim_thread(faults=FaultConfig(throttle_rate=0.5, http_500_rate=0.5, seed=2))
    client = _client(url, retries=10, backoff=0.002)

    async def go() -> list[BaseException]:
        await client.open(1)
        errors: list[BaseException] = []
        try:
            for _ in range(8):
                try:
                    await client.complete(PROMPT)
                except EndpointHTTPError as exc:
                    errors.append(exc)
        finally:
            await client.close()
        return errors

    errors = asyncio.run(go())
    assert len(errors) == 8 and all(type(e) is EndpointHTTPError and e.status == 500 for e in errors)
    retried = [e for e in errors if e.attempts > 1]  # type: ignore[attr-defined]
    assert retried and all(f"after {e.attempts - 1} throttled" in str(e) for e in retried)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("faults", "error", "kind"),
    [
        (FaultConfig(http_500_rate=1.0), EndpointHTTPError, "server_error"),
        (FaultConfig(throttle_rate=1.0), EndpointThrottled, "throttled"),
    ],
)
def test_exception_events_mid_stream(sim_thread: Any, faults: FaultConfig, error: type, kind: str) -> None:
    url = sim_thread(faults=faults, midstream_errors=True)
    with pytest.raises(error) as info:
        _run(_client(url, retries=1, backoff=0.001))
    assert type(info.value) is error and info.value.kind == kind
    assert "Exception" in str(info.value)
