"""Measure which async HTTP client adds the least to each request: aiohttp or httpx.

A benchmarking client's own overhead is reported as endpoint latency, so the choice is made by
measurement. The script starts a zero-latency HTTP/1.1 server in a separate process (a raw asyncio
protocol answering canned OpenAI SSE streams and JSON bodies, so the server is never the
bottleneck), then for each client measures:

* ``p50 us`` / ``p99 us``: round-trip latency of sequential requests (concurrency 1) -- client
  overhead plus loopback and the tiny server;
* ``cpu us/req``: client process CPU time per request at concurrency 32 (pure client overhead);
* ``req/s``: maximum throughput at concurrency 32 with one client process.

Run: ``uv run --no-sync python benchmarks/http_client_choice.py [--requests N]``.
The numbers and the decision are recorded in the `fmbench.endpoints.openai` module docstring.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNKS = 16  # output chunks per streamed answer


def _sse_body(chunks: int) -> bytes:
    events = []
    for i in range(chunks):
        chunk = {
            "id": "x",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}],
        }
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    usage = {"id": "x", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": chunks}}
    events.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def _canned(stream: bool, chunks: int = CHUNKS) -> bytes:
    if stream:
        body = _sse_body(chunks)
        ctype = b"text/event-stream"
    else:
        body = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi " * CHUNKS}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": CHUNKS},
            }
        ).encode()
        ctype = b"application/json"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: "
        + ctype
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class _Server(asyncio.Protocol):
    """Answers every request on a keep-alive connection with a canned response."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buf[:head_end]).lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            total = head_end + 4 + length
            if len(self.buf) < total:
                return
            body = bytes(self.buf[head_end + 4 : total])
            del self.buf[:total]
            stream = b'"stream": true' in body or b'"stream":true' in body
            m = re.search(rb'"max_tokens": ?(\d+)', body)
            key = (stream, int(m.group(1)) if m else CHUNKS)
            if key not in _CANNED:
                _CANNED[key] = _canned(*key)
            self.transport.write(_CANNED[key])


_CANNED: dict[tuple[bool, int], bytes] = {}


def _serve(port_q: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Server, "127.0.0.1", 0, backlog=1024)
        port_q.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


BODY = json.dumps(
    {
        "model": "m",
        "messages": [{"role": "user", "content": "hello " * 50}],
        "max_tokens": CHUNKS,
        "stream": True,
    }
).encode()


async def _aiohttp_client(
    url: str, conc: int
) -> tuple[Callable[[], Awaitable[int]], Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=conc, keepalive_timeout=60),
        headers={"Content-Type": "application/json"},
    )
    from yarl import URL

    u = URL(url)

    async def one() -> int:
        n = 0
        async with session.post(u, data=BODY) as resp:
            async for data in resp.content.iter_any():
                n += data.count(b"\n\n")
        return n

    return one, session.close


async def _httpx_client(
    url: str, conc: int
) -> tuple[Callable[[], Awaitable[int]], Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=conc, max_keepalive_connections=conc),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )

    async def one() -> int:
        n = 0
        async with client.stream("POST", url, content=BODY) as resp:
            async for data in resp.aiter_raw():
                n += data.count(b"\n\n")
        return n

    return one, client.aclose


async def _fmbench_client(
    url: str, conc: int
) -> tuple[Callable[[], Awaitable[int]], Callable[[], Awaitable[None]]]:
    from fmbench.config import InferenceConfig
    from fmbench.endpoints.openai import OpenAIClient
    from fmbench.protocol import Prompt

    client = OpenAIClient(
        url.rsplit("/chat/completions", 1)[0], "m", inference=InferenceConfig(max_tokens=CHUNKS)
    )
    await client.open(conc)
    prompt = Prompt("p", "hello " * 50, 50)

    async def one() -> int:
        c = await client.complete(prompt)
        return len(c.chunk_times)

    return one, client.close


async def _measure(make: Any, url: str, n: int, conc: int) -> dict[str, float]:
    one, close = await make(url, 1)
    for _ in range(50):
        await one()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await one()
        lat.append(time.perf_counter() - t0)
    await close()

    one, close = await make(url, conc)
    counter = iter(range(n * 4))

    async def worker() -> None:
        for _ in counter:
            await one()

    await asyncio.gather(*(worker() for _ in range(conc)))  # warm the pool
    counter = iter(range(n * 4))
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await close()
    lat.sort()
    return {
        "p50": lat[len(lat) // 2] * 1e6,
        "p99": lat[int(len(lat) * 0.99)] * 1e6,
        "cpu": cpu / (n * 4) * 1e6,
        "rps": n * 4 / wall,
    }


async def _measure_long(url: str, chunks: int, prompt_words: int, n: int) -> dict[str, float]:
    """Sequential requests through OpenAIClient with long answers or long prompts."""
    from fmbench.config import InferenceConfig
    from fmbench.endpoints.openai import OpenAIClient
    from fmbench.protocol import Prompt

    client = OpenAIClient(
        url.rsplit("/chat/completions", 1)[0], "m", inference=InferenceConfig(max_tokens=chunks)
    )
    await client.open(1)
    prompt = Prompt("p", "word " * prompt_words, prompt_words)
    for _ in range(5):
        await client.complete(prompt)
    lat = []
    c0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        out = await client.complete(prompt)
        lat.append(time.perf_counter() - t0)
        assert len(out.chunk_times) == chunks
    cpu = time.process_time() - c0
    await client.close()
    lat.sort()
    return {"p50": lat[len(lat) // 2] * 1e6, "cpu": cpu / n * 1e6, "per_chunk": cpu / n / chunks * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per client")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    q: Any = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_serve, args=(q,), daemon=True)
    proc.start()
    port = q.get(timeout=30)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    rows = []
    for name, make in (
        ("aiohttp", _aiohttp_client),
        ("httpx", _httpx_client),
        ("fmbench OpenAIClient", _fmbench_client),
    ):
        try:
            r = asyncio.run(_measure(make, url, args.requests, args.concurrency))
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        rows.append((name, r))
    long_rows = []
    for chunks, words in ((16, 50), (1000, 50), (4000, 50), (16, 24_000)):
        r = asyncio.run(
            _measure_long(url, chunks, words, max(20, args.requests // max(1, chunks // 16) // 4))
        )
        long_rows.append((chunks, words, r))
    proc.terminate()
    print(
        f"{CHUNKS}-chunk SSE answers, zero-latency server in another process, concurrency {args.concurrency}"
    )
    print(f"{'client':<22}{'p50 us':>9}{'p99 us':>9}{'cpu us/req':>12}{'req/s':>9}")
    for name, r in rows:
        print(f"{name:<22}{r['p50']:>9.0f}{r['p99']:>9.0f}{r['cpu']:>12.0f}{r['rps']:>9.0f}")
    print("\nOpenAIClient, sequential: cost per chunk must stay flat with answer and prompt length")
    print(f"{'chunks':>7}{'prompt words':>14}{'p50 us':>10}{'cpu us/req':>12}{'cpu us/chunk':>14}")
    for chunks, words, r in long_rows:
        print(f"{chunks:>7}{words:>14}{r['p50']:>10.0f}{r['cpu']:>12.0f}{r['per_chunk']:>14.2f}")


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
