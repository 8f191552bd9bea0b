"""Inter-token latency, goodput and cost per 1M tokens: hand-computed records, then the simulated endpoint.

The simulated server's latency model is exact (`fmbench.simulator.model`): every gap
between chunks is ``tpot`` times the tokens the later chunk carries, and TTFT is ``ttft + prefill x
prompt tokens`` at concurrency 1. Measured times can only be later than the model's (the server
never sends early), so limits are set with a wide margin above the model's value, never below it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fmbench.config import InferenceConfig, SimulatedEndpoint, SimulatedFaults, parse_config
from fmbench.endpoints import make_client
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.metrics import recommend, summarize
from fmbench.protocol import Prompt
from fmbench.records import RequestRecord, records_frame
from fmbench.simulator.process import SimulatedServerProcess


def make_cfg(slo: dict[str, Any] | None = None, pricing: dict[str, Any] | None = None,
             names: tuple[str, ...] = ("exp",)) -> Any:
    return parse_config({
        "name": "t", "buckets": [[1, 500]], "datasets": [{"name": "d", "source": "synthetic"}],
        "experiments": [{"name": n, "endpoint": {"provider": "simulated"},
                         **({"pricing": pricing} if pricing else {})} for n in names],
        "slo": slo or {},
    })


def rec(i: int, *, ok: bool = True, ttft: float | None = 0.1, latency: float = 1.0, out: int = 10,
        itl: list[float] | None = None, chunks: int | None = None, inp: int = 100, warmup: bool = False,
        experiment: str = "exp", concurrency: int = 1) -> RequestRecord:
    start = float(i)
    return RequestRecord(
        experiment=experiment, dataset="d", bucket="1-500", bucket_min=1, bucket_max=500,
        concurrency=concurrency, shard_id=f"{experiment}-c{concurrency}", request_id=i, prompt_id=f"p{i}",
        warmup=warmup, ok=ok, error_kind=None if ok else "server_error", error=None if ok else "HTTP 500",
        input_tokens=inp, output_tokens=out if ok else None, t_scheduled=start, t_start=start,
        t_first_token=start + ttft if ok and ttft is not None else None, t_end=start + latency,
        ttft_s=ttft if ok else None, latency_s=latency if ok else None,
        tpot_s=(latency - ttft) / (out - 1) if ok and ttft is not None and out > 1 else None,
        itl_s=list(itl or []) if ok else [], chunks=(chunks if chunks is not None else len(itl or []) + 1) if ok else 0,
    )


def row(df: pl.DataFrame) -> dict[str, Any]:
    assert df.height == 1, df
    return df.row(0, named=True)


# ---------------------------------------------------------------- ITL, hand-computed


def test_itl_pools_every_gap_of_every_successful_request() -> None:
    records = [
        rec(0, itl=[0.01, 0.02, 0.03]),
        rec(1, itl=[0.04]),
        rec(2, itl=[0.05, 0.06]),
        rec(3, ok=False, itl=[9.0]),  # failed: its gaps never count
        rec(4, warmup=True, itl=[8.0]),  # warm-up: excluded
    ]
    m = row(summarize(records_frame(records), make_cfg()))
    # pooled gaps 0.01..0.06 (n=6): p50 h=2.5 -> 0.035; p90 h=4.5 -> 0.055; max 0.06
    assert m["itl_p50_s"] == pytest.approx(0.035)
    assert m["itl_p90_s"] == pytest.approx(0.055)
    assert m["itl_p99_s"] == pytest.approx(0.05 + 0.95 * 0.01)
    assert m["itl_max_s"] == pytest.approx(0.06)
    assert m["itl_gaps"] == 6
    # not the mean of per-request medians (0.02, 0.04, 0.055 -> 0.0383)
    assert m["itl_mean_s"] == pytest.approx(0.21 / 6)


def test_no_streamed_chunks_means_no_itl_and_one_token_adds_no_gap() -> None:
    non_streamed = [rec(i, ttft=None, itl=[], chunks=0) for i in range(3)]
    m = row(summarize(records_frame(non_streamed), make_cfg()))
    assert m["itl_p50_s"] is None and m["itl_max_s"] is None and m["tokens_per_chunk"] is None
    one_token = [rec(i, out=1, itl=[], chunks=1) for i in range(3)]
    m = row(summarize(records_frame(one_token), make_cfg()))
    assert m["itl_p50_s"] is None and m["successes"] == 3 and m["tpot_p50_s"] is None


def test_multi_token_chunks_are_one_gap_each_and_tokens_per_chunk_says_so() -> None:
    # 10 tokens in chunks of [1, 4, 4, 1]: 3 gaps spanning 9 tokens
    records = [rec(i, out=10, itl=[0.04, 0.04, 0.01], chunks=4) for i in range(4)]
    m = row(summarize(records_frame(records), make_cfg()))
    assert m["itl_p50_s"] == pytest.approx(0.04)
    assert m["itl_gaps"] == 12
    assert m["tokens_per_chunk"] == pytest.approx(3.0)


def test_itl_columns_are_null_when_records_have_no_itl_column() -> None:
    frame = records_frame([rec(0, itl=[0.01])]).drop("itl_s", "chunks")
    m = row(summarize(frame, make_cfg()))
    assert m["itl_p50_s"] is None and m["successes"] == 1


# ---------------------------------------------------------------- goodput, hand-computed


def test_goodput_counts_requests_meeting_every_per_request_slo() -> None:
    records = [
        rec(0, ttft=0.1, latency=1.0),  # good
        rec(1, ttft=0.3, latency=1.0),  # TTFT over 0.2
        rec(2, ttft=0.1, latency=2.5),  # latency over 2.0 (TPOT 2.4/9 = 0.267 over 0.2 too)
        rec(3, ttft=0.1, latency=1.9),  # TPOT 1.8/9 = 0.2 exactly: meets (limits are inclusive)
        rec(4, ok=False),  # failed: in the denominator only
        rec(5, ttft=None, latency=0.5, chunks=0),  # not streamed: no TTFT, fails the TTFT limit
    ]
    slo = {"ttft_s": 0.2, "tpot_s": 0.2, "latency_s": 2.0}
    m = row(summarize(records_frame(records), make_cfg(slo)))
    assert (m["requests"], m["good_requests"]) == (6, 2)
    assert m["goodput_share"] == pytest.approx(2 / 6)
    assert m["goodput_per_s"] == pytest.approx(2 / m["duration_s"])
    # goodput never changes the shard's p95 verdict (only error rate is set: one failure fails it)
    assert m["meets_slo"] is False and "error rate" in m["slo_failures"]


def test_one_token_answers_meet_the_tpot_limit_and_unset_limits_mean_no_goodput() -> None:
    records = [rec(i, out=1, itl=[], chunks=1, ttft=0.1, latency=0.1) for i in range(3)]
    m = row(summarize(records_frame(records), make_cfg({"tpot_s": 0.01})))
    assert m["good_requests"] == 3 and m["goodput_share"] == 1.0
    m = row(summarize(records_frame(records), make_cfg()))
    assert m["good_requests"] is None and m["goodput_share"] is None and m["goodput_per_s"] is None


# ---------------------------------------------------------------- cost per 1M tokens


def test_cost_per_1m_tokens_for_instance_and_token_pricing() -> None:
    # 10 requests (8 ok) over 0.0 -> 10.0 s; 100 input, 10 output tokens each
    records = [rec(i, ok=i < 8, inp=100, out=10, itl=[0.1] * 9) for i in range(10)]
    inst = row(summarize(records_frame(records), make_cfg(pricing={"hourly_usd": 36.0})))
    cost = 36.0 * 10.0 / 3600  # 0.1
    assert inst["shard_cost_usd"] == pytest.approx(cost)
    assert inst["cost_per_1m_input_tokens"] == pytest.approx(cost / 800 * 1e6)
    assert inst["cost_per_1m_output_tokens"] == pytest.approx(cost / 80 * 1e6)
    assert inst["cost_per_1m_total_tokens"] == pytest.approx(cost / 880 * 1e6)
    assert inst["cost_per_10k_good"] is None  # no per-request SLO: goodput unknown
    tok = row(summarize(records_frame(records),
                        make_cfg({"latency_s": 5.0}, {"input_per_1k_usd": 0.003, "output_per_1k_usd": 0.015})))
    cost = 800 / 1000 * 0.003 + 80 / 1000 * 0.015
    assert tok["shard_cost_usd"] == pytest.approx(cost)
    assert tok["cost_per_1m_input_tokens"] == pytest.approx(cost / 800 * 1e6)
    assert tok["cost_per_1m_total_tokens"] == pytest.approx(cost / 880 * 1e6)
    assert tok["cost_per_10k_good"] == pytest.approx(cost / 8 * 10_000)


def test_recommendation_ranks_by_goodput_per_dollar_when_per_request_slos_are_set() -> None:
    # "many": more transactions but most of them late; "few": fewer, all on time.
    records = [rec(i, experiment="many", ttft=0.5 if i % 4 else 0.1, latency=1.0) for i in range(20)]
    records += [rec(i, experiment="few", ttft=0.1, latency=1.0) for i in range(10)]
    for r in records[20:]:
        r.t_scheduled = r.t_start = 2.0 * r.request_id  # half the rate of "many"
        r.t_first_token = r.t_start + 0.1
        r.t_end = r.t_start + 1.0
    cfg = parse_config({
        "name": "t", "buckets": [[1, 500]], "datasets": [{"name": "d", "source": "synthetic"}],
        "experiments": [{"name": n, "endpoint": {"provider": "simulated"}, "pricing": {"hourly_usd": 1.0}}
                        for n in ("many", "few")],
        "slo": {"ttft_s": 0.2, "max_error_rate": 0.0},
    })
    m = summarize(records_frame(records), cfg)
    many = row(m.filter(pl.col("experiment") == "many"))
    few = row(m.filter(pl.col("experiment") == "few"))
    assert many["cost_per_10k_txn"] < few["cost_per_10k_txn"]  # per transaction "many" is cheaper ...
    assert many["cost_per_10k_good"] > few["cost_per_10k_good"]  # ... per good request it is not
    (r,) = recommend(m, cfg.slo)
    assert r.lowest_cost is not None and r.lowest_cost.experiment == "few"
    assert "goodput per dollar" in r.reasoning and "100% of requests within the per-request SLOs" in r.reasoning
    # without per-request SLOs the same shards rank by cost per transaction
    plain = cfg.slo.model_copy(update={"ttft_s": None})
    (r2,) = recommend(summarize(records_frame(records), cfg.model_copy(update={"slo": plain})), plain)
    assert r2.lowest_cost is not None and r2.lowest_cost.experiment == "many"


def test_when_no_request_meets_the_per_request_slos_the_choice_is_by_cost_per_transaction() -> None:
    # Goodput is 0 everywhere: it decides nothing, and a configuration with less throughput at a
    # higher cost must not be chosen "with the most goodput" for coming first.
    records = [rec(i, experiment="slow", ttft=0.5, latency=1.0) for i in range(10)]
    records += [rec(i, experiment="fast", ttft=0.5, latency=1.0) for i in range(20)]
    for r in records[:10]:  # half the rate of "fast"
        r.t_scheduled = r.t_start = 2.0 * r.request_id
        r.t_first_token = r.t_start + 0.5
        r.t_end = r.t_start + 1.0
    cfg = parse_config({
        "name": "t", "buckets": [[1, 500]], "datasets": [{"name": "d", "source": "synthetic"}],
        "experiments": [{"name": n, "endpoint": {"provider": "simulated"}, "pricing": {"hourly_usd": 1.0}}
                        for n in ("slow", "fast")],
        "slo": {"ttft_s": 0.2, "max_error_rate": 0.0},
    })
    m = summarize(records_frame(records), cfg)
    assert m["goodput_per_s"].fill_null(0.0).max() == 0.0
    (r,) = recommend(m, cfg.slo)
    assert r.lowest_cost is not None and r.lowest_cost.experiment == "fast"
    assert r.highest_throughput is not None and r.highest_throughput.experiment == "fast"
    assert "most goodput" not in r.reasoning
    assert "No configuration served any request within the per-request SLOs" in r.reasoning


# ---------------------------------------------------------------- against the simulated endpoint


def _spec(**kw: Any) -> ShardSpec:
    base: dict[str, Any] = {"shard_id": "s1", "experiment": "exp", "dataset": "d", "bucket": "1-500",
                            "bucket_min": 1, "bucket_max": 500, "requests": 12, "warmup": 1}
    return ShardSpec(**{**base, **kw})


PROMPTS = [Prompt("short", "Say hi.", 3), Prompt("long", " ".join(["benchmark"] * 120), 120)]


def _run(tmp_path: Path, name: str, endpoint: SimulatedEndpoint, url: str, inference: InferenceConfig,
         prompts: list[Prompt] | None = None, **spec: Any) -> pl.DataFrame:
    client = make_client(endpoint, inference, url=url)
    res = run_shard(client, prompts or PROMPTS, _spec(**spec), tmp_path / f"{name}.parquet",
                    lambda text: len(text.split()))
    return pl.read_parquet(res.records_path)


def test_itl_is_the_configured_per_token_time_and_multi_token_chunks_multiply_it(tmp_path: Path) -> None:
    tpot = 0.005
    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=20.0, tpot_ms=tpot * 1000, output_tokens=10, max_batch=4)
    multi = cfg.model_copy(update={"chunk_tokens": 4})
    inf = InferenceConfig(max_tokens=10)
    # A chunk sent or read late shortens the next gap as much as it lengthens its own, so the mean
    # gap (a request's first-to-last chunk time over its gaps) is what load cannot move; the median
    # must still say which gap length is typical.
    for endpoint, median_tokens, per_chunk in ((cfg, 1, 1.0), (multi, 4, 3.0)):
        with SimulatedServerProcess(endpoint) as srv:
            assert srv.url
            df = _run(tmp_path, f"c{endpoint.chunk_tokens}", endpoint, srv.url, inf)
        m = row(summarize(df, make_cfg()))
        assert m["successes"] == 12
        assert m["tokens_per_chunk"] == pytest.approx(per_chunk)
        assert m["itl_gaps"] == 12 * (9 if endpoint.chunk_tokens == 1 else 3)
        mean = per_chunk * tpot  # chunks [1, 4, 4, 1]: gaps of 4, 4 and 1 tokens, 3 tokens on average
        assert abs(m["itl_mean_s"] - mean) <= mean * 0.1 + 0.002, (endpoint.chunk_tokens, m["itl_mean_s"])
        # the median gap says which chunking this is: nearer `median_tokens` token times than the other
        # endpoint's (1 vs 4; the boundary is 2.5). A tighter bound would test the machine's load: a chunk
        # read late shortens the next gap as much as it lengthens its own, which moves a median.
        assert abs(m["itl_p50_s"] / tpot - median_tokens) < 1.5, m["itl_p50_s"]
        assert m["itl_max_s"] >= m["itl_p99_s"] >= m["itl_p50_s"]


def test_non_streamed_and_one_token_requests_against_the_simulator(tmp_path: Path) -> None:
    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=10.0, tpot_ms=2.0, output_tokens=8)
    with SimulatedServerProcess(cfg) as srv:
        assert srv.url
        plain = _run(tmp_path, "plain", cfg, srv.url, InferenceConfig(max_tokens=8, stream=False), requests=4)
        one = _run(tmp_path, "one", cfg, srv.url, InferenceConfig(max_tokens=1), requests=4)
        one_plain = _run(tmp_path, "one-plain", cfg, srv.url, InferenceConfig(max_tokens=1, stream=False), requests=4)
    m = row(summarize(plain, make_cfg({"ttft_s": 5.0})))
    assert m["successes"] == 4 and m["itl_p50_s"] is None and m["itl_gaps"] is None
    # not streamed: the first token arrives with the last, so TTFT is the whole latency and is judged so
    assert (plain["ttft_s"] == plain["latency_s"]).all() and m["good_requests"] == 4
    assert row(summarize(plain, make_cfg({"ttft_s": 0.012})))["good_requests"] == 0  # latency >= 10 + 7 x 2 ms
    m = row(summarize(one, make_cfg({"tpot_s": 0.001, "ttft_s": 5.0})))
    assert m["output_tokens_mean"] == 1 and m["itl_p50_s"] is None
    assert m["good_requests"] == 4  # a single token has no decode step to be slow at
    # ... when it was streamed: not streamed, its TPOT is unknown (not measured), and fails the limit
    m = row(summarize(one_plain, make_cfg({"tpot_s": 0.001, "ttft_s": 5.0})))
    assert m["successes"] == 4 and m["output_tokens_mean"] == 1 and m["good_requests"] == 0


def test_goodput_is_the_share_the_latency_model_puts_under_each_slo(tmp_path: Path) -> None:
    # TTFT = 20 ms + 3 ms x prompt tokens: a few tokens -> ~30 ms, 120+ tokens -> 380 ms and more.
    # The 0.2 s limit sits far from both; failed requests (HTTP 500) stay in the denominator.
    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=20.0, prefill_ms_per_token=3.0, tpot_ms=2.0,
                            output_tokens=6, faults=SimulatedFaults(seed=3, http_500_rate=0.25))
    with SimulatedServerProcess(cfg) as srv:
        assert srv.url
        df = _run(tmp_path, "goodput", cfg, srv.url, InferenceConfig(max_tokens=6), requests=16)
    measured = df.filter(~pl.col("warmup"))
    ok = measured.filter(pl.col("ok"))
    model_ttft = 0.020 + 0.003 * ok["input_tokens"]  # the server's own prompt-token count
    expected_good = int((model_ttft <= 0.2).sum())
    failed = measured.height - ok.height
    assert failed > 0 and 0 < expected_good < ok.height  # the case is not degenerate
    slo = {"ttft_s": 0.2, "tpot_s": 0.05, "latency_s": 1.0, "max_error_rate": 1.0}
    m = row(summarize(df, make_cfg(slo)))
    assert m["requests"] == 16
    assert m["good_requests"] == expected_good
    assert m["goodput_share"] == pytest.approx(expected_good / 16)
    assert m["goodput_per_s"] == pytest.approx(expected_good / m["duration_s"])
