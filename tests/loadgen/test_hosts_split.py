"""How a multi-host shard is split and judged, without a cluster: request ids dealt in proportion to
each host's concurrency, and the clock-uncertainty rule that invalidates a short shard."""

from __future__ import annotations

from fmbench.loadgen.hosts import HostClock, clock_verdict, deal_ids


def test_ids_are_dealt_in_proportion_and_interleaved() -> None:
    parts = deal_ids(10, [3, 2])
    assert sorted(parts[0] + parts[1]) == list(range(10))
    assert len(parts[0]) == 6 and len(parts[1]) == 4
    assert parts[0][:2] == [0, 2] or parts[0][:2] == [0, 1]


def test_uncertain_clocks_invalidate_a_short_shard() -> None:
    def clock(u: float) -> HostClock:
        return HostClock(host="h", address="a", offset_s=0.0, uncertainty_s=u, shift_s=0.0, concurrency=1)

    assert clock_verdict([clock(0.001), clock(0.002)], 10.0) is None
    reason = clock_verdict([clock(0.001), clock(0.02)], 2.0)
    assert reason is not None and "uncertain" in reason
    assert clock_verdict([clock(0.5)], 1.0) is None  # one host: one clock
