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
