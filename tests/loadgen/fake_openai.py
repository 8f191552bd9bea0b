"""A small OpenAI-compatible server for tests, with scripted failures.

The request's ``model`` field picks the behaviour: ``ok`` (default), ``500``, ``429``, ``hang``,
``reset`` (drop the connection mid-stream), ``malformed`` (bad SSE line), ``nonjson`` (SSE data
that is not JSON), ``nonjson_body`` (non-streamed text body), ``nodone`` (stream ends without
[DONE]), ``empty`` (no output text), ``nousage``, ``echo_key`` (401 echoing the Authorization
header). Options after ``:`` as ``key=value``: ``ttft``, ``tpot`` (seconds), ``n`` (chunks).
Runs on its own event loop in a background thread; it records what it saw.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from aiohttp import web


class FakeOpenAI:
    """The server; ``url`` is the base URL including /v1 once started."""

    def __init__(self) -> None:
        self.url = ""
        self.active = 0
        self.max_active = 0
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time, in flight including this one)
        self.auth: list[str | None] = []
        self.bodies: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> FakeOpenAI:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.arrivals.append((time.monotonic(), self.active))
        try:
            return await self._answer(request)
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.auth.append(request.headers.get("Authorization"))
        name, *opts = str(body.get("model", "ok")).split(":")
        o = dict(x.split("=", 1) for x in opts)
        ttft, tpot, n = float(o.get("ttft", 0)), float(o.get("tpot", 0)), int(o.get("n", 4))
        chat = request.path.endswith("/chat/completions")
        if name == "500":
            return web.json_response({"error": {"message": "model exploded", "type": "server_error"}}, status=500)
        if name == "429":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "7"})
        if name == "echo_key":
            return web.Response(status=401, text=f"bad key {request.headers.get('Authorization')}")
        if name == "hang":
            await asyncio.sleep(5)
        if name == "nonjson_body" or (not body.get("stream") and name == "nonjson"):
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if not body.get("stream"):
            await asyncio.sleep(ttft + tpot * (n - 1))
            text = "".join(f" t{i}" for i in range(n))
            choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            out: dict[str, Any] = {"choices": [choice]}
            if name != "nousage":
                out["usage"] = {"prompt_tokens": 3, "completion_tokens": n}
            return web.json_response(out)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            await resp.write(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")

        if chat:
            await send({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})  # role-only chunk
        await asyncio.sleep(ttft)
        for i in range(n):
            if i:
                await asyncio.sleep(tpot)
            if name == "reset" and i == 2:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if name == "malformed" and i == 1:
                await resp.write(b"this is not sse\n\n")
                continue
            if name == "nonjson" and i == 1:
                await send(b"{not json")
                continue
            piece = "" if name == "empty" else f" t{i}"
            delta = {"choices": [{"index": 0, "delta": {"content": piece}}]} if chat else {
                "choices": [{"index": 0, "text": piece}]}
            await send(delta)
        if name != "nousage":
            await send({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}})
        if name != "nodone":
            await send(b"[DONE]")
        await resp.write_eof()
        return resp
