"""A zero-latency OpenAI-compatible server, for measuring the client rather than an endpoint.

A raw asyncio protocol in its own process (this file run as a script) answers every request at once with a canned
answer, so it is never the bottleneck (the simulated endpoint paces and stamps every chunk, which
costs it CPU). The answer's shape is chosen by the URL prefix, so a plain `OpenAIClient` can be
pointed at it: ``{url}/json/v1`` answers one JSON body, ``{url}/sse/N/v1`` streams N chunks (plus
a usage event and ``[DONE]``), whatever the request asks for.

Used by `fmbench.calibration` and the ``benchmarks/`` scripts::

    with ZeroServer() as srv:
        client = OpenAIClient(srv.base_url(chunks=64), "m", inference=InferenceConfig(stream=True))
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any, ClassVar, Self

# Stdlib only at import: the server process runs this file as a script, so it starts in ~0.1 s
# instead of importing fmbench (pyarrow, pydantic).

__all__ = ["ZeroServer", "canned_response"]


def canned_response(chunks: int | None, chat: bool = True) -> bytes:
    """The full HTTP/1.1 response for ``chunks`` streamed chunks (None: one JSON body)."""
    if chunks is None:
        msg: dict[str, Any] = {"role": "assistant", "content": "hello world"}
        choice = {"index": 0, "message": msg} if chat else {"index": 0, "text": "hello world"}
        body = json.dumps({
            "id": "z", "object": "chat.completion", "model": "m", "choices": [choice],
            "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
        }).encode()
        ctype = b"application/json"
    else:
        events = []
        for i in range(chunks):
            choice = {"index": 0, "delta": {"content": f" w{i}"}} if chat else {"index": 0, "text": f" w{i}"}
            events.append(b"data: " + json.dumps({"id": "z", "model": "m", "choices": [choice]}).encode())
        usage = {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks}
        events.append(b"data: " + json.dumps({"id": "z", "choices": [], "usage": usage}).encode())
        events.append(b"data: [DONE]")
        body = b"\n\n".join(events) + b"\n\n"
        ctype = b"text/event-stream"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (ctype, len(body))
    return head + body


class _Protocol(asyncio.Protocol):
    """Answers each keep-alive request with the canned response its path names."""

    cache: ClassVar[dict[bytes, bytes]] = {}  # canned answers by path, shared by connections

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (head_end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buf[:head_end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            total = head_end + 4 + length
            if len(self.buf) < total:
                return
            del self.buf[:total]
            path = head.split(b" ", 2)[1]
            answer = self.cache.get(path)
            if answer is None:
                answer = self.cache[path] = _answer_for(path)
            self.transport.write(answer)


def _answer_for(path: bytes) -> bytes:
    parts = path.decode().strip("/").split("/")
    chat = path.endswith(b"/chat/completions")
    if parts and parts[0] == "sse" and len(parts) > 1 and parts[1].isdigit():
        return canned_response(max(1, int(parts[1])), chat)
    if path.endswith(b"/models"):
        body = b'{"object":"list","data":[{"id":"m","object":"model"}]}'
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body), body)
    return canned_response(None, chat)


def _serve() -> None:
    """Serve until stdin closes (the parent exiting or calling `ZeroServer.stop`)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Protocol, "127.0.0.1", 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


class ZeroServer:
    """The zero-latency server in its own process; a context manager.

    Raises:
        DeploymentError: the server process did not report its port.
    """

    def __init__(self) -> None:
        self.url: str | None = None
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> Self:
        """Start the process and wait for its port."""
        from fmbench.errors import DeploymentError

        self._proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        try:
            line = self._proc.stdout.readline().strip()  # the port, or EOF if it died
            port = int(line)
        except (OSError, ValueError) as exc:
            self.stop()
            raise DeploymentError(f"zero-latency server did not start: {exc}") from exc
        self.url = f"http://127.0.0.1:{port}"
        return self

    def base_url(self, chunks: int | None = None) -> str:
        """The ``/v1`` base URL answering ``chunks`` streamed chunks (None: JSON bodies)."""
        if self.url is None:
            from fmbench.errors import DeploymentError

            raise DeploymentError("zero-latency server is not running")
        return f"{self.url}/json/v1" if chunks is None else f"{self.url}/sse/{chunks}/v1"

    @property
    def pid(self) -> int | None:
        """The server process id."""
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Stop the process (closing its stdin, then terminating it if needed)."""
        proc, self._proc = self._proc, None
        self.url = None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    _serve()
