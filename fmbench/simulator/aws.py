"""The AWS route family of the simulated endpoint: SageMaker runtime and Bedrock runtime.

Routes (what boto3's ``sagemaker-runtime`` and ``bedrock-runtime`` clients call when given the
server's URL as ``endpoint_url``):

* ``POST /endpoints/{name}/invocations`` and ``/endpoints/{name}/invocations-response-stream``:
  the body is a TGI request (``inputs``/``parameters``), an OpenAI chat request (``messages``) or
  an OpenAI completions request (``prompt``); streams are AWS event-stream ``PayloadPart``
  events carrying TGI ``data:{"token":...}`` lines or OpenAI SSE frames.
* ``POST /model/{modelId}/converse`` and ``/model/{modelId}/converse-stream``: Bedrock Converse,
  streamed as messageStart, contentBlockDelta..., contentBlockStop, messageStop, metadata.

Chunks come from the shared `SimCore`, so pacing and latency match the OpenAI routes. Injected
faults (`FaultConfig`) take AWS shapes: throttling is ``ThrottlingException`` (HTTP 400 on
SageMaker, 429 on Bedrock), a 500 is SageMaker's ``ModelError`` (424) or Bedrock's
``InternalServerException``, mid-stream faults reset the connection, corrupt or cut the stream.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fmbench.simulator._http import reset_connection, send_truncated_body
from fmbench.simulator.app import SIM_CONTEXT, SimContext
from fmbench.simulator.content import choose_reply, content_model, request_answers
from fmbench.simulator.core import Generation, GenRequest, context_refusal
from fmbench.simulator.eventstream import encode_event, encode_exception, encode_json_event
from fmbench.simulator.faults import Fault, FaultKind, hang_forever
from fmbench.simulator.openai_routes import chat_texts

_EVENTSTREAM = "application/vnd.amazon.eventstream"
_VARIANT = "AllTraffic"
# Echoes the decoded model id of Bedrock calls (tests check ARNs and profile ids arrive intact).
_MODEL_HEADER = "x-fmbench-model-id"


class _AwsError(Exception):
    def __init__(self, status: int, code: str, body: dict[str, Any]) -> None:
        super().__init__(code)
        self.status, self.code, self.body = status, code, body

    def response(self) -> web.Response:
        return web.json_response(
            self.body, status=self.status, headers={"x-amzn-ErrorType": self.code, "x-amzn-RequestId": _rid()}
        )


def _rid() -> str:
    return str(uuid.uuid4())


@dataclass
class AwsRoutes:
    """The AWS route family; an instance is a ``register(app, ctx)`` callable.

    Args:
        split_payload_parts: split every SageMaker stream event's bytes over this many
            PayloadParts (SageMaker does not align parts with lines; clients must reassemble).
        midstream_errors: in streams, injected 500s and throttling strike after some chunks as
            exception events (SageMaker ``ModelStreamError``, Bedrock ``modelStreamErrorException``
            / ``throttlingException``) instead of as an HTTP error before the stream.
    """

    split_payload_parts: int = 1
    midstream_errors: bool = False

    def _midstream(self, fault: Fault) -> bool:
        return self.midstream_errors and fault.kind in (FaultKind.HTTP_500, FaultKind.THROTTLE)

    def __call__(self, app: web.Application, ctx: SimContext) -> None:
        app.router.add_post("/endpoints/{name}/invocations", self._sm_invoke)
        app.router.add_post("/endpoints/{name}/invocations-response-stream", self._sm_stream)
        app.router.add_post("/model/{model_id}/converse", self._br_converse)
        app.router.add_post("/model/{model_id}/converse-stream", self._br_stream)

    # ------------------------------------------------------------ SageMaker

    async def _sm_invoke(self, request: web.Request) -> web.StreamResponse:
        ctx = request.app[SIM_CONTEXT]
        arrival, fault = ctx.arrive(request)
        try:
            gen_req, fmt, body = await _sm_request(request, ctx, arrival, fault)
        except _AwsError as err:
            return ctx.refused(fault, err.response())
        try:
            await _sm_early_fault(fault)
        except _AwsError as err:
            return err.response()
        if fault.kind is FaultKind.RESET:
            reset_connection(request)
            return web.Response(status=500)
        async with ctx.get_core().generate(gen_req) as gen:
            text = "".join([chunk.text async for chunk in gen])
        answer = _sm_full_answer(fmt, body, text, gen)
        raw = json.dumps(answer).encode()
        if fault.kind is FaultKind.TRUNCATED:  # half the promised body, then the connection drops
            return await send_truncated_body(request, raw, "application/json")
        if fault.kind is FaultKind.MALFORMED:
            raw = raw[: len(raw) // 2]
        return web.Response(
            body=raw,
            headers={"Content-Type": "application/json", "x-Amzn-Invoked-Production-Variant": _VARIANT},
        )

    async def _sm_stream(self, request: web.Request) -> web.StreamResponse:
        ctx = request.app[SIM_CONTEXT]
        arrival, fault = ctx.arrive(request)
        try:
            gen_req, fmt, body = await _sm_request(request, ctx, arrival, fault)
        except _AwsError as err:
            return ctx.refused(fault, err.response())
        try:
            if not self._midstream(fault):
                await _sm_early_fault(fault)
        except _AwsError as err:
            return err.response()
        resp = web.StreamResponse(
            headers={
                "Content-Type": _EVENTSTREAM,
                "X-Amzn-SageMaker-Content-Type": "text/event-stream"
                if fmt != "tgi"
                else "application/jsonlines",
                "x-Amzn-Invoked-Production-Variant": _VARIANT,
                "x-amzn-RequestId": _rid(),
            }
        )
        async with ctx.get_core().generate(gen_req) as gen:
            strike = fault.strike_after(gen.n_chunks)
            await _no_byte_yet(ctx, gen)
            await resp.prepare(request)
            sent = 0
            async for chunk in gen:
                if fault.kind is FaultKind.RESET and sent == strike:
                    reset_connection(request)
                    return resp
                if fault.kind is FaultKind.TRUNCATED and sent == strike:
                    await resp.write_eof()
                    return resp
                if self._midstream(fault) and sent == strike:
                    error = {"Message": "simulated: the model failed mid-stream", "ErrorCode": "ModelStreamError"}
                    await resp.write(encode_exception("ModelStreamError", error))
                    await resp.write_eof()
                    return resp
                frame = _sm_stream_frame(fmt, chunk.index, chunk.text, chunk.last, gen)
                if fault.kind is FaultKind.MALFORMED and sent == strike:
                    frame = b'data:{"token": {"text": \n\n'
                await self._write_parts(resp, frame)
                sent += 1
            for tail in _sm_stream_tail(fmt, body, gen):
                await self._write_parts(resp, tail)
        await resp.write_eof()
        return resp

    async def _write_parts(self, resp: web.StreamResponse, frame: bytes) -> None:
        n = max(1, min(self.split_payload_parts, len(frame)))
        step = -(-len(frame) // n)
        for i in range(0, len(frame), step):
            await resp.write(encode_event("PayloadPart", frame[i : i + step]))

    # ------------------------------------------------------------ Bedrock

    async def _br_converse(self, request: web.Request) -> web.StreamResponse:
        ctx = request.app[SIM_CONTEXT]
        arrival, fault = ctx.arrive(request)
        try:
            gen_req = await _br_request(request, ctx, arrival, fault)
        except _AwsError as err:
            return ctx.refused(fault, err.response())
        try:
            await _br_early_fault(fault)
        except _AwsError as err:
            return err.response()
        if fault.kind is FaultKind.RESET:
            reset_connection(request)
            return web.Response(status=500)
        async with ctx.get_core().generate(gen_req) as gen:
            text = "".join([chunk.text async for chunk in gen])
        answer = {
            "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": _br_stop(gen),
            "usage": _br_usage(gen),
            "metrics": {"latencyMs": int((time.monotonic() - arrival) * 1000)},
        }
        raw = json.dumps(answer).encode()
        if fault.kind is FaultKind.TRUNCATED:  # half the promised body, then the connection drops
            return await send_truncated_body(request, raw, "application/json")
        if fault.kind is FaultKind.MALFORMED:
            raw = raw[: len(raw) // 2]
        return web.Response(
            body=raw,
            headers={
                "Content-Type": "application/json",
                "x-amzn-RequestId": _rid(),
                _MODEL_HEADER: request.match_info["model_id"],
            },
        )

    async def _br_stream(self, request: web.Request) -> web.StreamResponse:
        ctx = request.app[SIM_CONTEXT]
        arrival, fault = ctx.arrive(request)
        try:
            gen_req = await _br_request(request, ctx, arrival, fault)
        except _AwsError as err:
            return ctx.refused(fault, err.response())
        try:
            if not self._midstream(fault):
                await _br_early_fault(fault)
        except _AwsError as err:
            return err.response()
        resp = web.StreamResponse(
            headers={
                "Content-Type": _EVENTSTREAM,
                "x-amzn-RequestId": _rid(),
                _MODEL_HEADER: request.match_info["model_id"],
            }
        )
        async with ctx.get_core().generate(gen_req) as gen:
            strike = fault.strike_after(gen.n_chunks)
            await _no_byte_yet(ctx, gen)
            await resp.prepare(request)
            await resp.write(encode_json_event("messageStart", {"role": "assistant"}))
            sent = 0
            async for chunk in gen:
                if self._midstream(fault) and sent == strike:
                    throttled = fault.kind is FaultKind.THROTTLE
                    name = "throttlingException" if throttled else "modelStreamErrorException"
                    message = "Too many requests, please wait before trying again." if throttled else (
                        "simulated: the model failed mid-stream"
                    )
                    await resp.write(encode_exception(name, {"message": message}))
                    await resp.write_eof()
                    return resp
                if fault.kind is FaultKind.RESET and sent == strike:
                    reset_connection(request)
                    return resp
                if fault.kind is FaultKind.TRUNCATED and sent == strike:
                    await resp.write_eof()
                    return resp
                frame = encode_json_event(
                    "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": chunk.text}}
                )
                if fault.kind is FaultKind.MALFORMED and sent == strike:
                    frame = frame[:-4] + bytes(4)  # wrong message checksum
                await resp.write(frame)
                sent += 1
            await resp.write(encode_json_event("contentBlockStop", {"contentBlockIndex": 0}))
            await resp.write(encode_json_event("messageStop", {"stopReason": _br_stop(gen)}))
            metrics = {"latencyMs": int((time.monotonic() - arrival) * 1000)}
            await resp.write(encode_json_event("metadata", {"usage": _br_usage(gen), "metrics": metrics}))
        await resp.write_eof()
        return resp


#: The default family instance, picked up by `default_route_families`.
register = AwsRoutes()


# ---------------------------------------------------------------- request parsing


async def _json_body(request: web.Request, invalid: _AwsError) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise invalid from None
    if not isinstance(body, dict):
        raise invalid
    return body


def _model_error(status: int, message: str) -> _AwsError:
    # What SageMaker answers when the container itself answered with an error status.
    return _AwsError(
        424,
        "ModelError",
        {
            "ErrorCode": "CLIENT_ERROR_FROM_MODEL" if status < 500 else "SERVER_ERROR_FROM_MODEL",
            "Message": f"Received {'client' if status < 500 else 'server'} error ({status}) from primary "
            f'with message "{message}".',
            "OriginalMessage": message,
            "OriginalStatusCode": status,
            "LogStreamArn": "arn:aws:logs:us-east-1:000000000000:log-group:/aws/sagemaker/Endpoints/sim",
        },
    )


async def _sm_request(
    request: web.Request, ctx: SimContext, arrival: float, fault: Fault
) -> tuple[GenRequest, str, dict[str, Any]]:
    body = await _json_body(request, _model_error(422, "request body is not a JSON object"))
    if isinstance(body.get("inputs"), str):
        fmt, texts = "tgi", [body["inputs"]]
        params = body.get("parameters") or {}
        max_tokens = params.get("max_new_tokens")
    elif isinstance(body.get("messages"), list):
        fmt = "messages"
        try:  # (as the OpenAI routes read them: each text counted on its own, parts and all)
            texts = chat_texts(body["messages"])
        except ValueError as err:
            raise _model_error(422, str(err)) from err
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    elif isinstance(body.get("prompt"), str):
        fmt, texts = "completions", [body["prompt"]]
        max_tokens = body.get("max_tokens")
    else:
        raise _model_error(422, "expected 'inputs' (TGI), 'messages' or 'prompt'")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise _model_error(422, "max tokens must be a positive integer")
    n = sum([await ctx.count_tokens(t) for t in texts])
    too_long = context_refusal(ctx.cfg, n)
    if too_long:  # (the container's validation error, as TGI's)
        raise _model_error(422, f"Input validation error: {too_long}")
    text = "\n".join(texts)
    extra = ctx.faults.config.slow_first_byte_s if fault.kind is FaultKind.SLOW_FIRST_BYTE else 0.0
    return GenRequest(n, max_tokens, text, arrival, extra, _reply(ctx, text, body)), fmt, body


async def _sm_early_fault(fault: Fault) -> None:
    kind = fault.kind
    if kind is FaultKind.HTTP_500:
        raise _model_error(500, "simulated internal server error")
    if kind is FaultKind.HTTP_503:
        raise _AwsError(503, "ServiceUnavailable", {"message": "simulated: the service is unavailable"})
    if kind is FaultKind.THROTTLE:
        raise _AwsError(400, "ThrottlingException", {"message": "Rate exceeded"})
    if kind is FaultKind.HANG:
        await hang_forever()


async def _no_byte_yet(ctx: SimContext, gen: Generation) -> None:
    """The slow-first-byte fault sends nothing, not even the headers, for its extra delay (as on
    the OpenAI routes): a client's first-byte timeout must see the silence, not an open stream."""
    if gen.request.extra_ttft_s:
        await ctx.sleep_until(gen.arrival + gen.request.extra_ttft_s)


def _finish(gen: Generation) -> str:
    return gen.finish_reason


def _sm_full_answer(fmt: str, body: dict[str, Any], text: str, gen: Generation) -> Any:
    if fmt == "tgi":
        item: dict[str, Any] = {"generated_text": text}
        if (body.get("parameters") or {}).get("details"):
            item["details"] = {
                "finish_reason": "length" if gen.finish_reason == "length" else "eos_token",
                "generated_tokens": gen.usage.completion_tokens,
                "seed": None,
            }
        return [item]
    choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(gen)}
    if fmt == "messages":
        choice["message"] = {"role": "assistant", "content": text}
        obj = "chat.completion"
    else:
        choice["text"] = text
        obj = "text_completion"
    return {
        "id": f"sim-{gen.rid}",
        "object": obj,
        "created": int(time.time()),
        "model": "fmbench-sim",
        "choices": [choice],
        "usage": gen.usage.as_dict(),
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _sm_stream_frame(fmt: str, index: int, text: str, last: bool, gen: Generation) -> bytes:
    if fmt == "tgi":
        event: dict[str, Any] = {
            "token": {"id": index, "text": text, "logprob": 0.0, "special": False},
            "generated_text": None,
            "details": None,
        }
        if last:
            event["details"] = {
                "finish_reason": "length" if gen.finish_reason == "length" else "eos_token",
                "generated_tokens": gen.usage.completion_tokens,
                "seed": None,
            }
        # TGI's SSE framing without the space after "data:".
        return b"data:" + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
    key = "delta" if fmt == "messages" else "text"
    choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(gen) if last else None}
    choice[key] = {"content": text} if fmt == "messages" else text
    return _sse({"id": f"sim-{gen.rid}", "object": "chunk", "choices": [choice]})


def _sm_stream_tail(fmt: str, body: dict[str, Any], gen: Generation) -> list[bytes]:
    if fmt == "tgi":
        return []
    tail = []
    if (body.get("stream_options") or {}).get("include_usage"):
        tail.append(
            _sse({"id": f"sim-{gen.rid}", "object": "chunk", "choices": [], "usage": gen.usage.as_dict()})
        )
    tail.append(b"data: [DONE]\n\n")
    return tail


async def _br_request(request: web.Request, ctx: SimContext, arrival: float, fault: Fault) -> GenRequest:
    invalid = _AwsError(400, "ValidationException", {"message": "Malformed input request"})
    body = await _json_body(request, invalid)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _AwsError(400, "ValidationException", {"message": "messages: at least one message is required"})
    parts = []
    for message in messages:
        for block in (message or {}).get("content") or []:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
    for block in body.get("system") or []:
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            parts.append(block["text"])
    max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise _AwsError(
            400, "ValidationException", {"message": "inferenceConfig.maxTokens must be at least 1"}
        )
    text = "\n".join(parts)
    n = await ctx.count_tokens(text)
    too_long = context_refusal(ctx.cfg, n)
    if too_long:
        raise _AwsError(400, "ValidationException", {"message": too_long})
    extra = ctx.faults.config.slow_first_byte_s if fault.kind is FaultKind.SLOW_FIRST_BYTE else 0.0
    return GenRequest(n, max_tokens, text, arrival, extra, _reply(ctx, text, body))


def _reply(ctx: SimContext, text: str, body: Any) -> tuple[str, ...] | None:
    # The answer model and the judge work behind the SageMaker and Bedrock framings too.
    reply = choose_reply(content_model(ctx.cfg), text, request_answers(body))
    return tuple(reply) if reply else None


async def _br_early_fault(fault: Fault) -> None:
    kind = fault.kind
    if kind is FaultKind.HTTP_500:
        raise _AwsError(500, "InternalServerException", {"message": "simulated internal server error"})
    if kind is FaultKind.HTTP_503:
        raise _AwsError(503, "ServiceUnavailableException", {"message": "simulated: service unavailable"})
    if kind is FaultKind.THROTTLE:
        raise _AwsError(
            429, "ThrottlingException", {"message": "Too many requests, please wait before trying again."}
        )
    if kind is FaultKind.HANG:
        await hang_forever()


def _br_stop(gen: Generation) -> str:
    if gen.context_cut:
        return "model_context_window_exceeded"
    return "max_tokens" if gen.finish_reason == "length" else "end_turn"


def _br_usage(gen: Generation) -> dict[str, int]:
    u = gen.usage
    return {
        "inputTokens": u.prompt_tokens,
        "outputTokens": u.completion_tokens,
        "totalTokens": u.total_tokens,
    }


__all__ = ["AwsRoutes", "register"]
