"""The pacing timers: a timerfd timer fires once per arming, even when its fd is never read."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from fmbench.simulator.pacing import TimerFdTimer


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux-only")
def test_timerfd_fires_once_per_arming_and_rearms_from_its_callback() -> None:
    async def run() -> tuple[list[float], int]:
        fired: list[float] = []
        loop = asyncio.get_running_loop()

        def callback() -> None:
            fired.append(time.monotonic())
            if len(fired) == 2:  # re-arm from inside the callback, as the core's decode step does
                timer.set(time.monotonic() + 0.005)

        timer = TimerFdTimer(loop, callback)
        deadline = time.monotonic() + 0.005
        timer.set(deadline)
        await asyncio.sleep(0.1)  # a timer left readable would call back on every loop turn
        after_first = len(fired)
        timer.set(time.monotonic() + 0.005)
        await asyncio.sleep(0.2)
        timer.close()
        assert fired[0] >= deadline  # never early
        return fired, after_first

    fired, after_first = asyncio.run(run())
    assert after_first == 1
    assert len(fired) == 3


@pytest.mark.parametrize("writer", ["batched", "per-stream"])
def test_a_finished_request_leaves_nothing_for_the_cyclic_gc(writer: str) -> None:
    """A request's objects go when it ends, by reference counting: garbage left to the cyclic
    GC (a few dozen objects per request at hundreds of requests a second) makes its collections
    long enough to hold up a decode step, i.e. to pace chunks late."""
    import gc

    import aiohttp

    from fmbench.config import SimulatedEndpoint
    from fmbench.simulator.app import SIM_CONTEXT
    from fmbench.simulator.core import Generation
    from fmbench.simulator.openai_routes import _StreamSink
    from fmbench.simulator.server import start_server

    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=5.0, tpot_ms=1.0, output_tokens=12, chunk_tokens=2)

    async def run() -> list[object]:
        runner, url = await start_server(cfg, port=0, writer=writer)  # type: ignore[arg-type]
        try:
            core = runner.app[SIM_CONTEXT].get_core()
            async with aiohttp.ClientSession() as session:
                bodies = [
                    ("/v1/completions", {"model": cfg.model, "prompt": "p", "stream": True}),
                    ("/v1/chat/completions", {"model": cfg.model, "stream": True,
                                              "messages": [{"role": "user", "content": "c"}],
                                              "stream_options": {"include_usage": True}}),
                    ("/v1/completions", {"model": cfg.model, "prompt": "p"}),
                ]
                gc.collect()
                gc.disable()
                for path, body in bodies * 3:
                    async with session.post(url + path, json=body) as resp:
                        assert resp.status == 200
                        assert (await resp.read()).strip()
                for _ in range(200):  # the handlers finish just after the last byte
                    if not core._gens:
                        break
                    await asyncio.sleep(0.01)
                return [o for o in gc.get_objects() if type(o) in (Generation, _StreamSink)]
        finally:
            gc.enable()
            await runner.cleanup()

    assert asyncio.run(run()) == []


@pytest.mark.parametrize("writer", ["batched", "per-stream"])
def test_the_server_lists_each_late_chunk_with_its_due_time(writer: str) -> None:
    """``/fmbench/stats?late=1`` names exactly the chunks released more than 1 ms after their due
    time (as the chunks' own stamps say), so a benchmark can tell when its lateness happened."""
    import json

    import aiohttp

    from fmbench.config import SimulatedEndpoint
    from fmbench.simulator.server import start_server

    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=5.0, tpot_ms=2.0, output_tokens=40)

    async def run() -> tuple[list[tuple[float, float]], list[list[float]], list[list[float]]]:
        runner, url = await start_server(cfg, port=0, writer=writer)  # type: ignore[arg-type]
        try:
            async with aiohttp.ClientSession() as session:
                stamps: list[tuple[float, float]] = []
                body = {"model": cfg.model, "prompt": "p", "stream": True}
                async with session.post(url + "/v1/completions", json=body) as resp:
                    async for line in resp.content:
                        if line.startswith(b"data: {"):
                            s = json.loads(line[6:])["fmbench"]
                            stamps.append((s["t_due"], s["t_sent"]))
                            if len(stamps) == 3:  # hold the loop (the server's too) 30 ms mid-stream:
                                time.sleep(0.03)  # noqa: ASYNC251 - the chunks due meanwhile go out late
                async with session.get(url + "/fmbench/stats", params={"late": "1"}) as r:
                    late = (await r.json())["late_chunks"]
                await (await session.post(url + "/fmbench/stats/reset")).read()
                async with session.get(url + "/fmbench/stats", params={"late": "1"}) as r:
                    after_reset = (await r.json())["late_chunks"]
                return stamps, late, after_reset
        finally:
            await runner.cleanup()

    stamps, late, after_reset = asyncio.run(run())
    assert len(stamps) == 40
    expected = [(due, (sent - due) * 1000.0) for due, sent in stamps if sent - due > 0.001]
    assert expected  # the held loop made some chunks late
    assert len(late) == len(expected)
    for (due, late_ms), (want_due, want_ms) in zip(late, expected, strict=True):
        assert due == pytest.approx(want_due, abs=2e-6)
        assert late_ms == pytest.approx(want_ms, abs=0.01)
    assert after_reset == []


def test_the_server_yields_the_cpu_once_per_answer_after_its_last_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the last bytes of an answer the server lets the client it woke run first (see
    `core.yield_cpu`): once per streamed or whole answer, never before the answer's last write."""
    import json

    import aiohttp

    import fmbench.simulator.core as core_mod
    from fmbench.config import SimulatedEndpoint
    from fmbench.simulator.server import start_server

    yields: list[float] = []
    monkeypatch.setattr(core_mod, "_sched_yield", lambda: yields.append(time.monotonic()))
    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=5.0, tpot_ms=2.0, output_tokens=10)

    async def run() -> list[float]:
        runner, url = await start_server(cfg, port=0)
        try:
            last_sent: list[float] = []
            async with aiohttp.ClientSession() as session:
                for stream in (True, False, True):
                    body = {"model": cfg.model, "prompt": "p", "stream": stream}
                    async with session.post(url + "/v1/completions", json=body) as resp:
                        if stream:
                            stamps = [json.loads(line[6:])["fmbench"]["t_sent"]
                                      async for line in resp.content if line.startswith(b"data: {")]
                            last_sent.append(stamps[-1])
                        else:
                            last_sent.append((await resp.json())["fmbench"]["t_sent"])
            return last_sent
        finally:
            await runner.cleanup()

    last_sent = asyncio.run(run())
    assert len(yields) == len(last_sent) == 3
    for sent, yielded in zip(last_sent, yields, strict=True):
        assert yielded >= sent
