"""A shard runs on a frozen heap: what the process held before it is out of the collector's walks."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path

from fmbench.loadgen import ShardSpec, run_shard
from fmbench.protocol import Completion, Prompt

PROMPTS = [Prompt("p0", "a prompt", 2)]


class GcWatchingClient:
    """Answers at once (or when released), noting how many objects were frozen at each request."""

    def __init__(self, release: threading.Event | None = None) -> None:
        self.frozen: list[int] = []
        self.thresholds: list[tuple[int, int, int]] = []
        self.release = release
        self.started = threading.Event()

    async def open(self, concurrency: int) -> None:
        pass

    async def complete(self, prompt: Prompt) -> Completion:
        self.frozen.append(gc.get_freeze_count())
        self.thresholds.append(gc.get_threshold())
        self.started.set()
        if self.release is not None:
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        return Completion(t_start=0.0, t_end=0.0, t_first_token=0.0, chunk_times=[], text="x")

    async def close(self) -> None:
        pass


def _spec(shard_id: str, requests: int) -> ShardSpec:
    return ShardSpec(shard_id=shard_id, experiment="e", dataset="d", bucket="1-500", bucket_min=1, bucket_max=500,
                     requests=requests)


def test_a_shard_runs_on_a_frozen_heap_and_unfreezes_it_after(tmp_path: Path) -> None:
    assert gc.get_freeze_count() == 0
    before = gc.get_threshold()
    held = [{"kept": i} for i in range(1000)]  # objects the process holds before the shard
    c = GcWatchingClient()
    run_shard(c, PROMPTS, _spec("s", 5), tmp_path / "r.parquet", lambda s: 1)
    assert len(c.frozen) == 5 and min(c.frozen) >= len(held)
    # Young collections as before; the middle generation's (a walk of every request in flight) rarer.
    assert {t[0] for t in c.thresholds} == {before[0]} and min(t[1] for t in c.thresholds) >= 1000
    assert gc.get_freeze_count() == 0  # after the shard, everything is collectable again
    assert gc.get_threshold() == before  # ... and collected as the process had it


def test_shards_at_once_share_the_freeze_until_the_last_ends(tmp_path: Path) -> None:
    release = threading.Event()
    long = GcWatchingClient(release)
    t = threading.Thread(target=run_shard, args=(long, PROMPTS, _spec("long", 2), tmp_path / "a.parquet",
                                                 lambda s: 1))
    t.start()
    try:
        assert long.started.wait(30)
        short = GcWatchingClient()
        run_shard(short, PROMPTS, _spec("short", 3), tmp_path / "b.parquet", lambda s: 1)
        assert min(short.frozen) > 0
        assert gc.get_freeze_count() > 0  # the long shard still runs: its heap stays frozen
    finally:
        release.set()
        t.join(30)
    assert min(long.frozen) > 0 and gc.get_freeze_count() == 0
