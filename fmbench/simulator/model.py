"""The latency model of a continuous-batching LLM server, as a pure discrete-event simulation.

Time is virtual (seconds, any origin); the live server feeds it ``time.monotonic()`` stamps and
sends each chunk when its due time comes. Rules:

* At most ``max_batch`` requests are in flight (admitted, not finished); more wait in a FIFO
  queue. A waiting request is admitted the moment a slot frees (the finishing request's last
  token), and its TTFT clock still starts at arrival, so queueing shows up in TTFT.
* First token due = admission + ``ttft`` + ``prefill_per_token`` * prompt tokens (+ any extra
  first-byte delay a fault injects).
* Token k+1 is due ``tpot * (1 + decode_slowdown * (n_decoding - 1))`` after token k, where
  ``n_decoding`` counts the requests between their first and last token (this one included) at
  token k's due time. A request emits ``output_tokens`` tokens.
* Chunks: the first token is always a chunk of its own (so TTFT keeps its meaning); later tokens
  are grouped ``chunk_tokens`` at a time, each chunk due with its last token.

Events are processed in due-time order, events due at the same instant as one step, so the
schedule depends only on the arrival times and request sizes: the same inputs give the same
schedule.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from fmbench.config import SimulatedEndpoint


@dataclass(frozen=True, slots=True)
class ModelParams:
    """Latency-model parameters in seconds (`SimulatedEndpoint` uses milliseconds)."""

    ttft_s: float = 0.08
    prefill_s_per_token: float = 0.0
    tpot_s: float = 0.004
    decode_slowdown: float = 0.0
    max_batch: int = 16
    chunk_tokens: int = 1

    @classmethod
    def from_config(cls, cfg: SimulatedEndpoint) -> ModelParams:
        """The parameters of a `SimulatedEndpoint` config."""
        return cls(
            ttft_s=cfg.ttft_ms / 1000.0,
            prefill_s_per_token=cfg.prefill_ms_per_token / 1000.0,
            tpot_s=cfg.tpot_ms / 1000.0,
            decode_slowdown=cfg.decode_slowdown,
            max_batch=cfg.max_batch,
            chunk_tokens=cfg.chunk_tokens,
        )


@dataclass(slots=True)
class ChunkEvent:
    """A chunk became due: tokens ``[first_token, first_token + n_tokens)`` of request ``rid``.

    Not frozen: one is made per chunk in the decode step, and a frozen dataclass's ``__init__``
    costs several times more. Treat it as read-only.
    """

    rid: int
    index: int  # 0-based chunk number within the request
    first_token: int
    n_tokens: int
    t_due: float
    last: bool


#: A `ChunkEvent` as a plain tuple ``(rid, index, first_token, n_tokens, t_due, last)``: what the
#: model records per chunk (`drain_raw`), since building an object per output token is a large
#: part of a decode step's cost.
RawChunk = tuple[int, int, int, int, float, bool]


@dataclass(slots=True)
class RequestTiming:
    """What the model decided for one request (virtual seconds)."""

    rid: int
    arrival: float
    prompt_tokens: int
    output_tokens: int
    extra_ttft_s: float = 0.0
    admitted: float | None = None
    token_dues: list[float] = field(default_factory=list)
    finished: float | None = None
    cancelled: bool = False
    chunks_emitted: int = 0
    tokens_chunked: int = 0

    @property
    def ttft(self) -> float | None:
        """First token due minus arrival, or None before it is known."""
        return self.token_dues[0] - self.arrival if self.token_dues else None

    @property
    def done(self) -> bool:
        """True once the last token is due or the request was cancelled."""
        return self.finished is not None


class LatencyModel:
    """A deterministic discrete-event model of a continuous-batching server.

    Feed it arrivals (`arrive`), move virtual time forward (`advance_to`) and collect the chunks
    that became due (`drain`). Times never go backwards: ``advance_to`` with an earlier time is a
    no-op, and an arrival earlier than the processed time is admitted no earlier than the slot
    it takes became free.
    """

    def __init__(self, params: ModelParams) -> None:
        if params.max_batch < 1 or params.chunk_tokens < 1:
            raise ValueError("max_batch and chunk_tokens must be at least 1")
        self.params = params
        self._now = -math.inf
        self._events: list[tuple[float, int, int, int]] = []  # (due, seq, rid, token index)
        self._seq = 0
        self._free: list[float] = [-math.inf] * params.max_batch  # heap of free-since times
        self._queue: deque[int] = deque()
        self._reqs: dict[int, RequestTiming] = {}
        self._next_rid = 0
        self._decoding = 0
        self._outbox: list[RawChunk] = []

    # ------------------------------------------------------------ inputs

    def arrive(
        self, arrival: float, prompt_tokens: int, output_tokens: int, extra_ttft_s: float = 0.0
    ) -> int:
        """Register a request arriving at ``arrival``; returns its id."""
        if output_tokens < 1 or prompt_tokens < 0:
            raise ValueError("output_tokens must be >= 1 and prompt_tokens >= 0")
        self._process_until(arrival)
        rid = self._next_rid
        self._next_rid += 1
        req = RequestTiming(rid, arrival, prompt_tokens, output_tokens, extra_ttft_s)
        self._reqs[rid] = req
        if not self._queue and self._free:
            self._admit(req, max(arrival, heapq.heappop(self._free)))
        else:
            self._queue.append(rid)
        return rid

    def cancel(self, rid: int, now: float) -> None:
        """Drop a request (client gone): its slot frees at ``now``, it emits nothing more."""
        self._process_until(now)
        req = self._reqs.get(rid)
        if req is None or req.done:
            return
        req.cancelled = True
        req.finished = max(now, self._now)
        if req.admitted is None:
            self._queue.remove(rid)
            return
        if req.token_dues:
            self._decoding -= 1
        self._release(max(req.finished, req.admitted))

    def advance_to(self, t: float) -> None:
        """Process every event due at or before ``t``."""
        self._process_until(t)

    def run(self) -> list[ChunkEvent]:
        """Process all remaining events (offline simulation) and return every chunk produced."""
        while self._events:
            self._process_until(self._events[0][0])
        return self.drain()

    # ------------------------------------------------------------ outputs

    def drain(self) -> list[ChunkEvent]:
        """The chunks that became due since the last drain, in due order."""
        return [ChunkEvent(*raw) for raw in self.drain_raw()]

    def drain_raw(self) -> list[RawChunk]:
        """`drain` as tuples (the live server's decode step, which runs once per output token)."""
        out, self._outbox = self._outbox, []
        return out

    def next_due(self) -> float | None:
        """The due time of the earliest pending event, if any."""
        while self._events and self._reqs.get(self._events[0][2], _GONE).cancelled:
            heapq.heappop(self._events)
        return self._events[0][0] if self._events else None

    def timing(self, rid: int) -> RequestTiming:
        """The model's record of one request (until `forget`)."""
        return self._reqs[rid]

    def forget(self, rid: int) -> None:
        """Drop a finished request's record to bound memory."""
        req = self._reqs.get(rid)
        if req is not None and req.done:
            del self._reqs[rid]

    @property
    def in_flight(self) -> int:
        """Requests admitted and not finished."""
        return self.params.max_batch - len(self._free)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch slot."""
        return len(self._queue)

    @property
    def decoding(self) -> int:
        """Requests between their first and last token."""
        return self._decoding

    # ------------------------------------------------------------ internals

    def _push(self, due: float, rid: int, k: int) -> None:
        heapq.heappush(self._events, (due, self._seq, rid, k))
        self._seq += 1

    def _admit(self, req: RequestTiming, at: float) -> None:
        req.admitted = at
        p = self.params
        first = at + p.ttft_s + p.prefill_s_per_token * req.prompt_tokens + req.extra_ttft_s
        self._push(first, req.rid, 0)

    def _release(self, at: float) -> None:
        if self._queue:
            self._admit(self._reqs[self._queue.popleft()], at)
        else:
            heapq.heappush(self._free, at)

    def _process_until(self, t: float) -> None:
        events = self._events
        reqs = self._reqs
        pop, replace = heapq.heappop, heapq.heapreplace
        p = self.params
        tpot, slowdown, chunk = p.tpot_s, p.decode_slowdown, p.chunk_tokens
        outbox = self._outbox
        while events:
            top = events[0]
            due = top[0]
            if due > t:
                break
            # Another event at the same instant is the top's child in the heap: one step.
            n = len(events)
            if (n > 1 and events[1][0] == due) or (n > 2 and events[2][0] == due):
                pop(events)
                self._step_together(due, top[2], top[3])
                continue
            # One event alone at its instant: `_step_together`'s rules, inlined (this runs once
            # per output token, the simulator's hottest path); the next token's event replaces
            # this one in the heap in one sift.
            rid, k = top[2], top[3]
            req = reqs.get(rid)
            if req is None or req.cancelled:
                pop(events)
                continue
            req.token_dues.append(due)
            if k == 0:
                self._decoding += 1
            last = k == req.output_tokens - 1
            if k == 0 or last or k % chunk == 0:
                done = req.tokens_chunked
                outbox.append((rid, req.chunks_emitted, done, k + 1 - done, due, last))
                req.chunks_emitted += 1
                req.tokens_chunked = k + 1
            if last:
                pop(events)
                req.finished = due
                self._decoding -= 1
                self._release(due)
            else:
                replace(events, (due + tpot * (1.0 + slowdown * (self._decoding - 1)), self._seq, rid, k + 1))
                self._seq += 1
        self._now = max(self._now, t)

    def _step_together(self, due: float, rid: int, k: int) -> None:
        # Events due at the same instant form one step: every request starting or finishing
        # then counts (or not) for all of them, whatever order they were queued in.
        events, reqs = self._events, self._reqs
        batch: list[tuple[RequestTiming, int]] = []
        req = reqs.get(rid)
        if req is not None and not req.cancelled:
            batch.append((req, k))
        while events and events[0][0] == due:
            _, _, rid, k = heapq.heappop(events)
            req = reqs.get(rid)
            if req is not None and not req.cancelled:
                batch.append((req, k))
        for req, k in batch:
            self._on_token(req, k, due)
        step = self.params.tpot_s * (1.0 + self.params.decode_slowdown * (self._decoding - 1))
        for req, k in batch:
            if k == req.output_tokens - 1:
                self._release(due)
            else:
                self._push(due + step, req.rid, k + 1)

    def _on_token(self, req: RequestTiming, k: int, due: float) -> None:
        p = self.params
        req.token_dues.append(due)
        if k == 0:
            self._decoding += 1
        last = k == req.output_tokens - 1
        if k == 0 or last or (k % p.chunk_tokens == 0):
            n = k + 1 - req.tokens_chunked
            self._outbox.append((req.rid, req.chunks_emitted, req.tokens_chunked, n, due, last))
            req.chunks_emitted += 1
            req.tokens_chunked = k + 1
        if last:
            req.finished = due
            self._decoding -= 1


_GONE = RequestTiming(-1, 0.0, 0, 1, cancelled=True)
