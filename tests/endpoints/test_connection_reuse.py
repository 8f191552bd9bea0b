"""OpenAIClient against servers that close connections the way real ones do (llama.cpp, proxies).

A raw HTTP/1.1 server on 127.0.0.1, in its own thread and event loop, so each behaviour is exact:
it closes a connection after a number of answers without saying so (the keep-alive race a real
server loses now and then), announces ``Keep-Alive`` limits, or fails every request it reads.
It records which connection (client port) carried each request, and whether it read it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fmbench.config import InferenceConfig
from fmbench.endpoints.openai import OpenAIClient, _parse_keep_alive
from fmbench.errors import EndpointConnectionError, EndpointError
from fmbench.loadgen import run_shard
from fmbench.loadgen.spec import ShardSpec
from fmbench.metrics import summarize
from fmbench.protocol import Completion, Prompt
from fmbench.report.render import _resend_rows

PROMPT = Prompt("p0", "Hello there", 2)


def _sse(pieces: list[str], usage: dict[str, int] | None, timings: dict[str, Any] | None = None) -> bytes:
    events = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    final: dict[str, Any] = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    if timings is not None:
        final["timings"] = timings
    events.append(final)
    if usage is not None:
        events.append({"choices": [], "usage": usage})
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return body


@dataclass
class Behaviour:
    """What the server does; every field has a safe default (a well-behaved keep-alive server)."""

    answers_per_connection: int | None = None  # then it drops the connection unannounced
    keep_alive: str | None = None  # a Keep-Alive header to send
    fail_every_request: bool = False  # read the request, then close without answering
    pieces: list[str] = field(default_factory=lambda: ["Hel", "lo"])
    usage: dict[str, int] | None = field(default_factory=lambda: {"prompt_tokens": 2, "completion_tokens": 2})
    timings: dict[str, Any] | None = None
    stream: bool = True


class RawServer:
    """The server; ``log`` holds (client port, request number on that connection) per request read."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.b = behaviour
        self.log: list[tuple[int, int]] = []
        self.dropped = 0  # requests that arrived on a connection the server had given up
        self.events: list[tuple[str, float]] = []  # ("drop" | "answer", monotonic time it read the request)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def start(self) -> RawServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    @staticmethod
    def _abort(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:  # RST, as a server whose socket is gone answers a late request
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("peername")[1]
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                n += 1
                limit = self.b.answers_per_connection
                if limit is not None and n > limit:  # the race a real server loses: it closed first
                    self.dropped += 1
                    self.events.append(("drop", time.monotonic()))
                    self._abort(writer)
                    return
                self.log.append((port, n))
                self.events.append(("answer", time.monotonic()))
                if self.b.fail_every_request:
                    self._abort(writer)
                    return
                writer.write(self._answer())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def _answer(self) -> bytes:
        b = self.b
        if b.stream:
            body = _sse(b.pieces, b.usage, b.timings)
            ctype = b"text/event-stream"
        else:
            obj: dict[str, Any] = {"choices": [{"index": 0, "message": {"content": "".join(b.pieces)}}]}
            if b.usage is not None:
                obj["usage"] = b.usage
            body, ctype = json.dumps(obj).encode(), b"application/json"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: " + str(len(body)).encode()
        if b.keep_alive:
            head += b"\r\nKeep-Alive: " + b.keep_alive.encode()
        return head + b"\r\n\r\n" + body


@pytest.fixture
def make_server() -> Iterator[Any]:
    servers: list[RawServer] = []

    def make(**kw: Any) -> RawServer:
        srv = RawServer(Behaviour(**kw)).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


def _send(url: str, n: int, concurrency: int = 1, pause_s: float = 0.0,
          **inference: Any) -> list[Completion | EndpointError]:
    """``n`` requests, ``concurrency`` at a time, through one client (one connection pool)."""

    async def go() -> list[Completion | EndpointError]:
        client = OpenAIClient(url, "m", inference=InferenceConfig(max_tokens=8, **inference))
        await client.open(concurrency)
        out: list[Completion | EndpointError] = []
        try:
            for start in range(0, n, concurrency):
                batch = [client.complete(PROMPT) for _ in range(min(concurrency, n - start))]
                for r in await asyncio.gather(*batch, return_exceptions=True):
                    assert isinstance(r, (Completion, EndpointError)), r
                    out.append(r)
                if pause_s:
                    await asyncio.sleep(pause_s)
        finally:
            await client.close()
        return out

    return asyncio.run(go())


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("stream", [True, False])
def test_a_connection_the_server_dropped_is_resent_not_an_error(make_server: Any, concurrency: int,
                                                                stream: bool) -> None:
    # One answer per connection, then the server drops it without a word (as llama.cpp did after
    # streamed answers): every reuse fails before any answer byte, and is sent again.
    srv = make_server(answers_per_connection=1, stream=stream)
    results = _send(srv.url, 24, concurrency, stream=stream)
    errors = [r for r in results if isinstance(r, EndpointError)]
    assert not errors, errors[:3]
    assert len(srv.log) == 24  # each request handled exactly once by the server
    resends = sum(r.resends for r in results if isinstance(r, Completion))
    assert resends == srv.dropped  # every drop the server did is a counted resend, none hidden
    assert all(n == 1 for _, n in srv.log)


def test_timing_starts_at_the_send_that_was_answered(make_server: Any) -> None:
    # One request at a time: the server's log reads drop, answer for a resent request and answer
    # for the others (time.monotonic() is one clock for both threads). A resent request's t_start
    # lies after the dropped attempt was read and no later than the answered one was.
    srv = make_server(answers_per_connection=1)
    results = _send(srv.url, 12)
    events = iter(srv.events)
    resent = 0
    for c in results:
        assert isinstance(c, Completion)
        dropped = [next(events) for _ in range(c.resends)]
        kind, answered_at = next(events)
        assert kind == "answer" and all(k == "drop" for k, _ in dropped)
        assert c.t_start <= answered_at
        if dropped:
            resent += 1
            assert c.t_start > dropped[-1][1]
    assert resent > 0


def test_keep_alive_max_is_honoured(make_server: Any) -> None:
    # The server announces max=3 and drops the 4th request on a connection: the client opens a new
    # connection instead of sending it, so there is nothing to resend.
    srv = make_server(keep_alive="timeout=5, max=3", answers_per_connection=3)
    results = _send(srv.url, 10)
    assert all(isinstance(r, Completion) and r.resends == 0 for r in results)
    assert srv.dropped == 0
    per_conn: dict[int, int] = {}
    for port, n in srv.log:
        per_conn[port] = max(per_conn.get(port, 0), n)
    assert max(per_conn.values()) == 3 and len(per_conn) == 4


def test_keep_alive_idle_timeout_is_honoured(make_server: Any) -> None:
    # timeout=1: a connection idle for 0.9 s is past the client's margin (0.75 s) and is not reused.
    srv = make_server(keep_alive="timeout=1, max=100")
    _send(srv.url, 3, pause_s=0.9)
    assert len({port for port, _ in srv.log}) == 3
    # Without pauses the same server's connection is reused.
    srv2 = make_server(keep_alive="timeout=1, max=100")
    _send(srv2.url, 3)
    assert len({port for port, _ in srv2.log}) == 1


def test_a_server_that_drops_every_request_it_read_is_an_endpoint_error(make_server: Any) -> None:
    # Reading the request and closing without an answer, on new connections: the endpoint's failure,
    # recorded as such, never resent (a resend would hide a crashing server).
    srv = make_server(fail_every_request=True)
    results = _send(srv.url, 5)
    assert all(isinstance(r, EndpointConnectionError) for r in results), results
    assert all(r.resends == 0 for r in results if isinstance(r, EndpointError))
    assert len(srv.log) == 5


def test_stream_with_withheld_text_but_server_counted_tokens_is_a_success(make_server: Any) -> None:
    # llama.cpp withholds bytes that do not yet form whole UTF-8 characters: a short answer can
    # carry no text at all while its usage says tokens were generated.
    srv = make_server(pieces=["", ""], usage={"prompt_tokens": 5, "completion_tokens": 3})
    [c] = _send(srv.url, 1)
    assert isinstance(c, Completion)
    assert c.text == "" and c.output_tokens == 3 and c.t_first_token is None and c.note


def test_stream_without_usage_uses_the_servers_timings(make_server: Any) -> None:
    srv = make_server(pieces=["a", "b"], usage=None, timings={"prompt_n": 1, "predicted_n": 7})
    [c] = _send(srv.url, 1)
    assert isinstance(c, Completion)
    assert c.output_tokens == 7 and c.input_tokens is None  # prompt_n excludes cached tokens: not used


def test_records_say_whose_token_counts_they_hold(make_server: Any, tmp_path: Path) -> None:
    spec = ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="1-10", bucket_min=1, bucket_max=10,
                     concurrency=1, requests=2, warmup=0)
    for kw, source, out in [({"usage": None, "timings": {"predicted_n": 7}}, "server_output", 7),
                            ({"usage": None}, "tokenizer", 1), ({}, "server", 2)]:
        srv = make_server(pieces=["a", "b"], **kw)
        path = tmp_path / f"{source}.parquet"
        run_shard(OpenAIClient(srv.url, "m"), [PROMPT], spec, path, lambda text: len(text.split()))
        records = pl.read_parquet(path)
        assert records["usage_source"].to_list() == [source] * 2 and records["output_tokens"].to_list() == [out] * 2
        assert records["input_tokens"].to_list() == [2] * 2


def test_stream_with_no_text_and_no_count_stays_a_protocol_error(make_server: Any) -> None:
    srv = make_server(pieces=["", ""], usage=None)
    [r] = _send(srv.url, 1)
    assert isinstance(r, EndpointError) and r.kind == "protocol"


def test_parse_keep_alive() -> None:
    assert _parse_keep_alive("timeout=5, max=100") == (5.0, 100)
    assert _parse_keep_alive("max=3") == (None, 3)
    assert _parse_keep_alive("timeout=abc, max=2") == (None, 2)
    assert _parse_keep_alive("") == (None, None)


def test_resends_reach_the_records(make_server: Any, tmp_path: Path) -> None:
    srv = make_server(answers_per_connection=2)
    spec = ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="1-10", bucket_min=1, bucket_max=10,
                     concurrency=2, requests=20, warmup=0)
    client = OpenAIClient(srv.url, "m", inference=InferenceConfig(max_tokens=8))
    out = tmp_path / "s.parquet"
    result = run_shard(client, [PROMPT], spec, out, lambda text: len(text.split()))
    records = pl.read_parquet(out)
    assert result.errors == 0 and records["ok"].all()
    assert int(records["resends"].sum()) == srv.dropped > 0
    # ... and the metrics and the report's Errors section count them as resends, not as errors.
    metrics = summarize(records, None)
    assert metrics["errors"].to_list() == [0] and metrics["resends"].to_list() == [srv.dropped]
    (row,) = _resend_rows(metrics)
    assert row["Resent on a new connection"] == str(srv.dropped) and row["Requests"] == "20"
