"""This machine's own speed over time, measured beside a shard or a benchmark by a light sentinel.

On a shared VM a fixed piece of Python now and then runs 5-10x slower than usual for tens of
milliseconds, even with nothing else running (the host's doing: thread CPU time runs on through
it, so the vCPU is not descheduled, only slow). A client or a paced server falls behind in such a
window whatever its code, so a tail measured then is partly the machine's. The sentinel, a child
process, times a ~5-us piece of work every millisecond (about 0.5 % of a core) and reports, per
10-ms window, the median time; a window at least `SLOW_FACTOR` times the run's median is a slow
window. `in_slow` and `attribute` say which requests or late chunks fell in or right after one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

#: A window whose median time per unit is at least this many times the run's median is slow.
SLOW_FACTOR = 4.0
#: A shard during which the machine was slow in at least this share of its 10-ms windows is flagged
#: in the report: at that share, a p99 measured on this machine is within reach of its slow windows.
SLOW_SHARE_WARN = 0.05
#: Chunks due this long after a slow window ends still count as in it: the backlog the window
#: left takes time to clear (at half a core of load, about as long again as the window).
RECOVERY_S = 0.05

_SENTINEL = """
import json, select, statistics, sys, time
seconds, bin_s = float(sys.argv[1]), 0.01
bins, t0, n = {}, time.monotonic(), 0
end = t0 + seconds if seconds > 0 else float("inf")
while True:
    t = time.monotonic()
    if t >= end:
        break
    n += 1
    if seconds <= 0 and n % 100 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break  # told to stop (its stdin closed)
    a = time.perf_counter()
    sum(range(300))
    bins.setdefault(int((t - t0) / bin_s), []).append(time.perf_counter() - a)
    time.sleep(0.001)
print(json.dumps({"t0": t0, "bin_s": bin_s,
                  "bins": [[k, statistics.median(v) * 1e6] for k, v in sorted(bins.items())]}))
"""


class Sentinel:
    """Measures the machine's speed in a child process for ``seconds``, or until `result` when 0.

    Raises:
        OSError: the child process could not be started.
    """

    def __init__(self, seconds: float = 0.0) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _SENTINEL, str(seconds)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True)

    def result(self) -> dict[str, Any]:
        """Slow windows (monotonic ``[start, end]``), their share of the time, and the medians.

        Raises:
            ValueError: the child gave no result (it failed or was killed).
            subprocess.TimeoutExpired: it did not answer within two minutes.
        """
        out, _ = self._proc.communicate(timeout=120)  # closes its stdin: one run until now stops
        data = json.loads(out)
        return slow_windows(data["t0"], data["bin_s"], data["bins"])

    def stop(self) -> None:
        """Stop it without a result (the shard failed)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def in_slow(t0: float, t1: float, windows: list[list[float]]) -> bool:
    """Whether ``[t0, t1]`` overlaps a slow window or the `RECOVERY_S` after it."""
    return any(a <= t1 and t0 <= b + RECOVERY_S for a, b in windows)


def slow_windows(t0: float, bin_s: float, bins: list[list[float]]) -> dict[str, Any]:
    """Merge adjacent slow bins (``[index, median_us]``) into windows on the monotonic clock."""
    medians = sorted(m for _, m in bins)
    if not medians:
        return {"unit_us_median": None, "slow_share": 0.0, "windows": []}
    typical = medians[len(medians) // 2]
    windows: list[list[float]] = []
    for k, m in bins:
        if m < SLOW_FACTOR * typical:
            continue
        start = t0 + k * bin_s
        if windows and abs(windows[-1][1] - start) < 1e-9:
            windows[-1][1] = start + bin_s
        else:
            windows.append([start, start + bin_s])
    slow = sum(1 for _, m in bins if m >= SLOW_FACTOR * typical)
    return {"unit_us_median": round(typical, 2), "slow_share": round(slow / len(bins), 4), "windows": windows}


def attribute(late_chunks: list[list[float]], chunks: int, span: tuple[float, float],
              windows: list[list[float]]) -> dict[str, Any]:
    """Split the chunks more than 1 ms late (``[t_due, lateness_ms]``) by whether they were due in
    (or within `RECOVERY_S` after) a slow window of the machine.

    ``late_share_outside`` is the share of the chunks due outside those spans that were more than
    1 ms late: the pacing p99 outside them is <= 1 ms exactly when it is <= 0.01. The number of
    chunks outside is estimated from the total in proportion to time (the load is steady).
    """
    lo, hi = span
    spans = [(max(lo, a), min(hi, b + RECOVERY_S)) for a, b in windows if b + RECOVERY_S > lo and a < hi]
    merged: list[list[float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    covered = sum(b - a for a, b in merged)

    def inside(t: float) -> bool:
        return any(a <= t <= b for a, b in merged)

    late_inside = sum(1 for due, _ in late_chunks if inside(due))
    outside_chunks = chunks * (1.0 - covered / (hi - lo)) if hi > lo else 0.0
    late_outside = len(late_chunks) - late_inside
    return {
        "late_chunks": len(late_chunks),
        "late_in_slow_windows": late_inside,
        "time_in_slow_windows": round(covered / (hi - lo), 4) if hi > lo else 0.0,
        "late_share_outside": round(late_outside / outside_chunks, 4) if outside_chunks else None,
    }
