"""Fixtures of the AWS tests: dummy credentials, moto (control planes, S3, CloudWatch) and the
simulated endpoint's AWS routes (sagemaker-runtime, bedrock-runtime), all on 127.0.0.1.

Nothing here reaches AWS: every boto3 client gets an ``endpoint_url`` on 127.0.0.1, the
credentials are dummies, and instance-metadata lookups are disabled in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fmbench.config import SimulatedEndpoint
from fmbench.simulator.app import build_app
from fmbench.simulator.aws import AwsRoutes
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.process import SimulatedServerProcess
from tests.support.sagemaker import JS_MODEL, jumpstart_manifest, jumpstart_spec, moto_endpoint

#: The latency model the accuracy tests compare against.
SIM = SimulatedEndpoint(provider="simulated", ttft_ms=60.0, tpot_ms=10.0, output_tokens=16, max_batch=16)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and region; no profile, no endpoint overrides from the environment."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    for name in list(__import__("os").environ):
        if name.startswith("AWS_JUMPSTART_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Safety net: a client created without an endpoint_url goes to a closed local port, not AWS.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")


@pytest.fixture
def moto(moto_url: str) -> str:
    """The session's moto server, reset to empty; yields its URL."""
    req = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    return moto_url


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """The simulated endpoint in its own process (own GIL: timing tests), AWS routes included."""
    server = SimulatedServerProcess(SIM)
    url = server.start()
    yield url
    server.stop()


class SimThread:
    """The simulated app with chosen route options and faults, on a loop in a daemon thread."""

    def __init__(self, cfg: SimulatedEndpoint = SIM, faults: FaultConfig | None = None, **routes: Any) -> None:
        from fmbench.simulator.openai_routes import register as openai_register

        self.app = build_app(cfg, faults, families=[openai_register, AwsRoutes(**routes)])
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> str:
        self._thread.start()
        assert self._ready.wait(20), "simulated server thread did not start"
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def sim_thread() -> Iterator[Any]:
    """A factory: ``sim_thread(faults=..., split_payload_parts=...)`` starts a server, returns its URL."""
    started: list[SimThread] = []

    def start(cfg: SimulatedEndpoint = SIM, faults: FaultConfig | None = None, **routes: Any) -> str:
        server = SimThread(cfg, faults, **routes)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def _server_lateness_s(url: str, reset: bool = False) -> tuple[float, float]:
    """The simulated server's median and p90 chunk lateness (release minus due time), seconds."""
    import json
    import math

    if reset:
        urllib.request.urlopen(urllib.request.Request(f"{url}/fmbench/stats/reset", method="POST"), timeout=10).close()
        return 0.0, 0.0
    with urllib.request.urlopen(f"{url}/fmbench/stats", timeout=10) as resp:
        lateness = json.load(resp)["lateness"]
    p50, p90 = lateness["p50_ms"], lateness["p90_ms"]
    if math.isnan(p50):  # nothing was sent
        return 0.0, 0.0
    return max(0.0, p50 / 1000.0), max(0.0, p90 / 1000.0)


#: Server p90 lateness above which the machine is too starved to measure milliseconds.
STARVED_P90_S = 0.001
#: How far a client's median TTFT may sit above the model's (s), exclusive: a token's time. The
#: server never sends early, so the next chunk (or the end of the stream) reaches a client at
#: least this much after the model's TTFT: a stamp of the wrong event falls outside, while the
#: few ms a loaded machine adds to each wake-up on the way in and out do not. The client's
#: accuracy itself is `make bench`'s.
TTFT_BAND_S = SIM.tpot_ms / 1000
#: How far (relative) its median gap between chunks may sit from the model's time per token (one
#: token per chunk, not two).
TPOT_BAND = 0.25


def timing_within_tolerance(
    client: Any, prompt: Any, server_url: str, rounds: int = 6, per_round: int = 10
) -> tuple[float, float]:
    """Median TTFT and inter-chunk gap (s) at concurrency 1, minus the server's own lateness,
    from the best of up to ``rounds`` rounds.

    What a client adds to the model's timing on a loaded machine is speed, which `make bench`
    measures; these tests check behaviour: that the client times the right events (the first text,
    each chunk), so its medians land near the model's, never before it. When other processes load
    the small CI machine, the simulated server releases chunks late too, and its measured median
    lateness (from ``/fmbench/stats``, ~0.1 ms when idle) is not the client's, so it is subtracted.
    A stall only ever adds time, so the best round is kept; measuring stops at the first round
    within `TTFT_BAND_S` and `TPOT_BAND` of the model (after two warm-up requests). If no round meets it and in
    every round the server itself paced badly (p90 lateness over 1 ms: the CPUs are
    oversubscribed), the test is skipped with the numbers rather than failed.
    """
    import asyncio
    import statistics

    model_ttft, model_tpot = SIM.ttft_ms / 1000, SIM.tpot_ms / 1000

    async def go() -> tuple[float, float]:
        await client.open(1)
        try:
            for _ in range(2):
                await client.complete(prompt)
            best: tuple[float, tuple[float, float]] | None = None
            starved: list[float] = []
            for _ in range(rounds):
                _server_lateness_s(server_url, reset=True)
                done = [await client.complete(prompt) for _ in range(per_round)]
                late, late_p90 = _server_lateness_s(server_url)
                ttft = statistics.median(c.t_first_token - c.t_start for c in done) - late
                gaps = [b - a for c in done for a, b in zip(c.chunk_times, c.chunk_times[1:], strict=False)]
                tpot = statistics.median(gaps)
                err = max(abs(ttft - model_ttft) / TTFT_BAND_S, abs(tpot - model_tpot) / (TPOT_BAND * model_tpot))
                if err < 1.0:
                    return ttft, tpot
                if late_p90 > STARVED_P90_S:
                    starved.append(late_p90)
                elif best is None or err < best[0]:
                    best = (err, (ttft, tpot))
            if best is None:
                pytest.skip(f"machine too loaded to measure: server p90 lateness {max(starved) * 1000:.1f} ms "
                            f"in all {rounds} rounds")
            return best[1]
        finally:
            await client.close()

    return asyncio.run(go())


# ---------------------------------------------------------------- SageMaker endpoint states and JumpStart


@pytest.fixture
def endpoint_states(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make moto's new endpoints start 'Creating'; ``set(name, status, reason)`` moves them on.

    ThreadedMotoServer runs in this process, so its backend is reachable; this is how the tests
    play SageMaker's asynchronous endpoint creation.
    """
    from moto.sagemaker import models

    original = models.FakeEndpoint.__init__

    def creating(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.endpoint_status = "Creating"

    monkeypatch.setattr(models.FakeEndpoint, "__init__", creating)

    def set_status(name: str, status: str, reason: str | None = None, after_s: float = 0.0) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait for the deploy to create it
            endpoint = moto_endpoint(name)
            if endpoint is not None:
                time.sleep(after_s)  # ... and to see it Creating for a while
                endpoint.endpoint_status = status
                endpoint.failure_reason = reason
                return
            time.sleep(0.02)
        raise AssertionError(f"endpoint {name} not in moto")

    return set_status


@pytest.fixture
def jumpstart_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JumpStart manifest and specs served from local folders via the SDK's override variables."""
    manifest_dir, specs_dir = tmp_path / "manifest", tmp_path / "specs"
    (specs_dir / f"community_models/{JS_MODEL}").mkdir(parents=True)
    manifest_dir.mkdir()
    (manifest_dir / "models_manifest.json").write_text(json.dumps(jumpstart_manifest()))
    for version in ("2.1.0", "1.0.0"):
        spec = {**jumpstart_spec(), "version": version}
        (specs_dir / f"community_models/{JS_MODEL}/specs_v{version}.json").write_text(json.dumps(spec))
    monkeypatch.setenv("AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE", str(manifest_dir))
    monkeypatch.setenv("AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE", str(specs_dir))
    monkeypatch.setenv("AWS_JUMPSTART_GATED_CONTENT_BUCKET_OVERRIDE", "jumpstart-private-test")
