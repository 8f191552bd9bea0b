"""The SageMaker and Bedrock clients against answers the simulated endpoint never gives: a scripted
HTTP server on 127.0.0.1 speaks AWS's wire format (event streams, error answers), and the real
clients (boto3 underneath) read it. What a request's record says must be what happened."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web

from fmbench.config import InferenceConfig
from fmbench.endpoints.bedrock import BedrockClient
from fmbench.endpoints.sagemaker import SageMakerClient
from fmbench.errors import EndpointError, EndpointHTTPError, EndpointThrottled, EndpointTimeout
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.protocol import Prompt
from fmbench.simulator.eventstream import encode_event, encode_json_event
from tests.support.app_thread import serve_app

PROMPT = Prompt("p0", "hello", 1)
TOKEN = "SESSION-TOKEN-must-stay-secret"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _app(handler: Handler) -> web.Application:
    app = web.Application()
    for path in ("/endpoints/{name}/invocations-response-stream", "/endpoints/{name}/invocations",
                 "/model/{model}/converse-stream", "/model/{model}/converse"):
        app.router.add_post(path, handler)
    return app


def _stream(parts: list[tuple[float, bytes]]) -> Handler:
    """An event stream of ``parts``, each written after its delay (seconds)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await resp.prepare(request)
        for delay, data in parts:
            await asyncio.sleep(delay)
            await resp.write(data)
        await resp.write_eof()
        return resp
    return handler


def _sagemaker(url: str, payload: str = "tgi", **inference: Any) -> SageMakerClient:
    return SageMakerClient("ep", InferenceConfig(**inference), payload=payload, runtime_endpoint_url=url)


def _bedrock(url: str, **inference: Any) -> BedrockClient:
    return BedrockClient("meta.llama3-8b-instruct-v1:0", InferenceConfig(**inference), runtime_endpoint_url=url)


def _complete(client: Any) -> tuple[Any, BaseException | None, float]:
    async def go() -> tuple[Any, BaseException | None, float]:
        await client.open(1)
        t0 = time.monotonic()
        try:
            return await client.complete(PROMPT), None, time.monotonic() - t0
        except EndpointError as exc:
            return None, exc, time.monotonic() - t0
        finally:
            await client.close()
    return asyncio.run(go())


def _part(data: dict[str, Any]) -> bytes:
    return encode_event("PayloadPart", b"data:" + json.dumps(data).encode() + b"\n\n")


def test_a_bad_signature_answer_never_carries_the_session_token_into_the_records(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """AWS answers a bad signature by quoting the request it expected, session token included."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        token = request.headers.get("X-Amz-Security-Token", "")
        assert token == TOKEN  # (the client signed with it: the answer below quotes it back)
        message = ("The request signature we calculated does not match the signature you provided.\n\nThe "
                   f"Canonical String for this request should have been\n'POST\n{request.path}\n\nhost:"
                   f"{request.host}\nx-amz-security-token:{token}\n\nhost;x-amz-date;x-amz-security-token'")
        return web.Response(status=403, body=json.dumps({"message": message}).encode(),
                            headers={"Content-Type": "application/x-amz-json-1.1",
                                     "x-amzn-ErrorType": "InvalidSignatureException"})

    with serve_app(_app(refuse)) as url:
        for client in (_sagemaker(url), _sagemaker(url, stream=False), _bedrock(url), _bedrock(url, stream=False)):
            _, err, _ = _complete(client)
            assert isinstance(err, EndpointHTTPError) and err.status == 403, err
            assert "InvalidSignatureException" in str(err) and "x-amz-security-token:***" in str(err), err
            assert TOKEN not in str(err)
        spec = ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="b", bucket_min=0, bucket_max=9,
                         requests=2, warmup=0)
        run_shard(_sagemaker(url, "messages"), [PROMPT], spec, tmp_path / "s.parquet", len)
    records = pl.read_parquet(tmp_path / "s.parquet")
    assert records["error"].str.contains("InvalidSignatureException").all()
    assert not records["error"].str.contains(TOKEN, literal=True).any()


def test_a_stream_that_stalls_fails_at_its_timeout_not_a_read_timeout_after_its_last_part() -> None:
    """botocore's read timeout is per read: the request's own timeout bounds the whole answer."""
    token = _part({"token": {"text": " a"}, "generated_text": None})
    last = _part({"token": {"text": " b"}, "generated_text": " a b", "details": {"generated_tokens": 2}})
    bedrock = [(0.0, encode_json_event("messageStart", {"role": "assistant"})),
               (1.8, encode_json_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "a"}})),
               (4.0, encode_json_event("messageStop", {"stopReason": "end_turn"}))]
    for client, parts in ((_sagemaker, [(1.8, token), (4.0, last)]), (_bedrock, bedrock)):
        with serve_app(_app(_stream(parts))) as url:
            _, err, elapsed = _complete(client(url, timeout_s=2.0))
        # a part at 1.8 s, then nothing: the 2-s timeout ends it at 2 s (a read timeout would at 3.8 s)
        assert isinstance(err, EndpointTimeout), err
        assert elapsed < 3.0, elapsed


def test_a_stream_that_keeps_its_timeout_is_answered_and_the_connection_is_reused() -> None:
    """The time left bounds each read of one answer only: the pooled connection's next request gets
    its whole timeout again."""
    parts = [(0.3, _part({"token": {"text": " a"}, "generated_text": None})),
             (0.3, _part({"token": {"text": " b"}, "generated_text": " a b", "details": {"generated_tokens": 2}}))]
    with serve_app(_app(_stream(parts))) as url:
        client = _sagemaker(url, timeout_s=1.0)

        async def twice() -> list[Any]:
            await client.open(1)
            try:
                return [await client.complete(PROMPT) for _ in range(3)]
            finally:
                await client.close()

        answers = asyncio.run(twice())
    assert [a.text for a in answers] == [" a b"] * 3 and all(a.output_tokens == 2 for a in answers)


@pytest.mark.parametrize(("payload", "event", "cls", "status"), [
    ("messages", {"error": {"message": "overloaded", "code": 503}}, EndpointHTTPError, 503),
    ("tgi", {"error": "Request failed during generation: CUDA out of memory", "error_type": "generation"},
     EndpointHTTPError, 500),
    ("tgi", {"error": "Model is overloaded", "error_type": "overloaded"}, EndpointThrottled, 429),
    ("tgi", {"error": "Input validation error: inputs too long", "error_type": "validation"}, EndpointHTTPError, 422),
], ids=["openai-503", "tgi-generation", "tgi-overloaded", "tgi-validation"])
def test_an_error_event_in_a_stream_is_the_servers_error(payload: str, event: dict[str, Any], cls: type,
                                                         status: int) -> None:
    """The container read the request and failed it: an HTTP error of its status, not an unparseable
    answer (as the OpenAI client reads the same event)."""
    with serve_app(_app(_stream([(0.0, _part(event))]))) as url:
        _, err, _ = _complete(_sagemaker(url, payload))
    assert type(err) is cls and err.status == status, err  # type: ignore[union-attr]
    assert "error in stream" in str(err)


def test_an_error_of_null_beside_good_chunks_is_no_error() -> None:
    # A server that writes every field of its schema (as the OpenAI client reads it: `_chat.is_error_event`).
    parts = [(0.0, _part({"choices": [{"index": 0, "delta": {"content": "Paris."}}], "error": None})),
             (0.0, _part({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}, "error": None})),
             (0.0, encode_event("PayloadPart", b"data: [DONE]\n\n"))]
    with serve_app(_app(_stream(parts))) as url:
        comp, err, _ = _complete(_sagemaker(url, "messages"))
    assert err is None, err
    assert comp.text == "Paris." and comp.output_tokens == 2


@pytest.mark.parametrize(("payload", "answer", "status"), [
    ("messages", {"error": {"message": "overloaded", "code": 503}}, 503),
    ("messages", {"choices": [{"index": 0, "message": {"content": "Par"}}], "error": {"message": "cut"}}, 500),
    ("tgi", {"error": "Input validation error: inputs too long", "error_type": "validation"}, 422),
], ids=["openai-error", "error-beside-text", "tgi-validation"])
def test_a_whole_answer_that_names_an_error_is_the_servers_error(payload: str, answer: dict[str, Any],
                                                                  status: int) -> None:
    """A container that answers 200 with its own error body failed the request, as the OpenAI client
    reads the same answer; not an answer of an unknown shape."""
    async def reply(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(answer)

    with serve_app(_app(reply)) as url:
        _, err, _ = _complete(_sagemaker(url, payload, stream=False))
    assert type(err) is EndpointHTTPError and err.status == status, err
    assert "error in answer" in str(err)


@pytest.mark.parametrize("answer", [
    {"choices": ["not an object"]},
    {"choices": [{"message": "a string, not a message"}]},
    {"choices": {"0": {"message": {"content": "x"}}}},
], ids=["choice-string", "message-string", "choices-object"])
def test_an_answer_of_another_shape_is_a_protocol_error(answer: dict[str, Any]) -> None:
    async def reply(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(answer)

    with serve_app(_app(reply)) as url:
        _, err, _ = _complete(_sagemaker(url, "messages", stream=False))
    assert err is not None and err.kind == "protocol", err


def test_a_reasoning_models_stream_is_timed_from_its_first_reasoning_token() -> None:
    # As the OpenAI client reads it: reasoning is output the endpoint generated. Before its answer
    # this model thinks for 0.3 s; its first token is the first reasoning token, not the answer's.
    reasoning = _part({"choices": [{"index": 0, "delta": {"reasoning_content": "Let me think."}}]})
    answer = _part({"choices": [{"index": 0, "delta": {"content": "Paris."}}]})
    usage = _part({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6}})
    done = encode_event("PayloadPart", b"data: [DONE]\n\n")
    with serve_app(_app(_stream([(0.0, reasoning), (0.3, answer), (0.0, usage), (0.0, done)]))) as url:
        comp, err, _ = _complete(_sagemaker(url, "messages"))
    assert err is None, err
    assert comp.text == "Let me think.Paris." and comp.output_tokens == 6 and len(comp.chunk_times) == 2
    assert comp.chunk_times[1] - comp.t_first_token >= 0.25  # the first token is the reasoning's


@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_with_counted_tokens_and_no_text_is_a_success_with_a_note(stream: bool) -> None:
    # A reasoning model that spent max_tokens thinking, with a server that does not stream reasoning.
    # (Its server served 4 of the 5 prompt tokens from its prompt cache, and says so.)
    usage = {"prompt_tokens": 5, "completion_tokens": 8, "prompt_tokens_details": {"cached_tokens": 4}}
    parts = [(0.0, _part({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})),
             (0.0, _part({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": usage})),
             (0.0, encode_event("PayloadPart", b"data: [DONE]\n\n"))]

    async def whole(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                                               "finish_reason": "length"}], "usage": usage})

    with serve_app(_app(_stream(parts) if stream else whole)) as url:
        comp, err, _ = _complete(_sagemaker(url, "messages", stream=stream))
    assert err is None, err
    assert comp.text == "" and comp.output_tokens == 8 and comp.note and "counted by the server" in comp.note
    assert comp.input_tokens == 5 and comp.cached_tokens == 4


@pytest.mark.parametrize("bad", [-3, "7", 2.5, True], ids=["negative", "string", "float", "bool"])
def test_a_token_count_that_is_not_a_count_is_not_taken(bad: Any) -> None:
    # As the OpenAI client: the record's tokens are then counted with the tokenizer, not taken as -3.
    async def reply(request: web.Request) -> web.Response:
        await request.read()
        if "/model/" in request.path:
            return web.json_response({"output": {"message": {"role": "assistant", "content": [{"text": "Paris."}]}},
                                      "stopReason": "end_turn", "usage": {"inputTokens": bad, "outputTokens": bad}})
        if request.path.endswith("-response-stream"):
            body = _part({"choices": [{"index": 0, "delta": {"content": "Paris."}}],
                          "usage": {"prompt_tokens": bad, "completion_tokens": bad}})
            resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
            await resp.prepare(request)
            await resp.write(body + encode_event("PayloadPart", b"data: [DONE]\n\n"))
            await resp.write_eof()
            return resp
        return web.json_response({"choices": [{"index": 0, "message": {"content": "Paris."}}],
                                  "usage": {"prompt_tokens": bad, "completion_tokens": bad}})

    with serve_app(_app(reply)) as url:
        clients = [_sagemaker(url, "messages"), _sagemaker(url, "messages", stream=False)]
        if bad == -3:  # (botocore reads Bedrock's answer by its service model: "7", 2.5 and true become ints)
            clients.append(_bedrock(url, stream=False))
        for client in clients:
            comp, err, _ = _complete(client)
            assert err is None, err
            assert (comp.text, comp.input_tokens, comp.output_tokens) == ("Paris.", None, None), client
