"""The simulator's arrival stamp is the time a request's first bytes arrived (`_arrival`): the kernel's
receive stamp where there is one (Linux), else the time they were read.

Raw HTTP/1.1 over asyncio streams, so the test decides how the bytes are split; every check is
causal (a stamp against a moment the test or the server itself recorded), never a speed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from typing import Any

import pytest
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's receive stamps are read on Linux")
def test_arrival_is_when_the_bytes_reached_the_server_even_while_its_loop_was_held() -> None:
    # A request sent while the server's event loop is held (by a decode step, another handler or
    # the client's own use of the CPU) arrived when its bytes reached the socket, not when the loop
    # got round to reading them: that wait is the server's, not the client's send. A new connection
    # (its first request is read before its socket is wrapped) and a reused one alike.
    sent: dict[str, float] = {}
    answers: dict[str, dict[str, Any]] = {}
    sending_done = threading.Event()

    def client(port: int, kept: socket.socket) -> None:
        head, body = _request()
        with socket.create_connection(("127.0.0.1", port)) as fresh:
            sent["kept"] = time.monotonic()
            kept.sendall(head + body)
            sent["fresh"] = time.monotonic()
            fresh.sendall(head + body)
            sending_done.set()
            answers["fresh"] = _read_answer(fresh)
        answers["kept"] = _read_answer(kept)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        runner, port = await _serve(build_app(CFG))
        try:
            kept = socket.create_connection(("127.0.0.1", port), timeout=20)
            head, body = _request()
            kept.sendall(head + body)
            await loop.run_in_executor(None, _read_answer, kept)  # now between requests
            thread = threading.Thread(target=client, args=(port, kept))
            thread.start()
            # Hold the loop until both requests are in their sockets, and a while after.
            sending_done.wait(20)
            time.sleep(0.1)  # noqa: ASYNC251 - holding the loop is the point
            released = time.monotonic()
            await loop.run_in_executor(None, thread.join, 20)
            kept.close()
            return released
        finally:
            await runner.cleanup()

    released = asyncio.run(main())
    for name in ("kept", "fresh"):
        assert sent[name] <= answers[name]["arrival"] < released, name


def _read_answer(sock: socket.socket) -> dict[str, Any]:
    sock.settimeout(20)
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    headers = {k.lower(): v.strip() for k, _, v in (line.decode().partition(":") for line in head.split(b"\r\n")[1:])}
    return {"arrival": float(headers["x-fmbench-arrival"]), **json.loads(body[:length])["fmbench"]}
