"""Whether an open-loop shard's endpoint kept up with its arrivals, from when requests were due and ended.

An endpoint that keeps up ends requests as fast as they arrive: a request's end time follows its
scheduled time with slope 1 (plus a latency that does not trend). One that cannot serve the offered
rate ends them slower than they arrive: the least-squares slope of end time on scheduled time is
the offered rate over the served rate, so ``completion_rate = 1 / slope`` is the fraction of the
offered rate it served, and every request waits longer than the one before it. Such a shard's
latencies describe a queue that grew for the whole shard, not the endpoint at that rate.

The fit is kept as running sums (`CompletionFit`, one `add` per successful request), so the load
engine does not store more per request than it already does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MIN_REQUESTS", "CompletionFit", "OverloadVerdict", "judge_overload"]

#: Fewer successful requests than this give no verdict (the slope of a handful of points says little).
MIN_REQUESTS = 10
#: The slope must clear the overload threshold by this many of its standard errors.
Z = 3.0


@dataclass(slots=True)
class CompletionFit:
    """Running sums of the least-squares fit of end time (y) on scheduled time (x).

    Times are taken relative to ``origin`` (the first point's scheduled time) so that the sums of
    squares do not lose their digits to the monotonic clock's large offset.
    """

    n: int = 0
    origin: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    syy: float = 0.0

    def add(self, t_scheduled: float, t_end: float) -> None:
        """Count one successful request."""
        if not self.n:
            self.origin = t_scheduled
        x = t_scheduled - self.origin
        y = t_end - self.origin
        self.n += 1
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.sxy += x * y
        self.syy += y * y

    def slope(self) -> tuple[float, float] | None:
        """The slope of end time on scheduled time and its standard error; None with fewer than 3
        points or when every point was scheduled at the same time."""
        n = self.n
        if n < 3:
            return None
        sxx = self.sxx - self.sx * self.sx / n
        if sxx <= 0:
            return None
        sxy = self.sxy - self.sx * self.sy / n
        syy = self.syy - self.sy * self.sy / n
        b = sxy / sxx
        # (rounding can leave a perfect line's residual slightly below zero)
        residual = max(0.0, syy - b * sxy)
        return b, math.sqrt(residual / (n - 2) / sxx)


@dataclass(frozen=True, slots=True)
class OverloadVerdict:
    """Whether the endpoint kept up, and by how much it did not."""

    overloaded: bool
    completion_rate: float | None  # served rate / offered rate (1 / slope); None for a slope <= 0
    slope: float
    slope_se: float
    n: int
    reason: str | None  # set when overloaded


def judge_overload(fit: CompletionFit, shortfall: float, offered_rate: float | None = None,
                   min_requests: int = MIN_REQUESTS) -> OverloadVerdict | None:
    """Judge a shard's fit: overloaded when the completion rate is below ``1 - shortfall`` and the
    slope clears the matching threshold ``1 / (1 - shortfall)`` by more than `Z` standard errors.

    The standard error is ordinary least squares', which takes the residuals as independent; in a
    queue they are not, and ``shortfall`` is the margin that keeps an endpoint that kept up but had
    a slow spell from being called overloaded.

    Args:
        fit: the shard's successful requests (`CompletionFit`).
        shortfall: how far below the offered rate (a fraction, 0 < x < 1) the completion rate must be.
        offered_rate: the schedule's arrivals per second, for the reason's wording.
        min_requests: fewer successful requests give no verdict.

    Returns:
        The verdict, or None when there are too few points to fit.
    """
    if fit.n < min_requests:
        return None
    fitted = fit.slope()
    if fitted is None:
        return None
    b, se = fitted
    rate = 1.0 / b if b > 0 else None
    threshold = 1.0 / (1.0 - shortfall)
    overloaded = rate is not None and b - threshold > Z * se
    reason = None
    if overloaded:
        assert rate is not None
        served = f"{rate:.0%} of the offered rate"
        if offered_rate:
            served = f"{offered_rate * rate:.4g} req/s against {offered_rate:.4g} req/s offered ({rate:.0%})"
        reason = (f"completed {served}, more than {shortfall:.0%} short (end-time slope {b:.3g} ± {se:.2g} over "
                  f"{fit.n} ok requests): the queue grew for the whole shard, so its latencies measure the "
                  "backlog, not the endpoint at this rate")
    return OverloadVerdict(overloaded, rate, b, se, fit.n, reason)
