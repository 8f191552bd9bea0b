"""A small OpenAI-compatible server for tests, with scripted failures.

The request's ``model`` field picks the behaviour: ``ok`` (default), ``500``, ``429``, ``hang``,
``reset`` (drop the connection mid-stream), ``malformed`` (bad SSE line), ``nonjson`` (SSE data
that is not JSON), ``nonjson_body`` (non-streamed text body), ``nodone`` (stream ends without
[DONE]), ``empty`` (no output text, no usage), ``nousage``, ``echo_key`` (401 echoing the Authorization
header), ``echo_headers`` (403 echoing every header's value), ``whole`` (a whole JSON answer even when
asked to stream, as a server or proxy that ignores ``stream`` sends). Options after ``:`` as ``key=value``: ``ttft``, ``tpot``, ``jit`` (extra random TTFT up to this),
in seconds, and ``n`` (chunks). ``meet=K`` holds each such request until requests with a ``meet``
option have arrived under K different model names (or ``meet_s``, default 60 s, has passed): two
runs that both reach it are in flight at one instant, two that run one after the other are not.
Runs in a subprocess; `FakeOpenAI.stats` reads back what it saw.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import urllib.request
from typing import Any

from aiohttp import web


class FakeOpenAI:
    """Handle on the server, which runs in its own process (no shared GIL with the client).

    ``url`` is the base URL including /v1 once started; what the server saw is read back over HTTP.
    """

    def __init__(self) -> None:
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> FakeOpenAI:
        self._proc = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None

    def stats(self) -> dict[str, Any]:
        """What the server saw: max_active, arrivals, auth headers, all headers, bodies and their content types."""
        with urllib.request.urlopen(self.url + "/_stats", timeout=10) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        req = urllib.request.Request(self.url + "/_reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).close()


class _Server:
    def __init__(self) -> None:
        self._rng = random.Random(0)
        self.reset()

    def reset(self) -> None:
        self.active = 0
        self.max_active = 0
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time, in flight including this one)
        self.auth: list[str | None] = []
        self.headers: list[dict[str, str]] = []
        self.bodies: list[dict[str, Any]] = []
        self.content_types: list[str | None] = []
        self.met: set[str] = set()
        self.meeting = asyncio.Event()

    async def serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_get("/v1/_stats", self._stats)
        app.router.add_post("/v1/_reset", self._reset)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print("PORT", runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "max_active": self.max_active,
                "arrivals": self.arrivals,
                "auth": self.auth,
                "headers": self.headers,
                "bodies": self.bodies,
                "content_types": self.content_types,
                "met": sorted(self.met),
            }
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(text="ok")

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
        self.content_types.append(request.headers.get("Content-Type"))
        self.auth.append(request.headers.get("Authorization"))
        self.headers.append(dict(request.headers))
        name, *opts = str(body.get("model", "ok")).split(":")
        o = dict(x.split("=", 1) for x in opts)
        ttft, tpot, n = float(o.get("ttft", 0)), float(o.get("tpot", 0)), int(o.get("n", 4))
        ttft += self._rng.uniform(0, float(o.get("jit", 0)))
        if "meet" in o:
            self.met.add(str(body.get("model")))
            if len(self.met) >= int(o["meet"]):
                self.meeting.set()
            try:
                await asyncio.wait_for(self.meeting.wait(), float(o.get("meet_s", 60)))
            except TimeoutError:
                self.meeting.set()  # nobody came: let the rest through, the test sees no overlap
        chat = request.path.endswith("/chat/completions")
        if name == "500":
            return web.json_response(
                {"error": {"message": "model exploded", "type": "server_error"}}, status=500
            )
        if name == "429":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "7"})
        if name == "echo_key":
            return web.Response(status=401, text=f"bad key {request.headers.get('Authorization')}")
        if name == "echo_headers":  # every header value, as a careless gateway's error page might
            return web.Response(status=403, text="refused: " + " ".join(request.headers.values()))
        if name == "hang":
            await asyncio.sleep(5)
        if name == "nonjson_body" or (not body.get("stream") and name == "nonjson"):
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if not body.get("stream") or name == "whole":
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
            await resp.write(
                b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            )

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
            delta = (
                {"choices": [{"index": 0, "delta": {"content": piece}}]}
                if chat
                else {"choices": [{"index": 0, "text": piece}]}
            )
            await send(delta)
        if name not in ("nousage", "empty"):  # no text and no count: nothing shows the work was done
            await send({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}})
        if name != "nodone":
            await send(b"[DONE]")
        await resp.write_eof()
        return resp


if __name__ == "__main__":
    asyncio.run(_Server().serve())
