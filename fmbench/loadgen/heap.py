"""Keep the garbage collector's pauses out of a shard's measurements.

A process that has imported Prefect, polars, plotly and pydantic holds a few hundred thousand
objects, and CPython's full (generation 2) collection walks all of them: tens of milliseconds on
the development VM, hundreds under load, while every request in flight waits and its TTFT grows.
`frozen_heap` collects once before the shard and then freezes what exists (`gc.freeze`), so the
collections during the shard only walk the objects the shard itself creates; the garbage
collector stays enabled, so a long shard's cyclic garbage is still freed. Shards running at once
in one process share the freeze: the first one in collects and freezes, the last one out unfreezes.

During the shard the middle generation is collected a hundred times less often. Its collections
walk every object that outlived one young collection, i.e. every request in flight: about 1 ms of
CPU at concurrency 64 on the development VM, once per ~300 requests by default, and each request in
flight then reads its answer that much late, right at a 1-ms overhead target. The client makes
almost no cyclic garbage per request (measured: none but its closed connections), so what waits
longer for collection is small; young collections (~0.1 ms) run as before.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_active = 0
_thresholds: tuple[int, int, int] | None = None  # the process's own, restored by the last shard out

#: The middle generation's threshold during a shard (young collections between two of its own).
SHARD_GEN1_THRESHOLD = 1000

__all__ = ["frozen_heap"]


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect and freeze the heap for the body of the block (before a shard's first request)."""
    global _active, _thresholds
    with _lock:
        _active += 1
        if _active == 1:
            # Not while another shard of this process is measuring: its requests would wait for it.
            gc.collect()
            gc.freeze()
            t0, t1, t2 = _thresholds = gc.get_threshold()
            gc.set_threshold(t0, max(t1, SHARD_GEN1_THRESHOLD), t2)
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                gc.unfreeze()  # what the run no longer needs is collectable again
                if _thresholds is not None:
                    gc.set_threshold(*_thresholds)
                    _thresholds = None
