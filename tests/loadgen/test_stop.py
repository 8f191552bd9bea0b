"""A run stops the shards still measuring before it deletes their endpoints (`fmbench.interrupts.StopScope`):
each cancels its requests in flight, keeps no records file and raises `ShardCancelled`."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fmbench.config import InferenceConfig
from fmbench.endpoints.openai import OpenAIClient
from fmbench.interrupts import Stopped, StopScope, run_until_stopped
from fmbench.loadgen import ShardSpec, partial_path, run_shard
from fmbench.loadgen.engine import ShardCancelled
from fmbench.protocol import Prompt
from tests.support.fake_openai import FakeOpenAI

PROMPTS = [Prompt(f"p{i}", f"prompt {i}", 3) for i in range(3)]


def test_a_stop_scope_stops_what_is_registered_and_what_registers_after() -> None:
    scope, calls = StopScope(), []
    first = scope.register(lambda: calls.append("running"))
    ended = scope.register(lambda: calls.append("ended"))
    ended()  # work that finished says so: it is not stopped
    failing = scope.register(lambda: 1 / 0)  # one that fails to stop keeps no other from stopping
    second = scope.register(lambda: calls.append("also running"))
    for end in (first, failing, second):  # the work ends as soon as it is told (here: at once)
        end()
    assert scope.stop() == 0 and calls == []  # all had ended before the stop
    scope2 = StopScope()
    ends = [scope2.register(lambda name=name: calls.append(name)) for name in ("a", "b")]
    scope2.register(lambda: 1 / 0)
    assert scope2.stop(wait_s=0) == 3 and scope2.stopped and calls == ["a", "b"]
    for end in ends:
        end()
    scope2.register(lambda: calls.append("late"))  # work starting after the stop is stopped at once
    assert calls[-1] == "late"
    assert scope2.stop(wait_s=0) == 0  # each is stopped once


def test_a_stopping_run_waits_for_its_work_to_end() -> None:
    """`stop` returns once the work it stopped has ended (then the run deletes the endpoints), not as
    soon as it has told it to stop."""
    scope = StopScope()
    told, finished = threading.Event(), []
    ended = scope.register(told.set)

    def work() -> None:
        assert told.wait(60)
        time.sleep(0.2)  # cancelling its requests, closing its connections
        finished.append(True)
        ended()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    assert scope.stop(wait_s=120) == 1
    assert finished == [True]
    thread.join(10)


def test_run_until_stopped_cancels_the_work_from_the_stopping_thread() -> None:
    scope = StopScope()
    assert run_until_stopped(asyncio.sleep(0, "done"), scope) == "done"
    assert run_until_stopped(asyncio.sleep(0, "alone"), None) == "alone"
    box: dict[str, Any] = {}
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    def go() -> None:
        try:
            run_until_stopped(forever(), scope)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    assert started.wait(60)
    scope.stop(wait_s=120)  # returns once the work has ended (its cancellation handled)
    thread.join(60)
    assert isinstance(box.get("exc"), Stopped), box


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "two processes"])
def test_a_shard_stops_with_its_run_and_keeps_no_records(tmp_path: Path, processes: int) -> None:
    srv = FakeOpenAI().start()
    try:
        client = OpenAIClient(srv.url, "ok:ttft=0.05:n=2", inference=InferenceConfig())
        out = tmp_path / "r.parquet"
        scope = StopScope()
        measuring = threading.Event()
        box: dict[str, Any] = {}

        def progress(done: int, total: int, errors: int, ttft: float | None) -> None:
            if done:
                measuring.set()

        def go() -> None:
            spec = ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="0-9", bucket_min=0, bucket_max=9,
                             concurrency=4, requests=100_000, processes=processes)
            try:
                box["result"] = run_shard(client, PROMPTS, spec, out, len, progress, scope)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                box["exc"] = exc

        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        assert measuring.wait(120), box  # requests are being answered and recorded
        assert scope.stop() == 1
        thread.join(120)  # 100,000 requests would take far longer: the stop ended it
        assert not thread.is_alive()
    finally:
        srv.stop()
    assert isinstance(box.get("exc"), ShardCancelled), box
    assert str(box["exc"]) == "shard s: stopped with the run; its records are not kept"
    assert not out.exists()  # nothing that looks like a measured shard
    if processes == 1:  # what it had recorded stays beside it, unfinished, with the cancelled requests
        import polars as pl

        records = pl.read_parquet(partial_path(out))
        assert records.height >= 1 and "cancelled" in records["error_kind"].to_list()


def test_a_shard_of_a_run_already_stopped_sends_nothing(tmp_path: Path) -> None:
    srv = FakeOpenAI().start()
    try:
        client = OpenAIClient(srv.url, "ok:ttft=0.05:n=2", inference=InferenceConfig())
        scope = StopScope()
        scope.stop()
        spec = ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="0-9", bucket_min=0, bucket_max=9,
                         concurrency=2, requests=10)
        with pytest.raises(ShardCancelled):
            run_shard(client, PROMPTS, spec, tmp_path / "r.parquet", len, None, scope)
        assert srv.stats()["arrivals"] == []
    finally:
        srv.stop()
