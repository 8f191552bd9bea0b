"""BedrockClient through the real boto3 bedrock-runtime client over HTTP to the simulated
endpoint's Converse routes: model id forms, usage, timing accuracy, throttling retries, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import boto3
import httpx
import polars as pl
import pytest

from fmbench.config import BedrockEndpoint, InferenceConfig
from fmbench.endpoints import make_client
from fmbench.endpoints.bedrock import BedrockClient
from fmbench.errors import (
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointThrottled,
    EndpointTimeout,
)
from fmbench.protocol import Completion, Prompt
from fmbench.simulator.faults import FaultConfig

from .conftest import SIM, TPOT_BAND, TTFT_BAND_S, timing_within_tolerance

PROMPT = Prompt("p0", "Name three rivers of Europe.", 7)
MODEL_IDS = [
    "meta.llama3-8b-instruct-v1:0",
    "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
    "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/a1b2c3d4e5f6",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-1-8b-instruct-v1:0",
]


def _client(url: str, model_id: str = MODEL_IDS[0], **inference: Any) -> BedrockClient:
    return BedrockClient(model_id, InferenceConfig(**inference), runtime_endpoint_url=url)


def _run(client: BedrockClient, n: int = 1) -> list[Completion]:
    async def go() -> list[Completion]:
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
    assert c.http_status == 200
    if stream:
        assert len(c.chunk_times) == 9 and c.t_first_token == c.chunk_times[0]
    else:
        assert c.chunk_times == [] and c.t_first_token == c.t_end


@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_stopped_at_the_context_window_is_noted_cut(sim_thread: Any, stream: bool) -> None:
    """stopReason model_context_window_exceeded (below maxTokens) notes the answer cut; max_tokens
    reached does not; a prompt that fills the context is a ValidationException."""
    from fmbench.endpoints._chat import CUT_BY_SERVER, cut_note

    (probe,) = _run(_client(sim_thread(), stream=False, max_tokens=9))
    assert probe.note is None and probe.input_tokens
    url = sim_thread(SIM.model_copy(update={"context_tokens": probe.input_tokens + 4}))
    (cut,) = _run(_client(url, stream=stream, max_tokens=9))
    assert cut.output_tokens == 4 and len(cut.text.split()) == 4
    assert cut.note == (f"{CUT_BY_SERVER} at 4 of max_tokens 9 output tokens (stopReason "
                        "model_context_window_exceeded: the prompt and max_tokens exceed its context)")
    (whole,) = _run(_client(url, stream=stream, max_tokens=4))
    assert whole.output_tokens == 4 and whole.note is None
    full = sim_thread(SIM.model_copy(update={"context_tokens": probe.input_tokens}))
    with pytest.raises(EndpointHTTPError) as info:
        _run(_client(full, stream=stream, max_tokens=9))
    assert info.value.status == 400 and "leave no room for output" in str(info.value)
    # Bedrock's stopReason max_tokens below maxTokens (a model's own output cap) is a cut too.
    assert cut_note("max_tokens", 3, 9, "stopReason") == (
        f"{CUT_BY_SERVER} at 3 of max_tokens 9 output tokens (stopReason max_tokens: the model's own output limit "
        "is below max_tokens, or the prompt and max_tokens exceed its context)")
    assert cut_note("end_turn", 3, 9, "stopReason") is None


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
    # the first text, not an earlier event: never ahead of the model (the server's lateness is
    # subtracted as its median, so the first chunk's own may leave a fraction of a ms)
    assert ttft >= model_ttft - 0.001, f"TTFT {ttft * 1000:.2f} ms"
    assert ttft - model_ttft < TTFT_BAND_S, f"TTFT {ttft * 1000:.2f} ms"  # not the next chunk
    assert abs(tpot - model_tpot) <= TPOT_BAND * model_tpot, f"TPOT {tpot * 1000:.2f} ms"


def test_a_throttled_request_raises_at_once_the_client_never_retries(sim_thread: Any) -> None:
    url = sim_thread(faults=FaultConfig(throttle_rate=1.0))
    with pytest.raises(EndpointThrottled) as info:
        _run(_client(url))
    # No retry inside the client (boto3's own included): retries are the engine's. Counted at the server.
    faults = httpx.get(f"{url}/fmbench/stats").json()["faults"]
    assert sum(faults.values()) == 1, faults
    assert "ThrottlingException" in str(info.value)
    assert info.value.kind == "throttled" and info.value.status == 429


def test_throttle_backoff_doubles_honours_retry_after_and_is_capped() -> None:
    from fmbench.loadgen.retry import MAX_THROTTLE_BACKOFF_S, throttle_backoff_s

    assert [throttle_backoff_s(n, 0.5) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert throttle_backoff_s(1, 0.5, retry_after_s=4.0) == 4.0
    assert throttle_backoff_s(20, 0.5) == MAX_THROTTLE_BACKOFF_S
    assert throttle_backoff_s(1, 0.5, retry_after_s=600) == MAX_THROTTLE_BACKOFF_S


@pytest.mark.parametrize(
    ("faults", "stream", "error", "status"),
    [
        (FaultConfig(http_500_rate=1.0), True, EndpointHTTPError, 500),
        (FaultConfig(http_503_rate=1.0), False, EndpointHTTPError, 503),
        (FaultConfig(malformed_rate=1.0), True, EndpointProtocolError, None),
        (FaultConfig(malformed_rate=1.0), False, EndpointProtocolError, None),
        (FaultConfig(truncated_rate=1.0), True, EndpointProtocolError, None),
        (FaultConfig(truncated_rate=1.0), False, EndpointProtocolError, None),  # (an answer cut off)
        # a stream reset after it began is the answer cut off (as the OpenAI client has it), one reset
        # before any answer a failure to connect
        (FaultConfig(reset_rate=1.0), True, EndpointProtocolError, None),
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


def _shard(url: str, tmp_path: Path, requests: int = 40, concurrency: int = 4, **endpoint: Any) -> pl.DataFrame:
    """Run one shard through the engine as a Bedrock experiment does (throttle budget from the endpoint)."""
    from fmbench.loadgen import run_shard
    from fmbench.loadgen.spec import ShardSpec

    cfg = BedrockEndpoint(provider="bedrock", model_id=MODEL_IDS[1], runtime_endpoint_url=url, **endpoint)
    client = make_client(cfg, InferenceConfig(max_tokens=4))
    spec = ShardSpec(shard_id="b1", experiment="br", dataset="d", bucket="1-100", bucket_min=1, bucket_max=100,
                     concurrency=concurrency, requests=requests, throttle_retries=cfg.throttle_retries,
                     throttle_backoff_s=cfg.throttle_backoff_s)
    res = run_shard(client, [PROMPT], spec, tmp_path / "b1.parquet", lambda text: len(text.split()))
    records = pl.read_parquet(tmp_path / "b1.parquet")
    # every attempt is a record and was sent: each is counted as timed in its request's thread
    assert res.receive_stamps == {"sdk_thread": records.height}
    return records


def test_every_throttled_attempt_is_a_record_and_the_final_one_is_the_outcome(sim_thread: Any,
                                                                              tmp_path: Path) -> None:
    from fmbench.loadgen.retry import final_attempts
    from fmbench.metrics import error_counts, summarize

    url = sim_thread(faults=FaultConfig(throttle_rate=0.5, seed=5))
    records = _shard(url, tmp_path, throttle_retries=1, throttle_backoff_s=0.01)
    final = final_attempts(records).collect()
    assert final.height == 40 and final["request_id"].n_unique() == 40
    earlier = records.join(final.select("request_id", "attempt"), on=["request_id", "attempt"], how="anti")
    # every retried attempt was throttled, and each request got at most one retry
    assert earlier.height > 0 and set(earlier["error_kind"].to_list()) == {"throttled"}
    assert records["attempt"].max() == 2 and records.height == 40 + earlier.height
    # with one retry at 50 %, about a quarter fail after two throttled attempts
    failed = final.filter(~pl.col("ok"))
    assert set(failed["error_kind"].to_list()) <= {"throttled"} and 2 <= failed.height <= 20
    assert set(final.filter(pl.col("ok"))["usage_source"].to_list()) == {"server"}
    # a request that succeeded after being throttled counts its latency from its scheduled time
    retried_ok = final.filter(pl.col("ok") & (pl.col("attempt") == 2))
    assert retried_ok.height > 0 and (retried_ok["t_start"] - retried_ok["t_scheduled"] >= 0.01).all()
    # the metrics count requests once and attempts all; the error table shows the throttling
    (row,) = summarize(records.lazy(), None).to_dicts()
    assert row["requests"] == 40 and row["attempts"] == records.height
    assert row["errors"] == failed.height
    (errs,) = error_counts(records).to_dicts()
    assert errs["error_kind"] == "throttled" and errs["count"] == failed.height
    assert errs["retried"] == earlier.height


def test_zero_throttle_retries_measure_throttling_as_failures(sim_thread: Any, tmp_path: Path) -> None:
    url = sim_thread(faults=FaultConfig(throttle_rate=1.0))
    records = _shard(url, tmp_path, requests=6, concurrency=2, throttle_retries=0)
    assert records.height == 6 and (records["attempt"] == 1).all()
    assert set(records["error_kind"].to_list()) == {"throttled"}


def test_other_errors_are_not_retried_from_the_throttle_budget(sim_thread: Any, tmp_path: Path) -> None:
    url = sim_thread(faults=FaultConfig(throttle_rate=0.5, http_500_rate=0.5, seed=2))
    records = _shard(url, tmp_path, requests=8, concurrency=2, throttle_retries=10, throttle_backoff_s=0.002)
    from fmbench.loadgen.retry import final_attempts

    final = final_attempts(records).collect()
    assert final.height == 8
    assert set(final["error_kind"].to_list()) == {"server_error"} and (final["http_status"] == 500).all()
    earlier = records.filter(pl.col("attempt") < pl.col("attempt").max().over("request_id"))
    assert earlier.height > 0 and set(earlier["error_kind"].to_list()) == {"throttled"}


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
        _run(_client(url))
    assert type(info.value) is error and info.value.kind == kind
    assert "Exception" in str(info.value)
