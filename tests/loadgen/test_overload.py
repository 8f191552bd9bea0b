"""Overload detection on synthetic shards: an endpoint that keeps up, one that falls behind, a noisy
borderline one, and too few requests to say."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from fmbench.loadgen import ShardSpec
from fmbench.loadgen.overload import MIN_REQUESTS, CompletionFit, judge_overload


def arrivals(rate: float, n: int, seed: int = 1, start: float = 0.0) -> list[float]:
    rng = random.Random(seed)
    t, out = start, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def fifo_ends(sched: list[float], service_s: float) -> list[float]:
    """One server taking ``service_s`` per request, first come first served."""
    free, out = 0.0, []
    for t in sched:
        free = max(free, t) + service_s
        out.append(free)
    return out


def fit_completion(scheduled: list[float], ends: list[float]) -> CompletionFit:
    """The fit of successful requests' end times on their scheduled times, one `add` each as the engine does."""
    fit = CompletionFit()
    for x, y in zip(scheduled, ends, strict=True):
        fit.add(x, y)
    return fit


def test_an_endpoint_that_keeps_up_is_not_overloaded() -> None:
    sched = arrivals(10.0, 300)
    # a server at 60% load: requests queue behind bursts now and then, but the queue does not grow
    verdict = judge_overload(fit_completion(sched, fifo_ends(sched, 0.06)), 0.10, 10.0)
    assert verdict is not None and not verdict.overloaded and verdict.reason is None
    assert verdict.completion_rate == pytest.approx(1.0, abs=0.05)


def test_an_endpoint_serving_six_of_ten_arrivals_a_second_is_overloaded() -> None:
    sched = arrivals(10.0, 300)
    verdict = judge_overload(fit_completion(sched, fifo_ends(sched, 1 / 6)), 0.10, 10.0)
    assert verdict is not None and verdict.overloaded
    assert verdict.completion_rate == pytest.approx(0.6, abs=0.05)
    assert verdict.reason is not None
    # the reason says what was served against what was offered
    assert verdict.reason.startswith(f"completed {10 * verdict.completion_rate:.4g} req/s")
    assert f"req/s against 10 req/s offered ({verdict.completion_rate:.0%})" in verdict.reason
    # without the offered rate, the fraction alone
    bare = judge_overload(fit_completion(sched, fifo_ends(sched, 1 / 6)), 0.10)
    assert bare is not None and bare.reason is not None
    assert bare.reason.startswith(f"completed {verdict.completion_rate:.0%} of the offered rate, more than 10% short")


def test_a_noisy_borderline_shard_is_not_called_overloaded_but_a_clean_one_is() -> None:
    """Both completed at 85% of the offered rate, under the 90% threshold: with latencies that jump
    by seconds the slope is too uncertain to say so, with steady ones it is not."""
    rng = random.Random(3)
    sched = [i / 10 for i in range(40)]
    trend = [t / 0.85 for t in sched]
    noisy = fit_completion(sched, [y + rng.uniform(0, 4.0) for y in trend])
    steady = fit_completion(sched, [y + rng.uniform(0, 0.01) for y in trend])
    loud, quiet = judge_overload(noisy, 0.10, 10.0), judge_overload(steady, 0.10, 10.0)
    assert loud is not None and quiet is not None
    assert loud.completion_rate is not None and loud.completion_rate < 0.9
    assert not loud.overloaded
    assert quiet.overloaded and quiet.completion_rate == pytest.approx(0.85, abs=0.01)
    # a looser threshold lets even the steady one pass
    loose = judge_overload(steady, 0.20, 10.0)
    assert loose is not None and not loose.overloaded


def test_too_few_requests_give_no_verdict() -> None:
    sched = [i / 10 for i in range(MIN_REQUESTS)]
    ends = [t * 3 + 1 for t in sched]  # far behind, but on too few requests to say
    assert judge_overload(fit_completion(sched[:-1], ends[:-1]), 0.10) is None
    verdict = judge_overload(fit_completion(sched, ends), 0.10)
    assert verdict is not None and verdict.overloaded
    # every request due at once: no slope to fit
    assert judge_overload(fit_completion([5.0] * 20, [5.0 + i for i in range(20)]), 0.10) is None


def test_the_monotonic_clock_offset_changes_nothing() -> None:
    """Times are fitted relative to the first request, so a clock that reads 10^6 s gives the verdict
    it gives at zero (raw sums of squares there would lose the digits the slope needs)."""
    sched = arrivals(50.0, 2000)
    ends = fifo_ends(sched, 0.0185)  # 92.5% of the arrivals: just short of the 10% shortfall
    near = fit_completion(sched, ends)
    far = CompletionFit()
    for x, y in zip(sched, ends, strict=True):
        far.add(x + 1e6, y + 1e6)
    a, b = judge_overload(near, 0.10), judge_overload(far, 0.10)
    assert a is not None and b is not None
    assert a.overloaded == b.overloaded
    assert b.slope == pytest.approx(a.slope, rel=1e-9) and b.slope_se == pytest.approx(a.slope_se, rel=1e-6)


@pytest.mark.parametrize("shortfall", [0.0, 1.0, -0.1])
def test_overload_shortfall_is_a_fraction_strictly_between_0_and_1(shortfall: float) -> None:
    with pytest.raises(ValidationError, match="overload_shortfall"):
        ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="1-2", bucket_min=1, bucket_max=2,
                  requests=1, request_rate=1.0, overload_shortfall=shortfall)
