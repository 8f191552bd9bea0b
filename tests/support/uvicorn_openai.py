"""An OpenAI-compatible chat server on uvicorn and Starlette: the HTTP stack of vLLM's OpenAI server (and llama-cpp-python's).

Run as a script (``python tests/support/uvicorn_openai.py PORT KEEP_ALIVE_S``) it serves
``/v1/chat/completions`` with vLLM's answer shapes: streamed, a role-only first chunk, one chunk per
token, a finish chunk, a usage chunk and ``[DONE]``; or one JSON answer with its usage. The model is
a fixed wait (20 ms to the first token, 2 ms per token, 8 tokens): the tests here are about HTTP, so
what matters is uvicorn itself, which closes a connection idle for its keep-alive timeout without
announcing one (no ``Keep-Alive`` header), as a vLLM server does after 5 s.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, Self

TOKENS = 8
FIRST_TOKEN_S = 0.02
PER_TOKEN_S = 0.002


def _app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def chat(request: Request) -> Response:
        body = await request.json()
        n = min(int(body.get("max_tokens") or TOKENS), TOKENS)
        usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}
        base = {"id": "chatcmpl-1", "created": int(time.time()), "model": body.get("model", "m")}
        if not body.get("stream"):
            await asyncio.sleep(FIRST_TOKEN_S + PER_TOKEN_S * n)
            return JSONResponse({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "tok " * n}, "finish_reason": "length"}]})

        def event(**fields: Any) -> str:
            return "data: " + json.dumps({**base, "object": "chat.completion.chunk", **fields}) + "\n\n"

        async def stream() -> AsyncIterator[str]:
            yield event(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            await asyncio.sleep(FIRST_TOKEN_S)
            for _ in range(n):
                yield event(choices=[{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}])
                await asyncio.sleep(PER_TOKEN_S)
            yield event(choices=[{"index": 0, "delta": {}, "finish_reason": "length"}])
            yield event(choices=[], usage=usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


class UvicornServer:
    """This module's server in a child process on 127.0.0.1; killed on exit."""

    def __init__(self, keep_alive_s: float) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        # run as a file: the child has no ``tests`` package on its path
        self._proc = subprocess.Popen([sys.executable, __file__, str(self.port), str(keep_alive_s)])

    def __enter__(self) -> Self:
        deadline = time.monotonic() + 120  # a loaded machine's imports
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"uvicorn did not listen on port {self.port}") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self._proc.kill()
        self._proc.wait(10)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(_app(), host="127.0.0.1", port=int(sys.argv[1]), timeout_keep_alive=float(sys.argv[2]),  # type: ignore[arg-type]
                log_level="warning")
