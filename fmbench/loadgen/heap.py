"""Keep the garbage collector's pauses out of a shard's measurements.

A process that has imported Prefect, polars, plotly and pydantic holds a few hundred thousand
objects, and CPython's full (generation 2) collection walks all of them: tens of milliseconds on
the development VM, hundreds under load, while every request in flight waits and its TTFT grows.
`frozen_heap` collects once before the shard and then freezes what exists (`gc.freeze`), so the
collections during the shard only walk the objects the shard itself creates; the garbage
collector stays enabled, so a long shard's cyclic garbage is still freed. Shards running at once
in one process share the freeze: the first one in collects and freezes, the last one out unfreezes.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_active = 0

__all__ = ["frozen_heap"]


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect and freeze the heap for the body of the block (before a shard's first request)."""
    global _active
    with _lock:
        _active += 1
        if _active == 1:
            # Not while another shard of this process is measuring: its requests would wait for it.
            gc.collect()
            gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                gc.unfreeze()  # what the run no longer needs is collectable again
