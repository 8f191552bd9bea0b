"""The generation core every route family streams from: latency model + pacing + text.

`SimCore.generate` turns a `GenRequest` into a `Generation`, an async iterator of `Chunk`s, each
released at its absolute due time (``time.monotonic()``) and stamped with when it was released.
Route families (OpenAI here; SageMaker and Bedrock framings elsewhere) only serialize chunks.
A route may instead `Generation.attach` a sink: then the core's decode step itself hands every due
chunk of every attached stream to its sink in one pass (no coroutine wake per chunk), the way a
continuous-batching server writes one token of each active stream per step.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

from fmbench.config import SimulatedEndpoint
from fmbench.simulator.model import ChunkEvent, LatencyModel, ModelParams, RawChunk
from fmbench.simulator.pacing import Timer, TimerKind, make_timer
from fmbench.simulator.text import generate_tokens

#: A chunk released later than this after its due time is also kept with its due time
#: (`SimCore.late_chunks`), so that a measurement can line its lateness up with what else
#: happened on the machine at that moment (the percentiles alone cannot say when).
LATE_RECORD_S = 0.001

_sched_yield = getattr(os, "sched_yield", None)


def yield_cpu() -> None:
    """Let a process this one has just woken run before it, if they share a CPU (a no-op if not).

    A socket write wakes its reader as a "sync" wake-up: the kernel, expecting the writer to
    sleep at once, often queues the reader on the writer's own CPU. A simulator sharing the
    machine with its client that goes on to finish a request (aiohttp's end of a response, the
    next request's start: a few hundred µs) would keep the client from its last chunk meanwhile,
    and that wait would be measured as the client's. The server yields after writing a stream's
    last chunk; its own stamps were taken before, so any delay this costs it is its lateness.
    """
    if _sched_yield is not None:
        _sched_yield()


def context_refusal(cfg: SimulatedEndpoint, prompt_tokens: int) -> str | None:
    """Why a prompt of ``prompt_tokens`` is refused (it leaves no room for one output token in the
    model's context, ``cfg.context_tokens``), else None."""
    limit = cfg.context_tokens
    if limit is None or prompt_tokens < limit:
        return None
    return (f"the prompt's {prompt_tokens} tokens leave no room for output in this model's context of "
            f"{limit} tokens")


@dataclass(frozen=True, slots=True)
class GenRequest:
    """One generation request, already validated and token-counted by its route.

    Attributes:
        prompt_tokens: input tokens, used for prefill time and ``usage.prompt_tokens``.
        max_tokens: the client's cap; the output is ``min(max_tokens, cfg.output_tokens)``.
        content: the request's text; with the server seed it fixes the generated text.
        arrival: monotonic time the request arrived (its TTFT clock starts here).
        extra_ttft_s: extra first-token delay (the slow-first-byte fault).
        reply: a chosen reply's output tokens (a model answer or a judge's verdict, see `content`),
            emitted instead of generated words and ending the output; None: generated words.
    """

    prompt_tokens: int
    max_tokens: int | None = None
    content: str = ""
    arrival: float = field(default_factory=time.monotonic)
    extra_ttft_s: float = 0.0
    reply: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of output released by the core.

    Attributes:
        index: 0-based chunk number.
        text: the chunk's text, exactly ``n_tokens`` cl100k tokens.
        n_tokens: output tokens in the chunk.
        t_due: monotonic time the model says the chunk is due.
        t_sent: monotonic time the core released it to the route (just before the write).
        last: True for the final chunk.
    """

    index: int
    text: str
    n_tokens: int
    t_due: float
    t_sent: float
    last: bool


#: Takes the due chunks of one stream in one decode step (as `RawChunk` tuples
#: ``(rid, index, first_token, n_tokens, t_due, last)``), writes them, and returns the monotonic
#: time it stamped them with (taken just before the socket write).
ChunkSink = Callable[[list[RawChunk]], float]


@dataclass(slots=True)
class Usage:
    """Token usage of one request: what the server used for prefill and actually emitted."""

    prompt_tokens: int
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        """OpenAI's ``usage`` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class Generation:
    """The chunks of one request, as an async iterator; use it as an async context manager.

    Leaving the context before the last chunk (client gone, error, cancellation) frees the
    request's batch slot at that moment.
    """

    def __init__(self, core: SimCore, rid: int, request: GenRequest, output_tokens: int) -> None:
        self._core = core
        self.rid = rid
        self.request = request
        self.output_tokens = output_tokens
        self.usage = Usage(prompt_tokens=request.prompt_tokens)
        self.finish_reason: Literal["stop", "length"] = (
            "length" if request.max_tokens is not None and request.max_tokens <= output_tokens else "stop"
        )
        self.context_cut = False  # cut at the end of the model's context (`SimCore.generate`), not by max_tokens
        self._tokens = iter(request.reply) if request.reply else generate_tokens(core.cfg.seed, request.content)
        self._ready: deque[ChunkEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._sink: ChunkSink | None = None
        self._writes = False  # whether the sink writes to a client (see `attach`)

    @property
    def n_chunks(self) -> int:
        """Chunks this generation will yield if it runs to the end."""
        return 1 + math.ceil((self.output_tokens - 1) / self._core.cfg.chunk_tokens)

    @property
    def pending(self) -> int:
        """Chunks already due and waiting to be taken (more than 0 only when the route lags)."""
        return len(self._ready)

    @property
    def arrival(self) -> float:
        """Monotonic arrival time of the request."""
        return self.request.arrival

    def chunk_texts(self) -> list[str]:
        """The text of every chunk this generation yields if it runs to the end, by chunk index
        (the model's split: the first token alone, then ``chunk_tokens`` at a time), so a route can
        encode its frames before they are due. Use it instead of iterating, not with it."""
        tokens = self._tokens
        words = [next(tokens) for _ in range(self.output_tokens)]
        step = self._core.cfg.chunk_tokens
        texts = [words[0]] if words else []
        texts += ["".join(words[i:i + step]) for i in range(1, len(words), step)]
        return texts

    def attach(self, sink: ChunkSink, writes: bool = True) -> None:
        """Have the core's decode step write this stream's chunks through ``sink`` from now on
        (chunks already due go out at once). The generation is then no longer iterated.

        ``writes``: the sink sends the chunks to the client (the step then yields the CPU after
        the last one, see `yield_cpu`); False for a sink that only collects them."""
        self._sink = sink
        self._writes = writes
        if self._ready:
            ready = [(e.rid, e.index, e.first_token, e.n_tokens, e.t_due, e.last) for e in self._ready]
            self._ready.clear()
            self._core._flush(self, ready)

    def _deliver(self, event: ChunkEvent) -> None:
        self._ready.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Chunk:
        if self._done:
            raise StopAsyncIteration
        while not self._ready:
            self._waiter = self._core.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = self._ready.popleft()
        tokens = self._tokens
        text = "".join([next(tokens) for _ in range(event.n_tokens)])
        self.usage.completion_tokens += event.n_tokens
        if event.last:
            self._done = True
            self._core._finished(self.rid)
        t_sent = time.monotonic()
        self._core._record_lateness(event.t_due, t_sent)
        return Chunk(event.index, text, event.n_tokens, event.t_due, t_sent, event.last)

    async def aclose(self) -> None:
        """Stop early: the model frees the slot now and emits nothing more."""
        # A sink usually refers back to its generation (gen -> bound method -> sink -> gen): drop
        # it, so the request's objects are freed here by reference counting. Left to the cyclic
        # GC, a few dozen objects per request make its collections long enough to delay a decode
        # step by 10-20 ms.
        self._sink = None
        if not self._done:
            self._done = True
            self._core._cancel(self.rid)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class SimCore:
    """The latency model bound to the real clock of one event loop.

    One timer fires at the earliest pending event; each firing advances the model to the current
    time and hands every due chunk to its `Generation`. Create it inside the running loop.

    Args:
        cfg: the simulated endpoint's config.
        timer: ``"timerfd"`` (default), ``"loop"`` or ``"thread"``; see `pacing`.
        lateness_window: how many recent chunk latenesses `lateness_stats` keeps.
        step_s: the shortest time between two decode steps: chunks falling due within it of each
            other go out in one step (never before they are due; at most this much after). 0: a
            step for every distinct due time.
    """

    def __init__(
        self,
        cfg: SimulatedEndpoint,
        timer: TimerKind = "timerfd",
        lateness_window: int = 100_000,
        step_s: float = 0.0,
    ) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.model = LatencyModel(ModelParams.from_config(cfg))
        self._gens: dict[int, Generation] = {}
        self._timer: Timer = make_timer(self.loop, self._dispatch, timer)
        self._lateness: deque[float] = deque(maxlen=lateness_window)
        self._late: deque[tuple[float, float]] = deque(maxlen=lateness_window)
        self._step_s = step_s

    def generate(self, request: GenRequest) -> Generation:
        """Admit a request to the model and return its chunk stream.

        Raises:
            ValueError: ``max_tokens`` < 1, ``prompt_tokens`` < 0, or a prompt that leaves no room in
                the context (`context_refusal`: routes refuse it first, as their server would).
        """
        if request.max_tokens is not None and request.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        full = len(request.reply) if request.reply else self.cfg.output_tokens  # a reply ends when it is said
        n_out = full if request.max_tokens is None else min(request.max_tokens, full)
        cut = False
        if self.cfg.context_tokens is not None:
            refused = context_refusal(self.cfg, request.prompt_tokens)
            if refused:
                raise ValueError(refused)
            room = self.cfg.context_tokens - request.prompt_tokens
            cut, n_out = room < n_out, min(n_out, room)
        rid = self.model.arrive(request.arrival, request.prompt_tokens, n_out, request.extra_ttft_s)
        gen = Generation(self, rid, request, n_out)
        if cut:  # (the server's own limit: the answer ends for length, below what the client asked)
            gen.finish_reason, gen.context_cut = "length", True
        self._gens[rid] = gen
        self._dispatch()
        return gen

    def close(self) -> None:
        """Stop the timer (pending generations get no more chunks)."""
        self._timer.close()

    def lateness_stats(self) -> dict[str, float | int]:
        """Percentiles (ms) of chunk release time minus due time over the recent window."""
        values = sorted(self._lateness)
        n = len(values)

        def pct(q: float) -> float:
            return values[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000.0 if n else float("nan")

        return {"n": n, "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0)}

    def late_chunks(self) -> list[tuple[float, float]]:
        """``(t_due, lateness_s)`` of the recent chunks released more than `LATE_RECORD_S` late,
        in release order (the same window as `lateness_stats`)."""
        return list(self._late)

    def reset_lateness(self) -> None:
        """Forget recorded lateness (e.g. between measurement phases)."""
        self._lateness.clear()
        self._late.clear()

    # ------------------------------------------------------------ internals

    def _dispatch(self) -> None:
        model = self.model
        now = time.monotonic()
        model.advance_to(now)
        raw = model.drain_raw()
        if raw:
            gens = self._gens
            if len({ev[0] for ev in raw}) == len(raw):
                # The usual decode step: at most one chunk per stream, so each goes straight to
                # its stream's sink with no grouping (this loop runs once per output token).
                record = self._lateness.append
                ended = False
                for ev in raw:
                    gen = gens.get(ev[0])
                    if gen is None:
                        continue
                    sink = gen._sink
                    if sink is None:
                        gen._deliver(ChunkEvent(*ev))
                        continue
                    if gen._done:
                        continue
                    gen.usage.completion_tokens = ev[2] + ev[3]
                    if ev[5]:
                        gen._done = True
                        self._finished(ev[0])
                    late = sink([ev]) - ev[4]
                    record(late)
                    if late > LATE_RECORD_S:
                        self._late.append((ev[4], late))
                    if ev[5] and gen._writes:
                        ended = True
                if ended:  # after the whole step's writes: a stream's reader has its last chunk
                    yield_cpu()
            else:  # a late step: one stream's chunks go out together, in one write
                grouped: dict[Generation, list[RawChunk]] = {}
                for ev in raw:
                    gen = gens.get(ev[0])
                    if gen is None:
                        continue
                    if gen._sink is None:
                        gen._deliver(ChunkEvent(*ev))
                    else:
                        grouped.setdefault(gen, []).append(ev)
                for gen, evs in grouped.items():
                    self._flush(gen, evs)
                if any(evs[-1][5] and gen._writes for gen, evs in grouped.items()):
                    yield_cpu()
        due = model.next_due()
        if due is not None and self._step_s:
            due = max(due, now + self._step_s)
        self._timer.set(due)

    def _flush(self, gen: Generation, events: list[RawChunk]) -> None:
        """Hand a sink-attached generation's due chunks to its sink (one write)."""
        if gen._done or gen._sink is None:
            return
        last = events[-1]
        gen.usage.completion_tokens = last[2] + last[3]
        if last[5]:
            gen._done = True
            self._finished(gen.rid)
        t_sent = gen._sink(events)
        for ev in events:
            self._record_lateness(ev[4], t_sent)

    def _finished(self, rid: int) -> None:
        self._gens.pop(rid, None)
        self.model.forget(rid)

    def _cancel(self, rid: int) -> None:
        self._gens.pop(rid, None)
        self.model.cancel(rid, time.monotonic())
        self.model.forget(rid)
        self._dispatch()

    def _record_lateness(self, t_due: float, t_sent: float) -> None:
        late = t_sent - t_due
        self._lateness.append(late)
        if late > LATE_RECORD_S:
            self._late.append((t_due, late))
