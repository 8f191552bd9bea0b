"""The load engine over real HTTP on 127.0.0.1: load shape, one record per request, timing, files."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fmbench.config import InferenceConfig, SimulatedEndpoint
from fmbench.endpoints import make_client
from fmbench.endpoints.openai import OpenAIClient
from fmbench.errors import ConfigError, DatasetError, EndpointThrottled
from fmbench.loadgen import ShardResult, ShardSpec, arrival_gaps, partial_path, run_shard, run_shard_async
from fmbench.protocol import Completion, Prompt
from fmbench.records import ERROR_KINDS, REQUEST_SCHEMA
from tests.support.fake_openai import FakeOpenAI
from tests.support.records import assert_warmups_done_first

PROMPTS = [Prompt(f"p{i}", f"prompt number {i}", 10 + i) for i in range(3)]
KEY = "sk-engine-SECRET-987"


def words(text: str) -> int:
    return len(text.split())


def spec(**kw: Any) -> ShardSpec:
    base: dict[str, Any] = {
        "shard_id": "s1",
        "experiment": "exp",
        "dataset": "ds",
        "bucket": "1-500",
        "bucket_min": 1,
        "bucket_max": 500,
        "requests": 20,
    }
    base.update(kw)
    return ShardSpec(**base)


def client(fake_openai: FakeOpenAI, model: str, **inf: Any) -> OpenAIClient:
    return OpenAIClient(fake_openai.url, model, inference=InferenceConfig(**inf), api_key=KEY)


def records(result: ShardResult) -> pl.DataFrame:
    return pl.read_parquet(result.records_path)


def levels_before_starts(df: pl.DataFrame) -> list[int]:
    """How many requests were in flight just before each start, in start order (an end at the same
    instant as a start counts before it)."""
    events = sorted([(t, 1) for t in df["t_start"]] + [(t, -1) for t in df["t_end"]])
    level, out = 0, []
    for _, d in events:
        if d == 1:
            out.append(level)
        level += d
    return out


def peak_in_flight(df: pl.DataFrame) -> int:
    """The most requests in flight at once (an end at the same instant as a start counts before it)."""
    return max(levels_before_starts(df), default=-1) + 1


def test_closed_loop_keeps_exactly_c_in_flight_never_waves(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    c = 4
    fake_openai.reset()
    # random TTFT per request: a wave-based engine would idle while the slowest of each wave finishes
    res = run_shard(
        client(fake_openai, "ok:ttft=0.04:jit=0.06:tpot=0.001:n=4"),
        PROMPTS,
        spec(concurrency=c, requests=48, warmup=4),
        tmp_path / "r.parquet",
        words,
    )
    df = records(res).sort("t_start")
    assert df["ok"].all() and res.errors == 0 and res.valid
    assert fake_openai.stats()["max_active"] == c  # the server never saw more than c at once
    assert peak_in_flight(df) == c
    # A closed loop refills each slot as it frees: just before a start the other c - 1 requests are
    # in flight. A wave engine starts each wave from 0, 1, ..., c - 1 in flight (median below c - 1).
    # How fast a slot is refilled depends on the machine's load (`make bench` measures it); a stalled
    # client lowers the level before a few starts, never the median.
    levels = levels_before_starts(df)[c:]
    assert statistics.median(levels) == c - 1, levels
    assert (df["t_scheduled"] == df["t_start"]).all() and (df["send_lag_s"] == 0).all()


def test_one_record_per_request_with_warmups_and_prompt_cycle(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    res = run_shard(
        client(fake_openai, "ok:ttft=0.002:tpot=0.001:n=5"),
        PROMPTS,
        spec(concurrency=3, requests=17, warmup=4),
        tmp_path / "r.parquet",
        words,
    )
    df = records(res).sort("request_id")
    assert df.schema == pl.Schema(REQUEST_SCHEMA)
    assert df["request_id"].to_list() == list(range(21))
    assert df["warmup"].to_list() == [True] * 4 + [False] * 17
    assert df["prompt_id"].to_list() == [f"p{i % 3}" for i in range(21)]
    # The 4 warm-ups went 3 at a time (the shard's concurrency) and all ended before measuring began.
    assert peak_in_flight(df.filter(pl.col("warmup"))) == 3
    assert_warmups_done_first(df)
    assert (res.requests, res.warmup, res.errors) == (17, 4, 0)
    row = df.row(10, named=True)
    assert row["experiment"] == "exp" and row["dataset"] == "ds" and row["bucket"] == "1-500"
    assert row["concurrency"] == 3 and row["request_rate"] is None and row["attempt"] == 1
    assert row["usage_source"] == "server" and row["input_tokens"] == 3 and row["output_tokens"] == 5
    assert row["chunks"] == 5 and len(row["itl_s"]) == 4
    assert row["ttft_s"] == pytest.approx(row["t_first_token"] - row["t_scheduled"])
    assert row["latency_s"] == pytest.approx(row["t_end"] - row["t_scheduled"])
    assert row["tpot_s"] == pytest.approx((row["latency_s"] - row["ttft_s"]) / 4)
    # the server paces tokens 1 ms apart; on a loaded machine some reads coalesce (gap 0), rarely all
    assert max(row["itl_s"]) >= 0.0005
    measured = df.filter(~pl.col("warmup"))
    assert res.t_first_start == pytest.approx(measured["t_start"].min())
    assert res.t_last_end == pytest.approx(measured["t_end"].max())
    assert res.duration_s == pytest.approx(res.t_last_end - res.t_first_start)
    assert res.achieved_rate == pytest.approx(17 / res.duration_s)
    assert res.client_cpu_s > 0


def test_tokenizer_fallback_when_server_reports_no_usage(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    res = run_shard(client(fake_openai, "nousage:n=6"), PROMPTS, spec(requests=3), tmp_path / "r.parquet", words)
    df = records(res)
    assert df["usage_source"].unique().to_list() == ["tokenizer"]
    assert df["output_tokens"].to_list() == [6, 6, 6]
    assert df.sort("request_id")["input_tokens"].to_list() == [10, 11, 12]


@pytest.mark.parametrize(
    ("model", "kind", "status"),
    [
        ("500", "server_error", 500),
        ("429", "throttled", 429),
        ("malformed", "protocol", None),
        ("reset:tpot=0.002", "protocol", None),  # cut off after the headers
        ("hang", "timeout", None),
        ("echo_key", "client_error", 401),
    ],
)
def test_failures_are_records_not_crashes(
    fake_openai: FakeOpenAI, tmp_path: Path, model: str, kind: str, status: int | None
) -> None:
    res = run_shard(
        client(fake_openai, model, timeout_s=0.2),
        PROMPTS,
        spec(concurrency=2, requests=4, warmup=1),
        tmp_path / "r.parquet",
        words,
    )
    df = records(res)
    assert df.height == 5 and res.errors == 4
    assert df["error_kind"].unique().to_list() == [kind] and not df["ok"].any()
    assert df["http_status"].to_list() == [status] * 5
    assert df["error"].null_count() == 0 and df["latency_s"].null_count() == 0
    for col, dtype in df.schema.items():
        if dtype == pl.String:
            assert not df[col].str.contains(KEY, literal=True).any(), col


class ScriptedClient:
    """An EndpointClient whose requests fail by script (to test the engine's own bookkeeping)."""

    def __init__(self) -> None:
        self.n = 0
        self.opened_with: int | None = None

    async def open(self, concurrency: int) -> None:
        self.opened_with = concurrency

    async def complete(self, prompt: Prompt) -> Completion:
        self.n += 1
        n = self.n
        await asyncio.sleep(0.001)
        if n % 3 == 1:
            raise EndpointThrottled("HTTP 429: too fast", retry_after_s=1.0)
        if n % 3 == 2:
            raise RuntimeError("client bug")
        return Completion(t_start=0.0, t_end=0.0, t_first_token=0.0, chunk_times=[], text="x")

    async def close(self) -> None:
        pass


def test_unexpected_exceptions_become_protocol_records(tmp_path: Path) -> None:
    res = run_shard(ScriptedClient(), PROMPTS, spec(requests=9), tmp_path / "r.parquet", words)
    df = records(res)
    assert df.height == 9
    kinds = df["error_kind"].to_list()
    assert kinds.count("throttled") == 3 and kinds.count("protocol") == 3 and kinds.count(None) == 3
    assert {k for k in kinds if k} <= set(ERROR_KINDS)
    assert (
        df.filter(pl.col("error_kind") == "protocol")["error"].str.contains("RuntimeError: client bug").all()
    )


def test_no_prompts_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        run_shard(ScriptedClient(), [], spec(), tmp_path / "r.parquet", words)


def test_open_loop_meets_a_modest_rate(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    # a loaded 2-core CI machine can deschedule the client for 100+ ms: this test checks the pacing
    # arithmetic and leaves validity by lag and by shortfall to the unreachable-rate test below
    res = run_shard(
        client(fake_openai, "ok:ttft=0.005:n=2"),
        PROMPTS,
        spec(request_rate=100.0, requests=150, warmup=5, seed=7, max_send_lag_s=1.0, rate_shortfall=0.9),
        tmp_path / "r.parquet",
        words,
    )
    df = records(res).filter(~pl.col("warmup")).sort("request_id")
    assert res.valid, res.invalid_reason
    # The rates are what the records say, sends and schedule first to last (how far apart they land
    # depends on the machine's load: each send's lag is recorded and checked below).
    n = df.height
    sent, sched = df["t_start"], df["t_scheduled"]
    assert res.achieved_rate == pytest.approx((n - 1) / (sent.max() - sent.min()), rel=1e-9)
    assert res.scheduled_rate == pytest.approx((n - 1) / (sched.max() - sched.min()), rel=1e-9)
    assert res.scheduled_rate == pytest.approx(100.0, rel=0.3)  # a 150-arrival Poisson sample (seeded)
    assert (df["send_lag_s"] >= 0).all()
    assert (df["send_lag_s"] - (df["t_start"] - df["t_scheduled"])).abs().max() < 1e-9
    assert df["concurrency"].unique().to_list() == [0] and df["request_rate"].unique().to_list() == [100.0]
    # the same seed gives the same schedule
    gaps = df["t_scheduled"].diff().drop_nulls().to_list()
    it = arrival_gaps(spec(request_rate=100.0, requests=150, warmup=5, seed=7))
    expected = [next(it) for _ in range(154)][5:]  # draw k is the gap between requests k and k+1
    assert gaps == pytest.approx(expected, abs=1e-9)


def test_open_loop_rate_the_client_cannot_reach_is_invalid(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    res = run_shard(
        client(fake_openai, "ok:n=1"), PROMPTS, spec(request_rate=1e6, requests=300), tmp_path / "r.parquet", words
    )
    assert not res.valid and res.invalid_reason
    assert "the client could not keep up" in res.invalid_reason and res.slot_waits == 0
    # the client's lateness is not the endpoint's: no overload verdict on a schedule that was not kept
    assert not res.overloaded and res.completion_rate is None
    assert records(res).height == 300


def test_open_loop_cap_counts_waiting_in_latency(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    # one connection, 20 ms per request, 200 req/s offered: the cap throttles the offered load
    c = client(fake_openai, "ok:ttft=0.02:n=1")
    res = run_shard(
        c,
        PROMPTS,
        spec(request_rate=200.0, arrival="constant", max_concurrency=1, requests=30),
        tmp_path / "r.parquet",
        words,
    )
    df = records(res).sort("request_id")
    assert not res.valid and "rate" in (res.invalid_reason or "")
    assert df["concurrency"].unique().to_list() == [1]
    # coordinated omission counted: later requests waited for the slot and their latency shows it
    assert df["latency_s"][-1] > 0.3 and df["send_lag_s"][-1] > 0.3
    assert res.send_lag_p99_s > 0.3 and res.dispatch_lag_p99_s < res.send_lag_p99_s / 2


def test_gamma_and_constant_gaps_have_the_target_mean() -> None:
    for arrival, k in (("gamma", 0.5), ("gamma", 4.0), ("constant", 1.0), ("poisson", 1.0)):
        it = arrival_gaps(spec(request_rate=50.0, arrival=arrival, burstiness=k, seed=3))
        gaps = [next(it) for _ in range(20_000)]
        assert statistics.fmean(gaps) == pytest.approx(0.02, rel=0.05)
    it1 = arrival_gaps(spec(request_rate=50.0, arrival="gamma", burstiness=0.5, seed=3))
    it2 = arrival_gaps(spec(request_rate=50.0, arrival="gamma", burstiness=0.5, seed=3))
    assert [next(it1) for _ in range(10)] == [next(it2) for _ in range(10)]


def test_records_appear_only_when_the_shard_completes(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    out = tmp_path / "shard.parquet"
    seen: list[tuple[bool, bool]] = []

    async def go() -> ShardResult:
        task = asyncio.create_task(
            run_shard_async(
                client(fake_openai, "ok:ttft=0.01:n=2"), PROMPTS, spec(concurrency=2, requests=30), out, words
            )
        )
        while not task.done():
            seen.append((out.exists(), partial_path(out).exists()))
            await asyncio.sleep(0.01)
        return await task

    res = asyncio.run(go())
    assert seen and not any(final for final, _ in seen)
    assert out.exists() and not partial_path(out).exists() and res.records_path == str(out) == res.path


def test_cancelled_shard_keeps_a_partial_file_with_cancelled_records(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    out = tmp_path / "shard.parquet"

    async def go() -> None:
        task = asyncio.create_task(
            run_shard_async(
                client(fake_openai, "ok:ttft=0.05:n=2"), PROMPTS, spec(concurrency=3, requests=1000), out, words
            )
        )
        await asyncio.sleep(0.4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert not out.exists() and partial_path(out).exists()
    df = pl.read_parquet(partial_path(out))
    assert 3 <= df.height < 1000
    assert df.filter(pl.col("error_kind") == "cancelled").height == 3
    assert df["request_id"].n_unique() == df.height


def test_run_shard_from_a_worker_thread(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    box: list[ShardResult] = []
    t = threading.Thread(
        target=lambda: box.append(
            run_shard(client(fake_openai, "ok:n=2"), PROMPTS, spec(requests=5), tmp_path / "r.parquet", words)
        )
    )
    t.start()
    t.join(30)
    assert box and box[0].requests == 5


def test_spec_rejects_unknown_fields_and_cap_without_rate() -> None:
    with pytest.raises(ValueError):
        spec(bogus=1)
    with pytest.raises(ValueError):
        spec(max_concurrency=2)


def test_ttft_and_tpot_match_the_simulated_server(tmp_path: Path) -> None:
    from fmbench.simulator.process import SimulatedServerProcess

    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=50.0, tpot_ms=5.0, output_tokens=20, max_batch=4)
    with SimulatedServerProcess(cfg) as srv:
        assert srv.url
        for api in ("chat", "completions"):
            endpoint = cfg.model_copy(update={"api": api})
            c = make_client(endpoint, InferenceConfig(max_tokens=20), url=srv.url)
            res = run_shard(
                c, PROMPTS, spec(concurrency=1, requests=20, warmup=3), tmp_path / f"{api}.parquet", words
            )
            df = records(res).filter(~pl.col("warmup"))
            assert (
                df["ok"].all()
                and (df["output_tokens"] == 20).all()
                and (df["usage_source"] == "server").all()
            )
            assert (df["chunks"] == 20).all()
            ttft, tpot = df["ttft_s"].median(), df["tpot_s"].median()
            # On a busy host the server itself can send late; its own stamps say by how much, and
            # the client must measure what was sent, never less than the model.
            late = json.loads(urllib.request.urlopen(f"{srv.url}/fmbench/stats", timeout=10).read())
            slack = (late["lateness"].get("p50_ms") or 0.0) / 1000
            assert 0.050 - 0.001 <= ttft <= 0.050 + 0.050 * 0.02 + 0.002 + slack, (api, ttft, slack)
            assert abs(tpot - 0.005) <= 0.005 * 0.02 + 0.002 + slack, (api, tpot, slack)
            urllib.request.urlopen(urllib.request.Request(f"{srv.url}/fmbench/stats/reset", method="POST"),
                                   timeout=10).read()


class OddClient(ScriptedClient):
    """Answers with values a sloppy client might produce: float counts, a non-numeric count."""

    async def complete(self, prompt: Prompt) -> Completion:
        self.n += 1
        if self.n == 1:
            return Completion(
                t_start=1.0,
                t_end=2.0,
                t_first_token=1.5,
                chunk_times=[1.5, 2.0],
                text="a b",
                input_tokens=3.0,
                output_tokens=2.0,
            )  # type: ignore[arg-type]
        return Completion(
            t_start=1.0, t_end=2.0, t_first_token=1.5, text="a b", input_tokens=3, output_tokens="many"
        )  # type: ignore[arg-type]


def test_odd_completions_never_break_the_records_file(tmp_path: Path) -> None:
    res = run_shard(OddClient(), PROMPTS, spec(requests=2), tmp_path / "r.parquet", words)
    df = records(res).sort("request_id")
    assert df["ok"].to_list() == [True, False]
    assert df["output_tokens"][0] == 2 and df["tpot_s"][0] == pytest.approx(0.5)
    assert df["error_kind"][1] == "protocol" and "cannot record" in df["error"][1]


def test_two_processes_share_one_closed_loop_shard(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    c = 4
    fake_openai.reset()
    out = tmp_path / "r.parquet"
    res = run_shard(
        client(fake_openai, "ok:ttft=0.04:jit=0.06:tpot=0.001:n=4"),
        PROMPTS,
        spec(concurrency=c, requests=40, warmup=2, processes=2),
        out,
        len,  # count_tokens travels by pickle: a builtin does
    )
    df = records(res).sort("request_id")
    assert out.exists() and not list(tmp_path.glob("*.part-*")) and not partial_path(out).exists()
    assert df["request_id"].to_list() == list(range(42)) and df["ok"].all()
    assert df["warmup"].to_list() == [True] * 2 + [False] * 40
    assert (res.requests, res.warmup, res.errors) == (40, 2, 0)
    assert_warmups_done_first(df)
    assert fake_openai.stats()["max_active"] == c
    assert peak_in_flight(df) == c  # how long fewer were in flight depends on the host's load: `make bench` measures it
    assert res.client_cpu_s > 0


def test_two_processes_share_one_open_loop_schedule(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    res = run_shard(
        client(fake_openai, "ok:ttft=0.005:n=2"),
        PROMPTS,
        spec(request_rate=100.0, requests=100, seed=5, processes=2, max_send_lag_s=1.0, rate_shortfall=0.9),
        tmp_path / "r.parquet",
        len,
    )
    df = records(res).sort("request_id")
    assert df["request_id"].to_list() == list(range(100)) and df["ok"].all()
    assert res.valid, res.invalid_reason
    # Both processes' sends count in the shard's rates (one monotonic clock on one machine).
    assert res.achieved_rate == pytest.approx(99 / (df["t_start"].max() - df["t_start"].min()), rel=1e-9)
    assert res.scheduled_rate == pytest.approx(99 / (df["t_scheduled"].max() - df["t_scheduled"].min()), rel=1e-9)
    it = arrival_gaps(spec(request_rate=100.0, requests=100, seed=5))
    assert df["t_scheduled"].diff().drop_nulls().to_list() == pytest.approx(
        [next(it) for _ in range(99)], abs=1e-9
    )


def test_processes_need_a_picklable_client(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="picklable"):
        run_shard(
            ScriptedClient(), PROMPTS, spec(concurrency=2, processes=2), tmp_path / "r.parquet", lambda s: 1
        )


class InstantClient(ScriptedClient):
    """Answers at once (no HTTP): isolates the engine's own cost and memory."""

    async def complete(self, prompt: Prompt) -> Completion:
        await asyncio.sleep(0)
        t = time.monotonic()
        return Completion(
            t_start=t,
            t_end=t,
            t_first_token=t,
            chunk_times=[t] * 8,
            text="x",
            input_tokens=1,
            output_tokens=8,
        )


def test_memory_does_not_grow_with_requests(tmp_path: Path) -> None:
    run_shard(InstantClient(), PROMPTS, spec(concurrency=8, requests=100), tmp_path / "warm.parquet", words)
    tracemalloc.start()
    try:
        res = run_shard(
            InstantClient(), PROMPTS, spec(concurrency=8, requests=30_000), tmp_path / "r.parquet", words
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.requests == 30_000 and records(res).height == 30_000
    # holding 30,000 records would take ~15 MB; streaming them to disk peaks near 1 MB
    assert peak < 5e6, f"peak {peak / 1e6:.1f} MB"


def test_non_streaming_records_latency_as_ttft_and_no_tpot(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    res = run_shard(
        client(fake_openai, "ok:ttft=0.01:n=5", stream=False),
        PROMPTS,
        spec(requests=3),
        tmp_path / "r.parquet",
        words,
    )
    df = records(res)
    assert df["ok"].all() and (df["output_tokens"] == 5).all()
    assert (df["ttft_s"] == df["latency_s"]).all() and df["tpot_s"].null_count() == 3
    assert (df["chunks"] == 0).all() and (df["itl_s"].list.len() == 0).all()


@pytest.mark.parametrize("processes", [1, 2])
def test_progress_is_reported_while_the_shard_runs(fake_openai: FakeOpenAI, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, processes: int) -> None:
    from fmbench.loadgen import engine, multiproc

    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.1)
    monkeypatch.setattr(multiproc, "PROGRESS_EVERY_S", 0.1)
    calls: list[tuple[int, int, int]] = []
    ttfts: list[float | None] = []

    def progress(done: int, total: int, errors: int, ttft: float | None) -> None:
        calls.append((done, total, errors))
        ttfts.append(ttft)

    res = run_shard(client(fake_openai, "ok:ttft=0.04:tpot=0.001:n=4"), PROMPTS,
                    spec(concurrency=2, requests=40, warmup=2, processes=processes), tmp_path / "r.parquet",
                    len, progress=progress)
    assert res.requests == 40
    assert len(calls) >= 3, calls  # the shard takes about a second
    done = [c[0] for c in calls]
    assert done == sorted(done) and 0 < done[-1] <= 42 and done[0] < 42
    assert {c[1] for c in calls} == {42} and {c[2] for c in calls} == {0}
    # the current TTFT median is there once requests have finished, and at least the server's 40 ms
    assert ttfts[-1] is not None and ttfts[-1] >= 0.04


@pytest.mark.parametrize("stream", [True, False])
def test_t_start_is_when_the_request_left_not_when_aiohttp_began_preparing_it(fake_openai: FakeOpenAI,
                                                                             stream: bool) -> None:
    """Each request's t_start lies between the call and the server's arrival stamp, after the
    client's own preparation (so that time is not counted as the endpoint's)."""
    fake_openai.reset()

    async def go() -> list[tuple[float, float]]:
        c = client(fake_openai, "ok:ttft=0.005:tpot=0.001:n=3", stream=stream)
        await c.open(1)
        out = []
        try:
            for _ in range(20):
                await asyncio.sleep(0.01)  # idle between requests, as at low load
                before = time.monotonic()
                comp = await c.complete(PROMPTS[0])
                out.append((before, comp.t_start))
        finally:
            await c.close()
        return out

    calls = asyncio.run(go())
    arrivals = [a for a, _ in fake_openai.stats()["arrivals"]]
    assert len(arrivals) == len(calls) == 20
    for (before, t_start), arrival in zip(calls, arrivals, strict=True):
        assert before < t_start <= arrival
    # the stamp is not the fallback taken before the session call
    assert statistics.median(t - b for b, t in calls) > 0.00002


def test_open_loop_shortfall_behind_a_max_concurrency_cap_names_the_cap(tmp_path: Path) -> None:
    """A shard whose requests waited for a max_concurrency slot fell short because of the cap (one
    request in flight, ~30 ms each, cannot send 200 a second): the reason says so, not that the
    client could not keep up; a cap the load never reaches leaves the shard valid, with no waits."""
    from fmbench.simulator.process import SimulatedServerProcess

    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=20.0, tpot_ms=5.0, output_tokens=2, max_batch=8)
    with SimulatedServerProcess(cfg) as srv:
        assert srv.url
        c = make_client(cfg, InferenceConfig(max_tokens=2), url=srv.url)
        capped = run_shard(c, PROMPTS, spec(request_rate=200.0, arrival="constant", max_concurrency=1, requests=30,
                                            warmup=2), tmp_path / "capped.parquet", words)
        c = make_client(cfg, InferenceConfig(max_tokens=2), url=srv.url)
        roomy = run_shard(c, PROMPTS, spec(request_rate=10.0, arrival="constant", max_concurrency=4, requests=15,
                                           max_send_lag_s=1.0, rate_shortfall=0.5), tmp_path / "roomy.parquet", words)
    assert not capped.valid and capped.invalid_reason
    assert 25 <= capped.slot_waits <= 30  # warm-ups that waited are not counted
    assert (f"{capped.slot_waits} of 30 requests waited for one of the max_concurrency=1 slots: the cap, not the "
            "client, held the rate back") in capped.invalid_reason
    assert "the client could not keep up" not in capped.invalid_reason
    # behind the cap the queue grew for the whole shard: the endpoint, one request at a time, was overloaded
    assert capped.overloaded and capped.completion_rate is not None and capped.completion_rate < 0.5
    assert roomy.valid, roomy.invalid_reason  # (lenient limits: a busy CI machine stalls the client)
    assert roomy.slot_waits == 0 and not roomy.overloaded
    # a result file written before slot waits were counted still loads
    old = capped.model_dump(exclude={"slot_waits", "path"})
    assert ShardResult.model_validate(old).slot_waits == 0
