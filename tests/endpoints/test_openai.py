"""OpenAIClient over real HTTP on 127.0.0.1: timing stamps, usage, SSE framing, every error kind."""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fmbench.config import InferenceConfig, OpenAIEndpoint, SimulatedEndpoint
from fmbench.endpoints import make_client
from fmbench.endpoints.openai import _EXCEPTION_MAP, OpenAIClient, _translate
from fmbench.errors import (
    EndpointConnectionError,
    EndpointError,
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointThrottled,
    EndpointTimeout,
)
from fmbench.protocol import Completion, EndpointClient, Prompt
from tests.support.fake_openai import FakeOpenAI

PROMPT = Prompt("p0", "Hello there", 2)
KEY = "sk-test-SECRET-123456"


def _complete(url: str, model: str, api: str = "chat", prompt: Prompt = PROMPT, **inf: Any) -> Completion:
    async def go() -> Completion:
        flavour: Any = api
        client = OpenAIClient(url, model, api=flavour, inference=InferenceConfig(**inf), api_key=KEY)
        await client.open(1)
        try:
            return await client.complete(prompt)
        finally:
            await client.close()

    return asyncio.run(go())


def test_stream_chat_stamps_first_text_chunk_and_reads_usage(fake_openai: FakeOpenAI) -> None:
    c = _complete(fake_openai.url, "ok:ttft=0.05:tpot=0.01:n=5")
    assert c.text == " t0 t1 t2 t3 t4"
    assert len(c.chunk_times) == 5
    # the role-only chunk arrives at once; the first token only after ttft
    assert c.t_first_token is not None and c.t_first_token - c.t_start >= 0.045
    assert c.t_first_token == c.chunk_times[0] and c.chunk_times == sorted(c.chunk_times)
    assert c.t_end >= c.chunk_times[-1]
    assert (c.input_tokens, c.output_tokens, c.http_status) == (3, 5, 200)
    seen = fake_openai.stats()
    body = seen["bodies"][-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "Hello there"}]
    assert seen["auth"][-1] == f"Bearer {KEY}"


def test_completions_api_and_no_usage(fake_openai: FakeOpenAI) -> None:
    c = _complete(fake_openai.url, "nousage:n=3", api="completions")
    assert c.text == " t0 t1 t2" and len(c.chunk_times) == 3
    assert c.input_tokens is None and c.output_tokens is None
    assert fake_openai.stats()["bodies"][-1]["prompt"] == "Hello there"


def test_non_streaming_first_token_is_end(fake_openai: FakeOpenAI) -> None:
    c = _complete(fake_openai.url, "ok:ttft=0.02:n=4", stream=False, max_tokens=4)
    assert c.t_first_token == c.t_end and c.chunk_times == []
    assert c.text == " t0 t1 t2 t3" and c.output_tokens == 4
    assert "stream_options" not in fake_openai.stats()["bodies"][-1]


def test_a_prompt_sent_many_times_at_once_goes_out_whole_every_time(fake_openai: FakeOpenAI) -> None:
    """A prompt's request body is encoded once and its aiohttp payload object reused by requests in
    flight together: every copy the server receives is the whole body, with its JSON content type."""
    prompts = [Prompt("a", "first prompt", 2), Prompt("b", "second " * 500, 500)]

    async def go() -> list[Completion]:
        client = OpenAIClient(fake_openai.url, "ok:ttft=0.01:n=2", inference=InferenceConfig(stream=False))
        await client.open(8)
        try:
            assert client._payload(prompts[0]) is client._payload(prompts[0])
            return await asyncio.gather(*(client.complete(prompts[k % 2]) for k in range(16)))
        finally:
            await client.close()

    assert all(c.output_tokens == 2 for c in asyncio.run(go()))
    bodies = fake_openai.stats()["bodies"][-16:]
    contents = sorted(b["messages"][0]["content"] for b in bodies)
    assert contents == sorted([prompts[0].text] * 8 + [prompts[1].text] * 8)
    assert fake_openai.stats()["content_types"][-16:] == ["application/json"] * 16


def test_long_prompt_and_thousand_chunk_stream(fake_openai: FakeOpenAI) -> None:
    long_prompt = Prompt("long", "word " * 32_000, 32_000)
    c = _complete(fake_openai.url, "ok:n=1000", prompt=long_prompt)
    assert len(c.chunk_times) == 1000 and c.output_tokens == 1000
    assert c.text == "".join(f" t{i}" for i in range(1000))


@pytest.mark.parametrize(
    ("model", "inference", "error", "kind", "fragment"),
    [
        ("500", {}, EndpointHTTPError, "server_error", "model exploded"),
        ("429", {}, EndpointThrottled, "throttled", "slow down"),
        ("hang", {"timeout_s": 0.3}, EndpointTimeout, "timeout", "0.3 s"),
        # reset after the headers: the endpoint cut its answer off, it did not fail to connect
        ("reset:tpot=0.01", {}, EndpointProtocolError, "protocol", "answer cut off"),
        ("malformed", {}, EndpointProtocolError, "protocol", "malformed SSE"),
        ("nonjson", {}, EndpointProtocolError, "protocol", "not JSON"),
        ("nonjson_body", {"stream": False}, EndpointProtocolError, "protocol", "not JSON"),
        ("nodone", {}, EndpointProtocolError, "protocol", "[DONE]"),
        ("empty", {}, EndpointProtocolError, "protocol", "no output"),
        ("echo_key", {}, EndpointHTTPError, "client_error", "HTTP 401"),
    ],
)
def test_error_kinds(
    fake_openai: FakeOpenAI,
    model: str,
    inference: dict[str, Any],
    error: type[EndpointError],
    kind: str,
    fragment: str,
) -> None:
    with pytest.raises(error) as info:
        _complete(fake_openai.url, model, **inference)
    assert info.value.kind == kind
    assert fragment in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(info.value.__cause__ or "")


def test_timeouts_of_overlapping_requests_share_one_timer_and_a_cancel_stays_a_cancel(
    fake_openai: FakeOpenAI,
) -> None:
    """Each of several requests started at different times times out at its own deadline; one
    cancelled from outside (a shard being stopped) raises CancelledError, not a timeout; and the
    client's timer works again after every request in flight has ended."""
    timeout = 0.6  # far from the cancel at 0.15 s: a stalled loop must not let the deadline win

    async def go() -> tuple[list[Any], list[float], Any]:
        client = OpenAIClient(fake_openai.url, "hang", inference=InferenceConfig(timeout_s=timeout))
        await client.open(4)
        loop = asyncio.get_running_loop()
        try:
            async def timed(delay: float) -> float:
                await asyncio.sleep(delay)
                t0 = loop.time()
                with pytest.raises(EndpointTimeout, match=f"within {timeout:g} s"):
                    await client.complete(PROMPT)
                return loop.time() - t0

            stopped = asyncio.ensure_future(client.complete(PROMPT))
            waits = asyncio.gather(timed(0.0), timed(0.1))
            await asyncio.sleep(0.15)
            stopped.cancel()
            outcomes = await asyncio.gather(stopped, return_exceptions=True)
            elapsed = list(await waits)
            elapsed.append(await timed(0.0))  # nothing was in flight: the timer is armed afresh
            return outcomes, elapsed, client._deadlines
        finally:
            await client.close()

    outcomes, elapsed, deadlines = asyncio.run(go())
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert all(e >= timeout - 0.005 for e in elapsed), elapsed
    assert deadlines is not None and not deadlines._live and not deadlines._fired


def test_throttled_parses_retry_after(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(EndpointThrottled) as info:
        _complete(fake_openai.url, "429")
    assert info.value.retry_after_s == 7.0 and info.value.status == 429


def test_key_is_redacted_when_the_server_echoes_it(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(EndpointHTTPError) as info:
        _complete(fake_openai.url, "echo_key")
    assert "***" in str(info.value) and KEY not in str(info.value)
    client = OpenAIClient(fake_openai.url, "m", api_key=KEY)
    assert KEY not in repr(client)


def test_secret_headers_from_the_environment_are_sent_and_redacted(
        monkeypatch: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> None:
    """``headers_env`` (a gateway's own key header): the value is read from the environment when the
    client is made, sent with every request, and redacted from an error that echoes it."""
    inf = InferenceConfig(max_tokens=3)
    gateway_key = "gw-PLANTED-5f1e"
    cfg = OpenAIEndpoint(provider="openai", base_url=fake_openai.url, model="ok:n=2", headers={"X-Team": "bench"},
                         headers_env={"X-Gateway-Key": "FMB_TEST_GATEWAY_KEY"})
    monkeypatch.delenv("FMB_TEST_GATEWAY_KEY", raising=False)
    with pytest.raises(EndpointError, match=r"FMB_TEST_GATEWAY_KEY \(headers_env.X-Gateway-Key\) is not set"):
        make_client(cfg, inf)
    monkeypatch.setenv("FMB_TEST_GATEWAY_KEY", gateway_key)

    async def go(client: EndpointClient) -> Completion:
        await client.open(1)
        try:
            return await client.complete(PROMPT)
        finally:
            await client.close()

    assert asyncio.run(go(make_client(cfg, inf))).text == " t0 t1"
    sent = fake_openai.stats()["headers"][-1]
    assert sent["X-Gateway-Key"] == gateway_key and sent["X-Team"] == "bench"
    echo = make_client(cfg.model_copy(update={"model": "echo_headers"}), inf)
    with pytest.raises(EndpointHTTPError) as info:
        asyncio.run(go(echo))
    assert "bench" in str(info.value) and "***" in str(info.value) and gateway_key not in str(info.value)
    assert gateway_key not in repr(echo)


def test_connection_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(EndpointConnectionError) as info:
        _complete(f"http://127.0.0.1:{port}/v1", "ok")
    assert info.value.kind == "connection"


def test_not_opened_is_a_clear_error() -> None:
    client = OpenAIClient("http://127.0.0.1:1/v1", "m")
    with pytest.raises(EndpointConnectionError, match="open"):
        asyncio.run(client.complete(PROMPT))


def _aiohttp_exception_classes() -> list[type[BaseException]]:
    out = []
    for name in aiohttp.__all__:
        obj = getattr(aiohttp, name)
        if inspect.isclass(obj) and issubclass(obj, aiohttp.ClientError) and obj is not aiohttp.ClientError:
            out.append(obj)
    return out


@pytest.mark.parametrize("cls", _aiohttp_exception_classes(), ids=lambda c: c.__name__)
def test_every_aiohttp_error_has_an_explicit_mapping(cls: type[BaseException]) -> None:
    first = next(entry for entry in _EXCEPTION_MAP if issubclass(cls, entry[0]))
    assert first[0] is not aiohttp.ClientError, f"{cls.__name__} only reaches the catch-all"
    assert issubclass(first[1], EndpointError)


def test_translate_examples_keep_kinds_and_redact() -> None:
    assert _translate(aiohttp.ServerDisconnectedError(), ()).kind == "connection"
    assert _translate(aiohttp.ClientPayloadError("cut"), ()).kind == "protocol"  # always mid-answer
    # the same breaks once a byte of the answer arrived: the answer was cut off
    begun = _translate(aiohttp.ServerDisconnectedError(), (), answer_begun=True)
    assert begun.kind == "protocol" and str(begun).startswith("answer cut off: server disconnected")
    assert _translate(ConnectionResetError(104, "reset"), (), answer_begun=True).kind == "protocol"
    assert _translate(aiohttp.SocketTimeoutError("slow"), (), answer_begun=True).kind == "timeout"
    assert _translate(aiohttp.SocketTimeoutError("slow"), ()).kind == "timeout"
    assert _translate(ConnectionResetError(104, "reset"), ()).kind == "connection"
    assert _translate(ValueError("weird"), ()).kind == "protocol"
    assert KEY not in str(_translate(aiohttp.ClientError(f"boom {KEY}"), (KEY,)))


async def _raw_sse_server(payload: bytes, piece: int, pause: float,
                          content_type: bytes = b"text/event-stream") -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nConnection: close\r\n\r\n")
        for i in range(0, len(payload), piece):
            writer.write(payload[i : i + piece])
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1"


SSE = (
    b'data: {"choices":[{"delta":{"role":"assistant"}}]}\r\n\r\n'
    b": keep-alive comment\n\n"
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    b'event: message\ndata: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize(
    ("piece", "pause"),
    [(1, 0.0005), (7, 0.001), (len(SSE), 0.0)],
    ids=["byte-by-byte", "7-byte-reads", "one-read"],
)
def test_sse_split_or_merged_across_reads(piece: int, pause: float) -> None:
    c = _stream_from(SSE, piece, pause)
    assert c.text == "Hello" and len(c.chunk_times) == 2 and c.output_tokens == 2
    if piece == len(SSE):
        assert c.chunk_times[0] == c.chunk_times[1]  # one read, one arrival stamp


PLAIN_SSE = (  # every event one `data: ` line: the decoder's fast path when it arrives in one read
    b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n'
    b'data: {"choices":[{"delta":{"reasoning_content":"hm"}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":""}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
    b'data: {"choices":[{"delta":{"content":"after done"}}]}\n\n'
)


def _stream_from(payload: bytes, piece: int, pause: float = 0.0,
                 content_type: bytes = b"text/event-stream", **options: Any) -> Completion:
    """The answer of an `OpenAIClient` (with ``options``) to a server that sends ``payload`` ``piece``
    bytes at a time."""
    async def go() -> Completion:
        srv, url = await _raw_sse_server(payload, piece, pause, content_type)
        client = OpenAIClient(url, "m", **options)
        await client.open(1)
        try:
            return await client.complete(PROMPT)
        finally:
            await client.close()
            srv.close()

    return asyncio.run(go())


def test_plain_sse_in_one_read_reads_as_byte_by_byte() -> None:
    one, split = _stream_from(PLAIN_SSE, len(PLAIN_SSE)), _stream_from(PLAIN_SSE, 1, 0.0005)
    for c in (one, split):  # the reasoning piece counts as output; the empty content and [DONE]'s tail do not
        assert c.text == "hmHello" and len(c.chunk_times) == 3 and c.output_tokens == 3
    assert one.t_first_token == one.chunk_times[0] == one.chunk_times[-1]  # one read, one stamp
    assert split.chunk_times == sorted(split.chunk_times) and split.chunk_times[0] < split.chunk_times[-1]


@pytest.mark.parametrize(
    ("middle", "text", "tokens"),
    [
        (b'{"choices":[{"delta":{"content":"b"}}],"usage":{"prompt_tokens":2,"completion_tokens":9}}', "abc", 9),
        (b'{"choices":[{"delta":{"content":"b"}}],"timings":{"predicted_n":7}}', "abc", 7),
        (b'{"choices":[{"delta":{"reasoning_content":"b"}}]}', "abc", None),
        (b'{"choices":[{"delta":{"content":null}}]}', "ac", None),
        # a proxy that writes every field of its schema: an error of null is no error
        (b'{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":2},"error":null}', "ac", 2),
    ],
    ids=["usage-on-a-text-chunk", "timings-on-a-text-chunk", "reasoning", "null-content", "null-error"],
)
def test_unusual_chunks_inside_one_read_count_as_when_read_one_by_one(middle: bytes, text: str,
                                                                    tokens: int | None) -> None:
    """Usage, timings or a chunk without content between text chunks of one read count the same as
    when every event arrives in its own read."""
    events = [b'{"choices":[{"delta":{"content":"a"}}]}', middle, b'{"choices":[{"delta":{"content":"c"}}]}']
    payload = b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    one, split = _stream_from(payload, len(payload)), _stream_from(payload, 1, 0.0005)
    for c in (one, split):
        assert (c.text, len(c.chunk_times), c.output_tokens) == (text, len(text), tokens)


@pytest.mark.parametrize(
    ("bad", "error", "fragment"),
    [
        (b'data: {"error":{"message":"overloaded","code":503}}\n\n', EndpointHTTPError, "overloaded"),
        # as SageMaker's client reads the same event: 429 is throttling, a code that is no status a 500
        (b'data: {"error":{"message":"rate","code":429}}\n\n', EndpointThrottled, "(status 429): "),
        (b'data: {"error":{"message":"odd","code":1001}}\n\n', EndpointHTTPError, "(status 500): "),
        # an error the server names fails the answer even beside a last piece of text (as SageMaker's
        # client reads it: `_chat.is_error_event`)
        (b'data: {"choices":[{"delta":{"content":"lo"}}],"error":{"message":"cut","code":503}}\n\n',
         EndpointHTTPError, "(status 503): cut"),
        (b"data: {not json\n\n", EndpointProtocolError, "not JSON"),
        (b"data: [1, 2]\n\n", EndpointProtocolError, "not a JSON object: b'[1, 2]'"),
        # choices not shaped as the API defines them: said so, not an "unexpected AttributeError"
        (b'data: {"choices":[null]}\n\n', EndpointProtocolError, "choices[0] is null, not an object"),
        (b'data: {"choices":"lo"}\n\n', EndpointProtocolError, "choices is a str, not a list"),
        (b'data: {"choices":[{"delta":"lo"}]}\n\n', EndpointProtocolError, "its delta or message is not an object"),
        (b'data: {"choices":[{"delta":{"content":5}}]}\n\n', EndpointProtocolError,
         "output text is not a string: int"),
    ],
    ids=["error-event", "throttled-event", "not-a-status-event", "error-beside-text", "not-json", "not-an-object",
         "null-choice", "choices-not-a-list", "delta-not-an-object", "content-not-text"],
)
def test_a_bad_event_after_text_in_the_same_read_fails_the_request(
    bad: bytes, error: type[EndpointError], fragment: str
) -> None:
    payload = b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n' + bad + b"data: [DONE]\n\n"
    for piece in (len(payload), 1):
        with pytest.raises(error, match=re.escape(fragment)):
            _stream_from(payload, piece)


@pytest.mark.parametrize(("payload", "content_type", "message"), [
    (b"<html><body>sign in</body></html>", b"text/html; charset=utf-8",
     ("stream ended without [DONE] (its Content-Type is text/html, not text/event-stream); it ended inside a "
      "line: b'<html><body>sign in</body></html>'")),
    (b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\ndata: {"cho', b"text/event-stream",
     "stream ended without [DONE]; it ended inside a line: b'data: {\"cho'"),
    (b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n', b"text/event-stream", "stream ended without [DONE]"),
    (b"<html>\n<body>sign in</body>\n</html>\n", b"text/html",
     "malformed SSE line: b'<html>' (its Content-Type is text/html, not text/event-stream)"),
], ids=["one-line-page", "cut-inside-an-event", "cut-between-events", "page"])
def test_a_stream_that_ends_without_done_says_what_arrived(payload: bytes, content_type: bytes, message: str) -> None:
    """A 200 answer that is not an event stream (a proxy's sign-in page; without a newline it reads as
    one unfinished line), or a stream cut inside a line, is named by what the client got."""
    for piece in (len(payload), 1):
        with pytest.raises(EndpointProtocolError) as err:
            _stream_from(payload, piece, content_type=content_type)
        assert str(err.value) == message


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_an_answer_that_echoes_the_api_key_never_puts_it_in_the_error(stream: bool) -> None:
    """A page that quotes the request (a debugging proxy's, say) is quoted in the error of a request
    that could not be read: the API key in it is redacted, as in an HTTP error's body."""
    key = "sk-fmbench-echoed-5f0c"
    payload = f"<pre>Authorization: Bearer {key}</pre>".encode()
    with pytest.raises(EndpointProtocolError) as err:
        _stream_from(payload, len(payload), content_type=b"text/html", api_key=key,
                     inference=InferenceConfig(stream=stream))
    assert key not in str(err.value) and "Bearer ***" in str(err.value)
    # The message quotes 80 bytes of the answer: a key the cut falls inside is masked as far as it is quoted.
    cut = (" " * (80 - len("<pre>Bearer ") - 12) + f"<pre>Bearer {key}</pre>").encode()
    with pytest.raises(EndpointProtocolError) as err:
        _stream_from(cut, len(cut), content_type=b"text/html", api_key=key, inference=InferenceConfig(stream=stream))
    assert key[:12] not in str(err.value) and "Bearer ***'" in str(err.value)


def test_sse_decoder_fast_path_returns_what_the_line_by_line_path_does() -> None:
    from fmbench.endpoints.openai import _SSEDecoder

    reads = [PLAIN_SSE, b"data: a\n\n", b"data: \n\n", b"data:  two spaces\n\n", b"data: a\n\ndata: b\n\n\n",
             b"data: a\nid: 7\n\n", b"data: a\r\n\n", b"data: a\n: note\n\ndata: b\n\n", b"data: x\ndata: y\n\n"]
    for read in reads:
        whole = _SSEDecoder().feed(read)
        dec = _SSEDecoder()
        byte_by_byte = [p for i in range(len(read)) for p in dec.feed(read[i : i + 1])]
        assert whole == byte_by_byte, read


def test_make_client_providers(monkeypatch: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> None:
    inf = InferenceConfig(max_tokens=3)
    sim = make_client(
        SimulatedEndpoint(provider="simulated", model="ok", api="completions"), inf, url="http://h:1"
    )
    assert isinstance(sim, OpenAIClient) and isinstance(sim, EndpointClient)
    assert str(sim._url) == "http://h:1/v1/completions"
    with pytest.raises(EndpointError, match="URL"):
        make_client(SimulatedEndpoint(provider="simulated"), inf)
    cfg = OpenAIEndpoint(
        provider="openai",
        base_url=fake_openai.url,
        model="ok:n=2",
        api_key_env="FMB_TEST_KEY",
        headers={"X-Team": "bench"},
    )
    with pytest.raises(EndpointError, match="FMB_TEST_KEY"):
        make_client(cfg, inf)
    monkeypatch.setenv("FMB_TEST_KEY", KEY)
    client = make_client(cfg, inf)

    async def go() -> Completion:
        await client.open(2)
        try:
            return await client.complete(PROMPT)
        finally:
            await client.close()

    assert asyncio.run(go()).text == " t0 t1"
    assert fake_openai.stats()["auth"][-1] == f"Bearer {KEY}"

    class Other:
        provider = "carrier-pigeon"

    with pytest.raises(EndpointError, match="carrier-pigeon"):
        make_client(Other(), inf)


def test_sse_decoder_joins_multiline_data_and_long_lines() -> None:
    from fmbench.endpoints.openai import _SSEDecoder

    dec = _SSEDecoder()
    assert dec.feed(b"data: a\r\ndata: b\r\n\r\nid: 1\ndata:c\n") == [b"a\nb"]
    assert dec.feed(b"\n") == [b"c"]
    big = b'{"x": "' + b"y" * 1_000_000 + b'"}'
    stream = b"data: " + big + b"\n\n"
    out = []
    for i in range(0, len(stream), 1024):  # one event spread over ~1,000 reads
        out += dec.feed(stream[i : i + 1024])
    assert out == [big]
    dec.feed(b"data: [DONE]")
    assert dec.pending() == b"[DONE]"
    with pytest.raises(EndpointProtocolError, match="malformed"):
        _SSEDecoder().feed(b"garbage\n\n")


def _complete_whole(answer: dict[str, Any]) -> Completion:
    """One non-streamed request to a real server on 127.0.0.1 that answers HTTP 200 with ``answer``."""
    import json

    from aiohttp import web

    from tests.support.app_thread import serve_app

    async def reply(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", reply)
    with serve_app(app) as url:
        client = OpenAIClient(f"{url}/v1", "m", inference=InferenceConfig(stream=False))

        async def go() -> Completion:
            await client.open(1)
            try:
                return await client.complete(PROMPT)
            finally:
                await client.close()

        return asyncio.run(go())


@pytest.mark.parametrize(("answer", "text", "status"), [
    ({"choices": [{"message": {"content": "Paris."}}], "usage": {"completion_tokens": 2}, "error": None}, "Paris.", None),
    ({"choices": [{"message": {"content": "Par"}}], "error": {"message": "cut", "code": 503}}, None, 503),
], ids=["null-error", "error-beside-text"])
def test_a_whole_answer_is_an_error_when_it_names_one(answer: dict[str, Any], text: str | None,
                                                      status: int | None) -> None:
    """As a stream's events are read (`_chat.is_error_event`): an error of null is none; one named
    beside the text failed the answer."""
    if status is None:
        assert _complete_whole(answer).text == text
    else:
        with pytest.raises(EndpointHTTPError, match=r"\(status 503\): cut") as err:
            _complete_whole(answer)
        assert err.value.status == status


@pytest.mark.parametrize("answer", [
    {"error": None},
    {"id": "x", "object": "chat.completion", "choices": None, "error": None},
    {"id": "x", "object": "chat.completion", "choices": [], "error": None, "usage": None},
], ids=["no-choices", "null-choices", "empty-choices"])
def test_a_whole_answer_with_a_null_error_and_no_choices_is_a_protocol_error(answer: dict[str, Any]) -> None:
    """HTTP 200 and ``"error": null`` name no error, but an answer without choices carries nothing the
    endpoint generated: a failed request of kind protocol, saying so, not a success nor a client bug
    (a KeyError or TypeError reading the missing choices)."""
    with pytest.raises(EndpointProtocolError) as err:
        _complete_whole(answer)
    assert err.value.kind == "protocol" and str(err.value) == "answer carries no output text"
    assert err.value.__cause__ is None  # raised on purpose, not translated from a failure to read it


@pytest.mark.parametrize(("answer", "fragment"), [
    ({"choices": [None], "error": None}, "choices[0] is null, not an object"),
    ({"choices": ["Paris."]}, "choices[0] is a str, not an object"),
    ({"choices": {"0": {"message": {"content": "Paris."}}}}, "choices is a dict, not a list"),
    ({"choices": [{"message": "Paris."}]}, "its delta or message is not an object"),
    ({"choices": [{"message": {"content": ["Paris."]}}]}, "output text is not a string: list"),
], ids=["null-choice", "text-choice", "choices-object", "message-text", "content-list"])
def test_a_whole_answer_whose_choices_are_misshapen_is_a_protocol_error_that_says_so(answer: dict[str, Any],
                                                                                     fragment: str) -> None:
    """Not an "unexpected AttributeError" from reading it: the failed request's error names what is
    wrong with the answer's shape (and never its text)."""
    with pytest.raises(EndpointProtocolError, match=re.escape(fragment)) as err:
        _complete_whole(answer)
    assert err.value.kind == "protocol" and "Paris" not in str(err.value)


def test_an_error_status_whose_body_breaks_off_keeps_its_status() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()  # reset before its body

    async def go() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        client = OpenAIClient(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1", "m")
        await client.open(1)
        try:
            await client.complete(PROMPT)
        finally:
            await client.close()
            srv.close()

    with pytest.raises(EndpointHTTPError) as info:
        asyncio.run(go())
    assert info.value.kind == "server_error" and "HTTP 503" in str(info.value) and "cut off" in str(info.value)


@pytest.mark.parametrize(("model", "stream", "warned"), [
    ("whole", True, True), ("ok", True, False), ("whole", False, False)], ids=["ignores-stream", "streams", "asked-whole"])
def test_the_probe_warns_when_an_endpoint_asked_to_stream_answers_whole(
        fake_openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture, model: str, stream: bool,
        warned: bool) -> None:
    """A server or proxy that ignores ``"stream": true`` answers whole: the run can go on (every request
    is a success), but its TTFT is the whole answer's time, so the probe says so before a shard is run."""
    import logging

    from fmbench.config import load_config
    from fmbench.preflight import probe_endpoint

    config = tmp_path / "bench.yml"
    config.write_text(f"""
name: t
buckets: [[1, 100]]
datasets: [{{name: syn, source: synthetic, prompts_per_bucket: 2}}]
experiments:
  - name: gw
    endpoint: {{provider: openai, base_url: "{fake_openai.url}", model: {model}}}
    inference: {{stream: {str(stream).lower()}}}
""")
    caplog.set_level(logging.WARNING, logger="fmbench")
    probe_endpoint(load_config(config).experiments[0], None, "experiments[gw].endpoint")
    said = [r.getMessage() for r in caplog.records if "answered whole" in r.getMessage()]
    expected = ("experiments[gw].endpoint: asked to stream, the endpoint answered whole (no streamed chunks): its "
                "TTFT will be the whole answer's time and it has no TPOT or inter-token times; inference.stream: "
                "false measures it as what it is")
    assert said == ([expected] if warned else [])



@pytest.mark.parametrize("model", ["whole", "ok"])
def test_answers_to_a_streamed_request_that_arrive_whole_are_noted_counted_and_warned_of(
        fake_openai: FakeOpenAI, tmp_path: Path, model: str) -> None:
    """Through the engine: each answer a server sent whole to a streamed request is a success noted as
    such, the shard counts them, and the report says what their TTFT is."""
    import polars as pl

    from fmbench.endpoints._chat import ANSWERED_WHOLE
    from fmbench.loadgen import ShardSpec, run_shard
    from fmbench.metrics import summarize
    from fmbench.report.render import _unstreamed_warning

    client = OpenAIClient(fake_openai.url, f"{model}:ttft=0.01:tpot=0.002:n=4", inference=InferenceConfig(stream=True))
    spec = ShardSpec(shard_id="gw", experiment="e", dataset="d", bucket="1-100", bucket_min=1, bucket_max=100,
                     concurrency=2, requests=6)
    run_shard(client, [PROMPT], spec, tmp_path / "gw.parquet", len)
    records = pl.read_parquet(tmp_path / "gw.parquet")
    assert records["ok"].all() and (records["output_tokens"] == 4).all()
    metrics = summarize(records, None)
    if model == "ok":  # streamed: no note, nothing counted, no warning
        assert records["note"].null_count() == records.height and (records["chunks"] == 4).all()
        assert metrics["unstreamed_answers"].to_list() == [0] and _unstreamed_warning(metrics) is None
        return
    assert records["note"].to_list() == [ANSWERED_WHOLE] * records.height and (records["chunks"] == 0).all()
    assert (records["ttft_s"] == records["latency_s"]).all() and records["tpot_s"].null_count() == records.height
    assert metrics["unstreamed_answers"].to_list() == [6]
    warning = _unstreamed_warning(metrics)
    assert warning is not None and warning.startswith(
        "1 shard (gw) asked to stream and got answers that arrived whole (6 of their 6 answers; ")
