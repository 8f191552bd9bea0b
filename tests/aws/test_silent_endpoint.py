"""A timeout with no byte of an answer (an endpoint that takes the request and says nothing: hung,
SIGSTOPped) against one whose answer began and stalled: the clients tell them apart in the error,
which is how a shard knows to stop sending (`fmbench.loadgen.engine._Shard.halted`). Over real
sockets: a server that accepts and reads, and answers nothing or only the headers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fmbench.config import InferenceConfig
from fmbench.endpoints.bedrock import BedrockClient
from fmbench.endpoints.openai import OpenAIClient
from fmbench.endpoints.sagemaker import SageMakerClient
from fmbench.errors import EndpointTimeout, silent_timeout
from fmbench.protocol import Prompt

PROMPT = Prompt("p0", "hello", 2)
HEADERS = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")


@contextlib.contextmanager
def _quiet(mode: str) -> Iterator[str]:
    """A server that accepts, reads each request, and then writes nothing (``silent``) or only its
    headers (``headers-then-stall``); yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
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
                if mode != "silent":
                    conn.sendall(HEADERS)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        for conn in held:
            conn.close()
        sock.close()


@pytest.fixture(params=["silent", "headers-then-stall"])
def quiet_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    with _quiet(request.param) as url:
        yield url, request.param


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


@pytest.mark.parametrize("stream", [True, False])
def test_bedrock_client_says_whether_any_byte_of_the_answer_came(quiet_server: tuple[str, str], stream: bool) -> None:
    url, mode = quiet_server
    client = BedrockClient("meta.llama3-8b-instruct-v1:0", InferenceConfig(timeout_s=0.5, stream=stream, max_tokens=4),
                           runtime_endpoint_url=url)
    exc = _complete(client)
    assert isinstance(exc, EndpointTimeout), exc
    assert silent_timeout(exc.kind, str(exc)) == (mode == "silent"), str(exc)


@pytest.mark.parametrize("load", ["closed", "processes", "open"])
def test_a_shard_stops_sending_once_its_endpoint_answers_nothing(tmp_path: Path, load: str) -> None:
    """40 requests at 2 in flight to an endpoint that answers nothing would take 20 timeouts; the shard
    stops after a run of them, in one process, in each of two, and in an open loop."""
    import polars as pl

    from fmbench.loadgen import ShardSpec, run_shard
    from fmbench.loadgen.engine import HUNG_MIN_REQUESTS

    shape: dict[str, Any] = {"concurrency": 2} if load != "open" else {"request_rate": 20.0, "max_send_lag_s": 1.0}
    spec = ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="1-9", bucket_min=1, bucket_max=9,
                     requests=40, warmup=0, processes=2 if load == "processes" else 1, **shape)
    prompts = [Prompt(f"p{i}", f"hello {i}", 2) for i in range(8)]
    with _quiet("silent") as url:
        client = OpenAIClient(url, "m", inference=InferenceConfig(timeout_s=0.3, stream=True, max_tokens=4))
        run_shard(client, prompts, spec, tmp_path / "r.parquet", len)
    records = pl.read_parquet(tmp_path / "r.parquet")
    assert HUNG_MIN_REQUESTS <= records.height < 40  # it stopped sending
    assert all(silent_timeout(k, e) for k, e in zip(records["error_kind"], records["error"], strict=True))
