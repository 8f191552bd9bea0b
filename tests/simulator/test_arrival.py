"""The simulator's arrival stamp is the time a request's first bytes were read (`_arrival`).

Raw HTTP/1.1 over asyncio streams, so the test decides how the bytes are split; every check is
causal (a stamp against a moment the test or the server itself recorded), never a speed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from fmbench.config import SimulatedEndpoint
from fmbench.simulator._arrival import StampingSite
from fmbench.simulator.app import build_app

CFG = SimulatedEndpoint(provider="simulated", model="m", ttft_ms=5, tpot_ms=1, output_tokens=3)


def _request(prompt: str = "hello") -> tuple[bytes, bytes]:
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 3}).encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    return head, body


async def _answer(reader: asyncio.StreamReader) -> dict[str, Any]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = json.loads(await reader.readexactly(int(headers["content-length"])))
    return {"arrival": float(headers["x-fmbench-arrival"]), **body["fmbench"]}


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = StampingSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site.port


def test_arrival_is_the_read_not_the_handler_start() -> None:
    handler_at: list[float] = []

    @web.middleware
    async def slow(request: web.Request, handler: Any) -> web.StreamResponse:
        await asyncio.sleep(0.2)  # the handler starts at least 0.2 s after the request was read
        handler_at.append(time.monotonic())
        return await handler(request)

    async def main() -> dict[str, Any]:
        app = build_app(CFG)
        app.middlewares.append(slow)  # runs after read_stamps, before the route
        runner, port = await _serve(app)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head, body = _request()
            writer.write(head + body)
            answer = await _answer(reader)
            writer.close()
            return answer
        finally:
            await runner.cleanup()

    answer = asyncio.run(main())
    assert answer["arrival"] <= handler_at[0] - 0.2
    assert answer["t_first_due"] - answer["arrival"] >= 0.005 - 1e-6  # the model counts from the read


def test_a_late_part_of_one_request_is_not_the_next_requests_arrival() -> None:
    async def main() -> tuple[float, dict[str, Any], float, dict[str, Any], dict[str, Any]]:
        runner, port = await _serve(build_app(CFG))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head, body = _request()
            writer.write(head)
            await asyncio.sleep(0.2)  # the handler starts and waits for the body
            writer.write(body)  # read while the request is handled: not a new arrival
            first = await _answer(reader)
            await asyncio.sleep(0.2)
            sent = time.monotonic()
            writer.write(head + body)
            second = await _answer(reader)
            # pipelined: the second request's bytes are read while the first is handled
            writer.write(head + body + head + body)
            third, fourth = await _answer(reader), await _answer(reader)
            writer.close()
            return sent, first, second["arrival"], third, fourth
        finally:
            await runner.cleanup()

    sent, first, second_arrival, third, fourth = asyncio.run(main())
    assert first["arrival"] < first["t_sent"]
    assert second_arrival >= sent  # never the stamp of the first request's late body
    assert fourth["arrival"] >= third["t_sent"]  # no stamp: stamped by its handler, after the third
