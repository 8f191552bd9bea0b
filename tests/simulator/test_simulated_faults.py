"""Injected faults of the simulated endpoint, each as a client meets it over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from fmbench.config import SimulatedEndpoint
from fmbench.simulator.faults import FaultConfig, FaultInjector, FaultKind
from fmbench.simulator.server import SimulatedServerThread

MODEL = "sim-faults"
TOKENS = 10
CFG = SimulatedEndpoint(
    provider="simulated", model=MODEL, ttft_ms=10, tpot_ms=1, output_tokens=TOKENS, seed=11
)
FAULTS = FaultConfig(
    http_500_rate=0.1,
    http_503_rate=0.1,
    throttle_rate=0.1,
    retry_after_s=2,
    hang_rate=0.1,
    reset_rate=0.1,
    malformed_rate=0.1,
    truncated_rate=0.1,
    slow_first_byte_rate=0.1,
    slow_first_byte_s=0.3,
)
HANG_TIMEOUT_S = 1.0  # well above the 0.3 s slow first byte, even on a busy host


@dataclass
class Seen:
    """What a client saw for one streamed request."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # transport-level failure: "timeout", "broken"
    content_chunks: int = 0
    bad_frames: int = 0
    done: bool = False
    t_headers: float = 0.0
    body: Any = None


def _stream(client: httpx.Client, i: int) -> Seen:
    seen = Seen()
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": f"request {i}"}]}
    t0 = time.monotonic()
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            seen.status, seen.headers, seen.t_headers = (
                resp.status_code,
                dict(resp.headers),
                time.monotonic() - t0,
            )
            if resp.status_code != 200:
                seen.body = json.loads(resp.read())
                return seen
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    seen.done = True
                    continue
                try:
                    item = json.loads(data)
                except json.JSONDecodeError:
                    seen.bad_frames += 1
                    continue
                if item["choices"] and item["choices"][0]["delta"].get("content"):
                    seen.content_chunks += 1
    except httpx.TimeoutException:
        seen.error = "timeout"
    except (httpx.RemoteProtocolError, httpx.ReadError):
        seen.error = "broken"
    return seen


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with SimulatedServerThread(CFG, FAULTS) as srv:
        assert srv.url is not None
        yield srv.url


def test_every_fault_kind_is_observable_and_lands_where_the_seed_says(url: str) -> None:
    predictor = FaultInjector(FAULTS, default_seed=CFG.seed)
    expected = []
    while set(FaultKind) - set(expected) or len(expected) < 12:  # until every kind came up
        expected.append(predictor.draw().kind)
    timeout = httpx.Timeout(5.0, read=HANG_TIMEOUT_S)
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for i, kind in enumerate(expected):
            seen = _stream(client, i)
            where = f"request {i} ({kind})"
            if kind is FaultKind.NONE:
                assert (
                    seen.status == 200 and seen.done and seen.content_chunks == TOKENS and not seen.bad_frames
                ), where
            elif kind in (FaultKind.HTTP_500, FaultKind.HTTP_503):
                assert seen.status == (500 if kind is FaultKind.HTTP_500 else 503), where
                assert seen.body["error"]["message"], where
            elif kind is FaultKind.THROTTLE:
                assert seen.status == 429 and seen.headers["retry-after"] == "2", where
                assert seen.body["error"]["code"] == "rate_limit_exceeded", where
            elif kind is FaultKind.HANG:
                assert seen.error == "timeout" and seen.status is None, where
            elif kind is FaultKind.RESET:
                assert seen.error == "broken" and 1 <= seen.content_chunks < TOKENS, where
            elif kind is FaultKind.MALFORMED:
                assert seen.bad_frames == 1 and seen.done and seen.content_chunks == TOKENS - 1, where
            elif kind is FaultKind.TRUNCATED:
                assert seen.status == 200 and seen.error is None and not seen.done, where
                assert 1 <= seen.content_chunks < TOKENS, where
            elif kind is FaultKind.SLOW_FIRST_BYTE:
                assert seen.status == 200 and seen.done and seen.content_chunks == TOKENS, where
                assert seen.t_headers >= 0.3, where
        stats = client.get("/fmbench/stats").json()
    assert sum(stats["faults"].values()) == len(expected)
    assert stats["in_flight"] == 0 and stats["queued"] == 0  # hung and reset requests freed their slots


@pytest.mark.parametrize("kind", ["reset", "malformed", "truncated"])
def test_non_streamed_faults_break_the_body(kind: str) -> None:
    faults = FaultConfig(**{f"{kind}_rate": 1.0})
    body = {"model": MODEL, "prompt": "hello"}
    with (
        SimulatedServerThread(CFG, faults) as srv,
        httpx.Client(base_url=srv.url or "", timeout=5.0) as client,
    ):
        if kind == "malformed":
            resp = client.post("/v1/completions", json=body)
            assert resp.status_code == 200
            with pytest.raises(json.JSONDecodeError):
                json.loads(resp.content)
        else:
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                client.post("/v1/completions", json=body)


def test_faults_do_not_touch_health_or_models() -> None:
    srv = SimulatedServerThread(CFG, FaultConfig(http_500_rate=1.0))
    with srv, httpx.Client(base_url=srv.url or "", timeout=5.0) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models").status_code == 200
        assert client.post("/v1/completions", json={"model": MODEL, "prompt": "x"}).status_code == 500


AWS_BODIES = {  # the simulated SageMaker and Bedrock runtime routes, with a body each accepts
    "/endpoints/sim/invocations": {"inputs": "hello", "parameters": {"max_new_tokens": 4}},
    "/model/sim-model/converse": {"messages": [{"role": "user", "content": [{"text": "hello"}]}]},
}


@pytest.mark.parametrize("path", list(AWS_BODIES))
def test_a_truncated_aws_answer_breaks_off_as_on_the_openai_routes(path: str) -> None:
    # The fault is counted as injected, so it must be seen: half the promised body, then the connection drops.
    with (
        SimulatedServerThread(CFG, FaultConfig(truncated_rate=1.0)) as srv,
        httpx.Client(base_url=srv.url or "", timeout=5.0) as client,
    ):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.post(path, json=AWS_BODIES[path])
        assert client.get("/fmbench/stats").json()["faults"] == {"truncated": 1}


@pytest.mark.parametrize("path", list(AWS_BODIES))
def test_a_slow_first_byte_on_an_aws_stream_holds_back_even_the_headers(path: str) -> None:
    # As on the OpenAI routes: a client's first-byte timeout must see silence, not an open stream.
    stream_path = f"{path}-response-stream" if path.startswith("/endpoints/") else f"{path}-stream"
    with (
        SimulatedServerThread(CFG, FaultConfig(slow_first_byte_rate=1.0, slow_first_byte_s=0.3)) as srv,
        httpx.Client(base_url=srv.url or "", timeout=5.0) as client,
    ):
        t0 = time.monotonic()
        with client.stream("POST", stream_path, json=AWS_BODIES[path]) as resp:
            t_headers = time.monotonic() - t0
            body = resp.read()
        assert resp.status_code == 200 and body, stream_path
        assert t_headers >= 0.3, (stream_path, t_headers)


def test_a_refused_request_is_not_counted_as_the_fault_it_drew() -> None:
    # Every request here draws a 500; the bad ones are refused as bad (400, 424) before it can strike.
    with (
        SimulatedServerThread(CFG, FaultConfig(http_500_rate=1.0)) as srv,
        httpx.Client(base_url=srv.url or "", timeout=5.0) as client,
    ):
        assert client.post("/v1/completions", json={"model": MODEL}).status_code == 400
        assert client.post("/endpoints/sim/invocations", json={"nothing": 1}).status_code == 424
        assert client.post("/model/m/converse", json={"messages": "no"}).status_code == 400
        assert client.post("/v1/completions", json={"model": MODEL, "prompt": "x"}).status_code == 500
        stats = client.get("/fmbench/stats").json()
    assert stats["faults"] == {"http_500": 1} and stats["refused"] == 3
