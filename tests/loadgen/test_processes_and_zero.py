"""Multi-process shards stop with their caller; the zero-latency server answers a real client."""

from __future__ import annotations

import asyncio
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import fmbench.endpoints.openai as openai_module
from fmbench.config import InferenceConfig
from fmbench.datasets.tokenizer import load_tokenizer
from fmbench.endpoints.openai import OpenAIClient
from fmbench.loadgen import ShardSpec, partial_path, run_shard, run_shard_async
from fmbench.loadgen.engine import receive_stamps
from fmbench.loadgen.multiproc import part_path
from fmbench.protocol import Prompt
from fmbench.rxstamp import EVENT_LOOP, KERNEL
from fmbench.simulator.zeroserver import ZeroServer
from tests.support.fake_openai import FakeOpenAI

PROMPTS = [Prompt(f"p{i}", f"prompt {i}", 3) for i in range(3)]


def _spec(**kw: Any) -> ShardSpec:
    base: dict[str, Any] = {"shard_id": "s", "experiment": "e", "dataset": "d", "bucket": "0-9", "bucket_min": 0,
                                "bucket_max": 9, "requests": 20}
    return ShardSpec(**(base | kw))


def _children() -> list[psutil.Process]:
    """Live child processes, except multiprocessing's long-lived resource tracker."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_cancelling_a_multi_process_shard_stops_its_processes(tmp_path: Path) -> None:
    srv = FakeOpenAI().start()
    try:
        before = {p.pid for p in _children()}
        client = OpenAIClient(srv.url, "ok:ttft=0.05:n=2", inference=InferenceConfig())
        out = tmp_path / "r.parquet"

        async def go() -> None:
            task = asyncio.create_task(run_shard_async(
                client, PROMPTS, _spec(concurrency=4, requests=100_000, processes=2), out, len))
            deadline = time.monotonic() + 60
            while len({p.pid for p in _children()} - before) < 2 and time.monotonic() < deadline:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # the processes are sending by now
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(go())  # the shard is far from done: only a cancellation that works lets this return
        left = [p for p in _children() if p.pid not in before]
        assert not left, f"client processes still running after cancellation: {left}"
        assert not out.exists()
        assert not any(part_path(out, k).exists() or partial_path(part_path(out, k)).exists() for k in range(2))
    finally:
        srv.stop()


def test_pipeline_client_and_tokenizer_travel_to_processes() -> None:
    tok = load_tokenizer("cl100k_base")
    client = OpenAIClient("http://127.0.0.1:9/v1", "m", inference=InferenceConfig(stream=True))
    c2, count = pickle.loads(pickle.dumps((client, tok.count)))
    assert count("hello world") == tok.count("hello world") == 2
    assert repr(c2) == repr(client)


@pytest.mark.parametrize("stream", [False, True])
def test_zero_server_answers_the_real_client_through_the_engine(tmp_path: Path, stream: bool) -> None:
    with ZeroServer() as srv:
        client = OpenAIClient(srv.base_url(7 if stream else None), "m", inference=InferenceConfig(stream=stream))
        res = run_shard(client, PROMPTS, _spec(concurrency=4, requests=200), tmp_path / "z.parquet", lambda s: 1)
        pid = srv.pid
    assert res.requests == 200 and res.errors == 0
    import polars as pl

    df = pl.read_parquet(res.records_path)
    assert set(df["chunks"].to_list()) == ({7} if stream else {0})
    assert pid is not None and not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel receive stamps are Linux's")
@pytest.mark.parametrize("processes", [1, 2])
def test_a_shard_says_how_the_arrival_of_its_answers_was_stamped(tmp_path: Path, processes: int) -> None:
    with ZeroServer() as srv:
        client = OpenAIClient(srv.base_url(3), "m", inference=InferenceConfig(stream=True))
        res = run_shard(client, PROMPTS, _spec(concurrency=4, requests=40, processes=processes),
                        tmp_path / "z.parquet", len)
    assert res.errors == 0
    # every connection the shard opened, over all its processes, had the kernel's stamps
    stamps = res.receive_stamps
    assert stamps is not None and stamps[EVENT_LOOP] == 0 and processes <= stamps[KERNEL] <= 4 + processes


def test_connections_without_kernel_stamps_are_counted_as_the_event_loops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what a connection gets where the kernel gives no stamp (not Linux, uvloop's transports)
    monkeypatch.setattr(openai_module, "stamp_reads", lambda transport: None)
    with ZeroServer() as srv:
        client = OpenAIClient(srv.base_url(None), "m", inference=InferenceConfig())
        res = run_shard(client, PROMPTS, _spec(concurrency=3, requests=30), tmp_path / "z.parquet", lambda s: 1)
    assert res.errors == 0
    stamps = res.receive_stamps
    assert stamps is not None and stamps[KERNEL] == 0 and 1 <= stamps[EVENT_LOOP] <= 3
    # and a client that does not say leaves it unsaid
    assert receive_stamps(object()) is None  # type: ignore[arg-type]


def test_a_retried_request_is_one_request_however_the_shard_is_split(tmp_path: Path) -> None:
    """With request_retries, a request has a record per attempt; the shard's result counts it once, by
    its final attempt, whether one process ran it, two (whose parts are merged) or client hosts (whose
    slices are merged the same way)."""
    import shutil

    import polars as pl

    from fmbench.config import SimulatedEndpoint, SimulatedFaults
    from fmbench.endpoints import make_client
    from fmbench.loadgen.engine import shard_result
    from fmbench.loadgen.hosts import HostClock, _merge
    from fmbench.records import final_attempts
    from fmbench.simulator.process import SimulatedServerProcess

    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=2.0, tpot_ms=0.5, output_tokens=4,
                            faults=SimulatedFaults(seed=1, http_500_rate=0.4))
    spec = ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="b", bucket_min=0, bucket_max=10,
                     requests=30, warmup=2, request_retries=2, concurrency=2)
    prompts = [Prompt(f"p{i}", f"question {i}", 3) for i in range(3)]
    results = {}
    with SimulatedServerProcess(cfg) as srv:
        for processes in (1, 2):
            client = make_client(cfg, InferenceConfig(max_tokens=4), url=srv.url)
            results[processes] = run_shard(client, prompts, spec.model_copy(update={"processes": processes}),
                                           tmp_path / f"p{processes}.parquet", len)
    slice_path = tmp_path / "slice.parquet"  # the one-process shard's records, as one client host's slice
    shutil.copy(results[1].records_path, slice_path)
    clock = HostClock(host="h0", address="tcp://h0", offset_s=0.0, uncertainty_s=0.0, shift_s=0.0, concurrency=2)
    merged = tmp_path / "hosts.parquet"
    results["hosts"] = shard_result(spec, _merge(merged, [str(slice_path)], [clock]), merged, 0.0)
    for how, res in results.items():
        records = pl.read_parquet(res.records_path)
        assert records.height > 32 and (records["attempt"] > 1).any(), how  # some requests were retried
        final = final_attempts(records).collect()
        measured = final.filter(~pl.col("warmup"))
        assert (res.requests, res.warmup) == (30, 2) == (measured.height, final.height - measured.height), how
        assert res.errors == int((~measured["ok"]).sum()), how


@pytest.mark.parametrize("processes", [1, 2])
def test_an_open_loop_client_that_kept_its_schedule_is_not_judged_late_for_its_retries(
        tmp_path: Path, processes: int) -> None:
    """A throttled request's last attempt leaves after its backoff (here at least 1.5 s), by design:
    the achieved send rate is judged on each request's first send, else a shard whose client kept
    every due time is invalid ("could not keep up") whenever one of its last requests was retried."""
    import polars as pl

    from fmbench.config import SimulatedEndpoint, SimulatedFaults
    from fmbench.endpoints import make_client
    from fmbench.simulator.process import SimulatedServerProcess

    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=2.0, tpot_ms=0.5, output_tokens=4,
                            faults=SimulatedFaults(seed=3, throttle_rate=0.3, retry_after_s=1.5))
    spec = ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="b", bucket_min=0, bucket_max=10,
                     requests=40, request_rate=20.0, throttle_retries=1, throttle_backoff_s=1.5,
                     max_send_lag_s=1.0, processes=processes)
    prompts = [Prompt(f"p{i}", f"question {i}", 3) for i in range(3)]
    with SimulatedServerProcess(cfg) as srv:
        client = make_client(cfg, InferenceConfig(max_tokens=4), url=srv.url)
        res = run_shard(client, prompts, spec, tmp_path / "s.parquet", len)
    records = pl.read_parquet(res.records_path)
    retried = records.filter(pl.col("attempt") > 1)
    schedule_end = records["t_scheduled"].max()
    assert retried.height and retried["t_start"].max() > schedule_end + 1.0  # a last attempt left late
    assert res.valid, res.invalid_reason
    assert res.scheduled_rate is not None and res.achieved_rate >= res.scheduled_rate * (1 - spec.rate_shortfall)
    assert res.t_first_start == pytest.approx(records.filter(pl.col("attempt") == 1)["t_start"].min())
