"""Fault injection for the simulated endpoint: seeded, per request, in arrival order.

Each generation request draws exactly two numbers from one seeded RNG when it arrives: the
first picks its fault (or none) by the configured rates, the second where in the stream a
mid-stream fault strikes. So a run with the same seed and the same arrival order meets the
same faults on the same requests. Stopping and restarting the server mid-run is done from
outside with `SimulatedServerProcess.restart`.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

from fmbench.config import SimulatedFaults


class FaultKind(StrEnum):
    """What goes wrong with one request."""

    NONE = "none"
    HTTP_500 = "http_500"  # 500 Internal Server Error, OpenAI-shaped error body
    HTTP_503 = "http_503"  # 503 Service Unavailable
    THROTTLE = "throttle"  # 429 with a Retry-After header
    HANG = "hang"  # never answers (not even headers) until the client gives up
    RESET = "reset"  # the TCP connection is reset (RST) mid-stream
    MALFORMED = "malformed"  # one SSE frame (or the JSON body) is not valid JSON
    TRUNCATED = "truncated"  # the stream ends cleanly but early: no last chunks, no usage, no [DONE]
    SLOW_FIRST_BYTE = "slow_first_byte"  # no byte at all for an extra delay, then normal


class FaultConfig(SimulatedFaults):
    """Rates (0..1, per generation request) of each injected fault; all default to 0.

    The fields live in `fmbench.config.SimulatedFaults` (the config's ``endpoint.faults``); this
    adds the draw order the injector uses.
    """

    @classmethod
    def from_config(cls, faults: SimulatedFaults) -> FaultConfig:
        """The injector's view of a config's faults."""
        return cls.model_validate(faults.model_dump())

    def rates(self) -> list[tuple[FaultKind, float]]:
        """Each fault kind with its rate, in the fixed order the draw uses."""
        return [
            (FaultKind.HTTP_500, self.http_500_rate),
            (FaultKind.HTTP_503, self.http_503_rate),
            (FaultKind.THROTTLE, self.throttle_rate),
            (FaultKind.HANG, self.hang_rate),
            (FaultKind.RESET, self.reset_rate),
            (FaultKind.MALFORMED, self.malformed_rate),
            (FaultKind.TRUNCATED, self.truncated_rate),
            (FaultKind.SLOW_FIRST_BYTE, self.slow_first_byte_rate),
        ]

    @property
    def any(self) -> bool:
        """True when some fault has a positive rate."""
        return any(rate > 0 for _, rate in self.rates())


@dataclass(frozen=True, slots=True)
class Fault:
    """The fault drawn for one request; ``position`` in [0, 1) places a mid-stream fault."""

    kind: FaultKind = FaultKind.NONE
    position: float = 0.0

    def strike_after(self, n_chunks: int) -> int:
        """After how many chunks a mid-stream fault strikes: at least one chunk is sent and at
        least one is missing when the stream has two or more."""
        if n_chunks < 2:
            return 0
        return 1 + int(self.position * (n_chunks - 1))


NO_FAULT = Fault()


class FaultInjector:
    """Draws each arriving request's fault from one seeded RNG and counts what it injected."""

    def __init__(self, config: FaultConfig | None, default_seed: int = 0) -> None:
        self.config = config or FaultConfig()
        seed = self.config.seed if self.config.seed is not None else default_seed
        self._rng = random.Random(seed)
        self._rates = self.config.rates()
        self.counts: Counter[str] = Counter()
        self.refused = 0

    def draw(self) -> Fault:
        """The next arriving request's fault (call once per request, synchronously on arrival)."""
        if not self.config.any:
            self.counts[FaultKind.NONE] += 1
            return NO_FAULT
        u, position = self._rng.random(), self._rng.random()
        acc = 0.0
        kind = FaultKind.NONE
        for candidate, rate in self._rates:
            acc += rate
            if u < acc:
                kind = candidate
                break
        self.counts[kind] += 1
        return Fault(kind, position)

    def void(self, fault: Fault) -> None:
        """Take back ``fault``'s count: its request was refused (a bad request) before the fault could
        strike, so what the counts say was injected is what clients saw. Its draw stays spent: later
        requests' faults stay where the seed put them. Such requests are counted in ``refused``."""
        self.counts[fault.kind] -= 1
        if self.counts[fault.kind] <= 0:
            del self.counts[fault.kind]
        self.refused += 1


async def hang_forever() -> NoReturn:
    """Wait until cancelled (the client gives up and the server cancels the handler)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")
