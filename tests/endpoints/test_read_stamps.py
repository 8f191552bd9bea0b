"""The client stamps an answer's bytes when they reached its socket (the kernel's receive stamp,
`fmbench.rxstamp`), not when its event loop got to them: a client held up while tokens arrive
still measures the endpoint, not itself, over plain HTTP and over TLS. (A read's stamp is when its
last bytes arrived: bytes that waited unread together share the later stamp, never an earlier one.)

The server is a plain socket in a thread (the client's loop is held on purpose); every check is
causal, against moments the server recorded just before each send, never a speed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fmbench.config import InferenceConfig
from fmbench.endpoints.openai import OpenAIClient
from fmbench.protocol import Completion, Prompt
from tests.support.tls import self_signed, server_context

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel receive stamps are Linux's")

HOLD_S = 0.3  # how long the client's loop is held once the server has the request
GAP_S = 0.05  # the server answers this long after reading the request, inside the hold


def _event(obj: dict[str, Any]) -> bytes:
    data = b"data: " + json.dumps(obj).encode() + b"\n\n"
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _server(stream: bool, got: threading.Event, freed: threading.Event, sent: dict[str, float],
            tls: ssl.SSLContext | None = None) -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        if tls is not None:
            conn = tls.wrap_socket(conn, server_side=True)
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf or not buf.rstrip().endswith(b"}"):
                buf += conn.recv(65536)
            got.set()
            time.sleep(GAP_S)
            if stream:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                sent["first"] = time.monotonic()
                conn.sendall(_event({"choices": [{"index": 0, "text": "hello"}]}))
                freed.wait(10)  # the rest once the client's loop was released, and a little after
                time.sleep(GAP_S)
                sent["last"] = time.monotonic()
                conn.sendall(_event({"choices": [{"index": 0, "text": " there"}]})
                             + _event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
                             + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
            else:
                body = json.dumps({"choices": [{"index": 0, "text": "hello there"}],
                                   "usage": {"prompt_tokens": 1, "completion_tokens": 2}}).encode()
                sent["first"] = sent["last"] = time.monotonic()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
            conn.recv(65536)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("long_prompt", [False, True], ids=["short", "long"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_is_stamped_when_it_arrived_even_while_the_clients_loop_was_held(
        stream: bool, tls: bool, long_prompt: bool, tls_files: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    got = threading.Event()
    sent: dict[str, float] = {}
    freed = threading.Event()
    listener, thread = _server(stream, got, freed, sent, server_context(*tls_files) if tls else None)
    port = listener.getsockname()[1]
    if long_prompt:  # a request aiohttp writes with ``writelines``, as it does from Python 3.12.9 on
        monkeypatch.setattr(aiohttp.http_writer, "SKIP_WRITELINES", False)
    prompt = Prompt("p", "hi " * (2000 if long_prompt else 1), 1)

    async def main() -> tuple[Completion, float]:
        # over TLS the client checks the server's certificate against this test's (a private CA)
        client = OpenAIClient(f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1", "m", api="completions",
                              inference=InferenceConfig(stream=stream, max_tokens=2),
                              ca_bundle=str(tls_files[0]) if tls else None)
        await client.open(1)
        try:
            task = asyncio.create_task(client.complete(prompt))
            while not got.is_set():
                await asyncio.sleep(0.001)
            time.sleep(HOLD_S)  # noqa: ASYNC251 - the loop is held on purpose: the answer arrives meanwhile
            released = time.monotonic()
            freed.set()
            return await task, released
        finally:
            await client.close()

    comp, released = asyncio.run(main())
    thread.join(10)
    listener.close()
    assert comp.text == "hello there" and comp.output_tokens == 2
    # the first token (streamed) or the whole answer (not) arrived while the loop was held, and is
    # stamped when it arrived, not when the loop got to it
    first = comp.t_first_token
    assert first is not None and sent["first"] <= first < released
    if stream:
        assert comp.chunk_times[0] == first and released < sent["last"] <= comp.chunk_times[1] <= comp.t_end
    else:
        assert comp.t_end == first
