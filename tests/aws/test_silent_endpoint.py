"""A timeout with no byte of an answer (an endpoint that takes the request and says nothing: hung,
SIGSTOPped) against one whose answer began and stalled: the clients tell them apart in the error,
which is how a shard knows to stop sending (`fmbench.loadgen.engine._Shard.halted`). Over real
sockets: a server that accepts and reads, and answers nothing or only the headers."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fmbench.config import InferenceConfig
from fmbench.endpoints.openai import OpenAIClient
from fmbench.endpoints.sagemaker import SageMakerClient
from fmbench.errors import EndpointTimeout, silent_timeout
from fmbench.protocol import Prompt

PROMPT = Prompt("p0", "hello", 2)
HEADERS = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")


@pytest.fixture(params=["silent", "headers-then-stall"])
def quiet_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A server that accepts, reads each request, and then writes nothing (or only its headers)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        sock.settimeout(0.1)
        while not done.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            held.append(conn)
            conn.settimeout(5)
            try:
                conn.recv(65536)
                if request.param != "silent":
                    conn.sendall(HEADERS)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", request.param
    done.set()
    thread.join(5)
    for conn in held:
        conn.close()
    sock.close()


def _complete(client: Any) -> BaseException:
    async def go() -> BaseException:
        await client.open(1)
        try:
            await client.complete(PROMPT)
        except Exception as exc:  # noqa: BLE001 - the error is the result
            return exc
        finally:
            await client.close()
        raise AssertionError("an endpoint that answers nothing gave an answer")

    return asyncio.run(go())


@pytest.mark.parametrize("stream", [True, False])
def test_openai_client_says_whether_any_byte_of_the_answer_came(quiet_server: tuple[str, str], stream: bool) -> None:
    url, mode = quiet_server
    exc = _complete(OpenAIClient(url, "m", inference=InferenceConfig(timeout_s=0.5, stream=stream, max_tokens=4)))
    assert isinstance(exc, EndpointTimeout), exc
    assert silent_timeout(exc.kind, str(exc)) == (mode == "silent"), str(exc)


@pytest.mark.parametrize("stream", [True, False])
def test_sagemaker_client_says_whether_any_byte_of_the_answer_came(quiet_server: tuple[str, str],
                                                                   stream: bool) -> None:
    url, mode = quiet_server
    client = SageMakerClient("fmbench-ep", InferenceConfig(timeout_s=0.5, stream=stream, max_tokens=4), payload="tgi",
                             runtime_endpoint_url=url)
    exc = _complete(client)
    assert isinstance(exc, EndpointTimeout), exc
    if mode == "silent":
        assert silent_timeout(exc.kind, str(exc)), str(exc)
    else:  # (botocore reads the status and headers first: a stall after them is an answer that began)
        assert not silent_timeout(exc.kind, str(exc)), str(exc)
