"""SageMakerClient through the real boto3 sagemaker-runtime client over HTTP to the simulated
endpoint's AWS routes: every payload format, streaming and not, timing accuracy, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import boto3
import httpx
import polars as pl
import pytest
from aiohttp import web

from fmbench.config import InferenceConfig, SageMakerEndpoint
from fmbench.endpoints import make_client
from fmbench.endpoints.sagemaker import SageMakerClient, _LineParser
from fmbench.errors import (
    EndpointConnectionError,
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointThrottled,
    EndpointTimeout,
)
from fmbench.protocol import Completion, Prompt
from fmbench.simulator.faults import FaultConfig
from tests.support.app_thread import serve_app

from .conftest import SIM, TPOT_BAND, TTFT_BAND_S, timing_within_tolerance

PROMPT = Prompt("p0", "Summarise the plot of Hamlet in one line.", 10)


def _run(client: SageMakerClient, n: int = 1, prompt: Prompt = PROMPT, concurrency: int = 1) -> list[Completion]:
    async def go() -> list[Completion]:
        await client.open(concurrency)
        try:
            return [await client.complete(prompt) for _ in range(n)]
        finally:
            await client.close()

    return asyncio.run(go())


def _client(url: str, payload: str = "tgi", **inference: Any) -> SageMakerClient:
    return SageMakerClient("fmbench-ep", InferenceConfig(**inference), payload=payload, runtime_endpoint_url=url)


@pytest.mark.parametrize("payload", ["tgi", "messages", "completions"])
@pytest.mark.parametrize("stream", [True, False])
def test_every_payload_streamed_and_not(sim_url: str, payload: str, stream: bool) -> None:
    (c,) = _run(_client(sim_url, payload, stream=stream, max_tokens=12))
    words = c.text.split()
    assert len(words) == 12  # the simulated model emits one word per token, capped by max_tokens
    assert c.output_tokens == 12  # from TGI details or OpenAI usage
    if payload != "tgi":
        assert c.input_tokens is not None and c.input_tokens > 0
    assert c.t_start < c.t_first_token <= c.t_end
    if stream:
        assert len(c.chunk_times) == 12 and c.chunk_times == sorted(c.chunk_times)
        assert c.t_first_token == c.chunk_times[0]
        # TTFT cannot beat the model's; the whole answer takes ttft + 11 tokens
        assert c.t_first_token - c.t_start >= SIM.ttft_ms / 1000 * 0.98
        assert c.t_end - c.t_start >= (SIM.ttft_ms + 11 * SIM.tpot_ms) / 1000 * 0.98
    else:
        assert c.chunk_times == [] and c.t_first_token == c.t_end


def test_request_bodies_follow_each_schema() -> None:
    prompt = Prompt("p", "hi", 1)
    tgi = _client("http://unused", "tgi", temperature=0.0, top_p=0.9).body(prompt)
    assert b'"inputs": "hi"' in tgi and b'"do_sample": false' in tgi and b"temperature" not in tgi
    assert b'"top_p": 0.9' in tgi and b'"details": true' in tgi
    chat = _client("http://unused", "messages", extra_body={"top_k": 5}).body(prompt)
    assert b'"messages": [{"role": "user", "content": "hi"}]' in chat
    assert b'"include_usage": true' in chat and b'"top_k": 5' in chat
    comp = _client("http://unused", "completions", stream=False).body(prompt)
    assert b'"prompt": "hi"' in comp and b"stream_options" not in comp


@pytest.mark.parametrize("payload", ["tgi", "messages"])
def test_lines_split_across_payload_parts_are_reassembled(sim_thread: Any, payload: str) -> None:
    url = sim_thread(split_payload_parts=3)
    (c,) = _run(_client(url, payload, max_tokens=8))
    assert len(c.text.split()) == 8 and c.output_tokens == 8
    # each token's line is completed by its last part: still one chunk per token
    assert len(c.chunk_times) == 8


def test_line_parser_handles_lmi_json_lines_and_sse_comments() -> None:
    parser = _LineParser("tgi")
    assert parser.feed(b'{"token": {"text": " a"}}\n{"token": {"te') == " a"
    assert parser.feed(b'xt": " b"}}\n: keep-alive\n\n') == " b"
    assert parser.feed(b'{"token": {"text": "</s>", "special": true}, "generated_text": " a b"}') == ""
    assert parser.finish() == "" and parser.done
    sse = _LineParser("messages")
    with pytest.raises(EndpointProtocolError):
        sse.feed(b"data: {not json\n")


def test_streaming_ttft_and_tpot_match_the_model_at_concurrency_1(sim_url: str) -> None:
    ttft, tpot = timing_within_tolerance(_client(sim_url, "tgi"), PROMPT, sim_url)
    model_ttft, model_tpot = SIM.ttft_ms / 1000, SIM.tpot_ms / 1000
    # the first text, not an earlier event: never ahead of the model (the server's lateness is
    # subtracted as its median, so the first chunk's own may leave a fraction of a ms)
    assert ttft >= model_ttft - 0.001, f"TTFT {ttft * 1000:.2f} ms"
    assert ttft - model_ttft < TTFT_BAND_S, f"TTFT {ttft * 1000:.2f} ms"  # not the next chunk
    assert abs(tpot - model_tpot) <= TPOT_BAND * model_tpot, f"TPOT {tpot * 1000:.2f} ms"


def test_concurrency_is_not_limited_by_boto3() -> None:
    """12 requests in flight at once, beyond botocore's default pool of 10 connections.

    The endpoint answers none of them until all 12 are being handled together (with a wait far
    beyond any loaded machine's scheduling delay); a client that held any back would get 500s.
    No timing is compared, so a slow start of the client's threads cannot fail it.
    """
    n = 12
    arrived: list[int] = [0]
    together = asyncio.Event()

    async def invoke(request: web.Request) -> web.Response:
        await request.read()
        arrived[0] += 1
        if arrived[0] == n:
            together.set()
        try:
            await asyncio.wait_for(together.wait(), 60)
        except TimeoutError:
            return web.json_response({"message": f"only {arrived[0]} of {n} requests came together"}, status=500)
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "ok"}}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

    app = web.Application()
    app.router.add_post("/endpoints/{name}/invocations", invoke)
    with serve_app(app) as url:
        client = _client(url, "messages", stream=False, max_tokens=16)

        async def go() -> list[Completion]:
            await client.open(n)
            try:
                return await asyncio.gather(*(client.complete(PROMPT) for _ in range(n)))
            finally:
                await client.close()

        done = asyncio.run(go())
    assert [c.text for c in done] == ["ok"] * n
    assert max(c.t_start for c in done) < min(c.t_end for c in done)  # follows from the server's wait


@pytest.mark.parametrize(
    ("faults", "stream", "error", "status"),
    [
        (FaultConfig(throttle_rate=1.0), True, EndpointThrottled, 400),
        (FaultConfig(throttle_rate=1.0), False, EndpointThrottled, 400),
        (FaultConfig(http_500_rate=1.0), True, EndpointHTTPError, 500),
        (FaultConfig(http_503_rate=1.0), False, EndpointHTTPError, 503),
        (FaultConfig(malformed_rate=1.0), True, EndpointProtocolError, None),
        (FaultConfig(malformed_rate=1.0), False, EndpointProtocolError, None),
        (FaultConfig(truncated_rate=1.0), True, EndpointProtocolError, None),
        # a stream reset after it began is the answer cut off (as the OpenAI client has it), one reset
        # before any answer a failure to connect
        (FaultConfig(reset_rate=1.0), True, EndpointProtocolError, None),
        (FaultConfig(reset_rate=1.0), False, EndpointConnectionError, None),
    ],
)
def test_faults_map_to_error_kinds(sim_thread: Any, faults: FaultConfig, stream: bool, error: type, status: int | None) -> None:
    url = sim_thread(faults=faults)
    with pytest.raises(error) as info:
        _run(_client(url, "tgi", stream=stream))
    assert type(info.value) is error
    if status is not None:
        assert info.value.status == status  # type: ignore[attr-defined]
    assert "fmbench-ep" in str(info.value)


@pytest.mark.parametrize("payload", ["tgi", "messages", "completions"])
@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_the_server_cuts_at_its_context_is_noted_cut(sim_thread: Any, payload: str, stream: bool) -> None:
    """A model whose context ends 5 tokens after the prompt cuts a 12-token answer at 5 and says why
    (TGI's details.finish_reason, the OpenAI schema's finish_reason): a success, noted as cut; an
    answer that max_tokens ended is not; a prompt that fills the context is the container's 422."""
    from fmbench.endpoints._chat import CUT_BY_SERVER

    (probe,) = _run(_client(sim_thread(), "messages", stream=False, max_tokens=12))
    assert probe.note is None and probe.output_tokens == 12 and probe.input_tokens
    url = sim_thread(SIM.model_copy(update={"context_tokens": probe.input_tokens + 5}))
    (cut,) = _run(_client(url, payload, stream=stream, max_tokens=12))
    field = "details.finish_reason" if payload == "tgi" else "finish_reason"
    assert cut.output_tokens == 5 and len(cut.text.split()) == 5
    assert cut.note == (f"{CUT_BY_SERVER} at 5 of max_tokens 12 output tokens ({field} length: the prompt and "
                        "max_tokens exceed its context)")
    (whole,) = _run(_client(url, payload, stream=stream, max_tokens=5))  # (max_tokens ended it: not cut)
    assert whole.output_tokens == 5 and whole.note is None
    full = sim_thread(SIM.model_copy(update={"context_tokens": probe.input_tokens}))
    with pytest.raises(EndpointHTTPError) as info:
        _run(_client(full, payload, stream=stream, max_tokens=12))
    assert info.value.status == 422 and "leave no room for output" in str(info.value)


def test_model_error_reports_the_containers_status(sim_thread: Any) -> None:
    url = sim_thread(faults=FaultConfig(http_500_rate=1.0))
    with pytest.raises(EndpointHTTPError) as info:
        _run(_client(url, "messages", stream=False))
    assert info.value.kind == "server_error" and "ModelError" in str(info.value)


def test_hung_request_times_out(sim_thread: Any) -> None:
    url = sim_thread(faults=FaultConfig(hang_rate=1.0))
    with pytest.raises(EndpointTimeout) as info:
        _run(_client(url, "tgi", timeout_s=0.5))
    assert info.value.kind == "timeout"
    # One request reached the server: the client neither retried it nor waited for the hang to end.
    faults = httpx.get(f"{url}/fmbench/stats").json()["faults"]
    assert sum(faults.values()) == 1, faults


def test_unreachable_endpoint_is_a_connection_error() -> None:
    with pytest.raises(EndpointConnectionError):
        _run(_client("http://127.0.0.1:9", "tgi"))


def test_throttling_is_recorded_per_request_without_stalling_the_shard(sim_thread: Any, tmp_path: Path) -> None:
    from fmbench.loadgen import run_shard
    from fmbench.loadgen.spec import ShardSpec

    url = sim_thread(faults=FaultConfig(throttle_rate=0.4, seed=3))
    endpoint = SageMakerEndpoint(provider="sagemaker", endpoint_name="fmbench-ep", runtime_endpoint_url=url,
                                 payload="messages")
    client = make_client(endpoint, InferenceConfig(max_tokens=4))
    spec = ShardSpec(shard_id="s1", experiment="sm", dataset="d", bucket="1-100", bucket_min=1, bucket_max=100,
                     concurrency=4, requests=40)
    res = run_shard(client, [PROMPT], spec, tmp_path / "s1.parquet", lambda text: len(text.split()))
    records = pl.read_parquet(tmp_path / "s1.parquet")
    # the shard says how its answers were timed: in each request's thread, for all 40 sent
    assert res.receive_stamps == {"sdk_thread": 40}
    # One attempt per request, and the server saw exactly those 40: a throttled request is recorded,
    # never retried or waited on inside the client.
    assert records.height == 40 and records["attempt"].max() == 1
    faults = httpx.get(f"{url}/fmbench/stats").json()["faults"]
    assert sum(faults.values()) == 40, faults
    kinds = records["error_kind"].fill_null("ok").value_counts()
    counts = dict(zip(kinds["error_kind"], kinds["count"], strict=True))
    assert counts.get("throttled", 0) > 5 and counts.get("ok", 0) > 5 and set(counts) == {"ok", "throttled"}
    assert records.filter(pl.col("ok"))["output_tokens"].to_list() == [4] * counts["ok"]


def test_boto3_sees_the_invoked_variant(sim_url: str) -> None:
    rt = boto3.client("sagemaker-runtime", endpoint_url=sim_url, region_name="us-east-1")
    resp = rt.invoke_endpoint(EndpointName="x", Body=b'{"inputs": "hi", "parameters": {"max_new_tokens": 2}}',
                              ContentType="application/json")
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    assert resp["Body"].read().startswith(b'[{"generated_text"')


def test_model_stream_error_event_mid_stream(sim_thread: Any) -> None:
    url = sim_thread(faults=FaultConfig(http_500_rate=1.0), midstream_errors=True)
    with pytest.raises(EndpointHTTPError) as info:
        _run(_client(url, "messages"))
    assert "ModelStreamError" in str(info.value) and info.value.kind == "server_error"
