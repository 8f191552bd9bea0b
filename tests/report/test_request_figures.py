"""Per-request report parts: timeline sampling, the ITL distribution and compare's deltas."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from fmbench.config import SLOConfig
from fmbench.metrics import percentile, summarize
from fmbench.records import RequestRecord, records_frame
from fmbench.report.deltas import delta_rows, run_deltas
from fmbench.report.request_figures import _STATES, itl_figure, timeline_figures
from fmbench.report.run import TIMELINE_SIZE, itl_distribution, request_sample, request_timelines
from tests.support.records import make_cfg


def _records(n: int, shard: str = "s", experiment: str = "exp", latency: float = 1.0, gap: float = 0.01,
             itl: float = 0.01, fail_every: int = 0) -> list[RequestRecord]:
    out = []
    for i in range(n):
        t = i * 0.5
        ok = not (fail_every and i % fail_every == 0)
        out.append(RequestRecord(
            experiment=experiment, dataset="d", bucket="1-500", bucket_min=1, bucket_max=500, concurrency=2,
            shard_id=shard, request_id=i, prompt_id="p", warmup=i < 2, ok=ok, input_tokens=10,
            output_tokens=11 if ok else None, t_scheduled=t, t_start=t + gap, t_first_token=t + 0.1 if ok else None,
            t_end=t + latency, ttft_s=0.1 if ok else None, latency_s=latency if ok else None,
            tpot_s=(latency - 0.1) / 10 if ok else None, itl_s=[itl * (1 + k / 100) for k in range(10)] if ok else [],
            chunks=11 if ok else 0, error_kind=None if ok else "timeout",
        ))
    return out


def test_large_shards_are_sampled_evenly_and_the_figure_says_so() -> None:
    big = _records(3 * TIMELINE_SIZE + 10, shard="big")
    small = _records(20, shard="small")
    spans = request_timelines(records_frame(big + small).lazy())
    assert spans is not None
    big_rows = spans.filter(pl.col("shard_id") == "big")
    assert big_rows.height <= TIMELINE_SIZE and big_rows["step"][0] == 4
    ids = big_rows["request_id"].to_list()
    assert ids[0] == 0 and ids[-1] >= 3 * TIMELINE_SIZE  # the whole shard is spanned, not its start
    assert spans.filter(pl.col("shard_id") == "small").height == 20  # small shards: every request
    (fig,) = timeline_figures(spans)
    assert "1 in 4 of 610 drawn" in " ".join(a["text"] for a in fig.figure["layout"]["annotations"])
    assert f"more than {TIMELINE_SIZE} requests are sampled" in fig.caption


def test_timeline_shows_each_state_and_failures() -> None:
    spans = request_timelines(records_frame(_records(12, fail_every=5)).lazy())
    (fig,) = timeline_figures(spans)
    names = {t["name"] for t in fig.figure["data"]}
    assert {"queued in the client (due → sent)", "waiting for the first token", "streaming (first → last token)",
            "failed (sent → error)"} == names
    assert "Every request is drawn" in fig.caption


def test_timeline_png_is_drawn_from_the_spans_without_a_browser(tmp_path: Path) -> None:
    big = _records(3 * TIMELINE_SIZE + 10, shard="big", fail_every=7)
    small = _records(20, shard="small", latency=0.001)  # spans far shorter than a pixel still show
    (fig,) = timeline_figures(request_timelines(records_frame(big + small).lazy()))
    assert fig.png is not None
    fig.png(tmp_path / "t.png")
    with Image.open(tmp_path / "t.png") as img:
        assert img.width == 1100
        colours = {f"#{r:02X}{g:02X}{b:02X}" for _, (r, g, b) in img.convert("RGB").getcolors(1 << 16)}
    assert {colour for colour, _ in _STATES.values()} <= colours  # queued, waiting, streaming, failed


def test_the_scatter_samples_each_request_once_by_its_final_attempt() -> None:
    records = _records(12, fail_every=4)  # requests 0, 4 and 8 failed for good
    # Requests 5 and 6 were throttled first and answered at their second attempt.
    retried = [dataclasses.replace(r, attempt=1, ok=False, error_kind="throttled", latency_s=None)
               for r in records if r.request_id in (5, 6)]
    again = [dataclasses.replace(r, attempt=2) if r.request_id in (5, 6) else r for r in records]
    frame = records_frame(retried + again).lazy()
    sample = request_sample(frame)
    assert sample is not None and sample.height == 10  # 12 requests, 2 of them warm-ups
    assert sample["ok"].sum() == 10 - 2  # requests 4 and 8 (0 is a warm-up)
    assert request_sample(frame, n=5).height == 5


def test_itl_distribution_is_exact_at_each_percentile() -> None:
    dist = itl_distribution(records_frame(_records(12)).lazy())
    assert dist is not None and dist.height == 101
    gaps = [0.01 * (1 + k / 100) for k in range(10)]
    assert dist.filter(pl.col("q") == 0)["itl_s"][0] == min(gaps)
    assert dist.filter(pl.col("q") == 100)["itl_s"][0] == max(gaps)
    pooled = gaps * 10
    for q in (37, 50, 95):
        assert dist.filter(pl.col("q") == q)["itl_s"][0] == pytest.approx(percentile(pooled, q / 100))
    assert dist["gaps"][0] == 10 * 10  # 12 requests, 2 warm-ups: 10 measured x 10 gaps
    fig = itl_figure(dist)
    assert fig is not None and fig.stem == "itl_distribution"
    assert itl_figure(None) is None


def test_deltas_mark_real_changes_and_noise() -> None:
    slo = SLOConfig(latency_p95_s=10.0, ttft_s=0.5)
    base = records_frame(_records(60, latency=1.0, itl=0.010))
    same = records_frame(_records(60, latency=1.0, itl=0.010))
    slower = records_frame(_records(60, latency=1.0, itl=0.020))
    runs = [("a", summarize(base, None), base.lazy()), ("b", summarize(same, None), same.lazy()),
            ("c", summarize(slower, None), slower.lazy())]
    deltas, unpaired = run_deltas(runs, slo)
    assert unpaired == []
    itl = {d.run: d for d in deltas if d.metric == "itl_p95_s"}
    assert itl["b/exp"].verdict == "unchanged"
    assert itl["c/exp"].verdict == "worse" and itl["c/exp"].ci is not None and itl["c/exp"].ci[0] > 0
    rows = delta_rows(deltas)
    assert any(r["Metric"] == "p95 ITL" and r["Verdict"] == "✘ worse" for r in rows)


def test_two_runs_of_one_deterministic_configuration_show_no_change() -> None:
    """An A/A comparison: a 0.1 % change is negligible however narrow its interval, and a shard of a
    few requests gives no noise estimate (its bootstrap would resample the same few values)."""
    base = records_frame(_records(60, latency=1.0))
    a_hair_slower = records_frame(_records(60, latency=1.001))
    slower = records_frame(_records(60, latency=1.1))
    deltas, _ = run_deltas([("a", summarize(base, None), base.lazy()),
                            ("b", summarize(a_hair_slower, None), a_hair_slower.lazy()),
                            ("c", summarize(slower, None), slower.lazy())], SLOConfig())
    lat = {d.run: d for d in deltas if d.metric == "latency_p95_s"}
    assert lat["b/exp"].verdict == "negligible" and lat["c/exp"].verdict == "worse"
    assert any(r["Verdict"] == "≈ negligible (< 1%)" for r in delta_rows(deltas))
    few, few_slower = records_frame(_records(6, latency=1.0)), records_frame(_records(6, latency=1.1))  # 4 measured
    [lat4] = [d for d in run_deltas([("a", summarize(few, None), few.lazy()),
                                     ("b", summarize(few_slower, None), few_slower.lazy())], SLOConfig())[0]
              if d.metric == "latency_p95_s"]
    assert lat4.ci is None and lat4.verdict == "no noise estimate"


def test_deltas_pair_two_stacks_by_load_when_each_run_has_one_experiment() -> None:
    vllm = records_frame(_records(40, experiment="vllm", latency=1.0))
    tgi = records_frame(_records(40, experiment="tgi", latency=2.0))
    deltas, unpaired = run_deltas([("a", summarize(vllm, None), vllm.lazy()), ("b", summarize(tgi, None), tgi.lazy())],
                                  SLOConfig())
    lat = next(d for d in deltas if d.metric == "latency_p95_s")
    assert (lat.baseline, lat.run, lat.verdict) == ("a/vllm", "b/tgi", "worse") and unpaired == []
    assert lat.change is not None and abs(lat.change - 1.0) < 1e-9


def test_a_run_with_no_counterpart_of_the_baseline_gets_a_line_saying_why_instead_of_deltas() -> None:
    base = records_frame(_records(20))
    paired = records_frame(_records(20, latency=2.0))
    two_others = records_frame(_records(20, experiment="x") + _records(20, experiment="y"))
    other_load = records_frame([dataclasses.replace(r, concurrency=8) for r in _records(20)])
    deltas, unpaired = run_deltas([(label, summarize(df, None), df.lazy()) for label, df in
                                   (("a", base), ("b", paired), ("c", two_others), ("d", other_load))], SLOConfig())
    assert deltas and {d.run for d in deltas} == {"b/exp"}
    [c, d] = unpaired
    assert c == ("No change of c against a is shown: their experiments differ (exp against x, y) and a run has "
                 "several, so no shard has a fair counterpart; compare runs of the same experiments, or of one "
                 "experiment each.")
    assert d == ("No change of d against a is shown: no shard of it was measured at a load (and for an "
                 "experiment) the first run measured too.")


def test_a_goodput_change_is_judged_on_each_requests_final_attempt() -> None:
    """A request retried in its shard has a record per attempt; goodput counts its final one, and so
    must the samples its change is judged on. 90 % good (each good request after one failed attempt)
    to 80 % good without retries is worse, not better."""
    cfg = make_cfg(slo={"ttft_s": 0.5})
    slo = cfg.slo

    def run(good: int, retried: int) -> pl.DataFrame:
        records = _records(102, latency=1.0)  # 2 warm-ups, 100 measured
        for r in records[2 + good:]:
            r.ttft_s = 0.9  # over the limit: not good
        for r in records[2:2 + retried]:  # succeeded at the second attempt
            r.attempt = 2
            records.append(dataclasses.replace(r, attempt=1, ok=False, error_kind="throttled", ttft_s=None,
                                               latency_s=None, output_tokens=None))
        return records_frame(records)

    before, after = run(90, retried=90), run(80, retried=0)
    deltas, _ = run_deltas([("a", summarize(before, cfg), before.lazy()), ("b", summarize(after, cfg), after.lazy())], slo)
    good = next(d for d in deltas if d.metric == "goodput_share")
    assert (good.before, good.after) == (pytest.approx(0.9), pytest.approx(0.8))
    assert good.ci is not None and good.ci[1] < 0 and good.verdict == "worse", good


def test_a_throughput_lost_to_failures_is_worse_not_noise() -> None:
    """Throughput and cost per transaction count successful requests: a run where a third of the
    requests fail (same latencies) has a third less throughput at half as much again per transaction,
    and the intervals the verdicts rest on must see the failures too."""
    cfg = make_cfg({"hourly_usd": 1.0}, slo={"latency_p95_s": 10.0})
    base = records_frame(_records(62))
    failing = records_frame(_records(62, fail_every=3))
    runs = [("a", summarize(base, cfg), base.lazy()), ("b", summarize(failing, cfg), failing.lazy())]
    deltas = {d.metric: d for d in run_deltas(runs, cfg.slo)[0]}
    for metric, change in (("transactions_per_min", -0.3), ("cost_per_10k_txn", 0.4)):
        d = deltas[metric]
        assert d.change is not None and abs(d.change) > abs(change) and (d.change > 0) == (change > 0), d
        assert d.ci is not None and d.ci[0] <= d.after - d.before <= d.ci[1], d
        assert d.verdict == "worse", d


def test_cost_changes_are_written_as_dollars_not_in_scientific_notation() -> None:
    from fmbench.report.deltas import Delta

    d = Delta(shard="d 1-500 c=2", baseline="a/exp", run="b/exp", metric="cost_per_10k_txn", label="cost per 10k txn",
              before=0.158, after=0.2369, ci=(-5.649e-05, 5.482e-05), verdict="within noise")
    [row] = delta_rows([d])
    assert (row["Before"], row["After"], row["95% CI of difference"]) == ("$0.16", "$0.24", "-$0.000056 … +$0.000055")


def test_a_retried_request_is_one_line_of_the_timeline_with_its_attempts_on_it() -> None:
    records = _records(12)
    # Request 5 was throttled twice and answered at its third attempt; every attempt is a record.
    first = [dataclasses.replace(r, attempt=a, ok=False, error_kind="throttled", t_start=r.t_start + 0.3 * (a - 1),
                                 t_first_token=None, t_end=r.t_start + 0.3 * (a - 1) + 0.1)
             for r in records if r.request_id == 5 for a in (1, 2)]
    final = [dataclasses.replace(r, attempt=3, t_start=r.t_start + 0.6, t_first_token=r.t_start + 0.7,
                                 t_end=r.t_start + 1.5) if r.request_id == 5 else r for r in records]
    spans = request_timelines(records_frame(final + first).lazy())
    assert spans is not None and spans["shard_requests"][0] == 12  # requests, not attempts
    assert spans.filter(pl.col("request_id") == 5)["attempt"].to_list() == [1, 2, 3]
    (fig,) = timeline_figures(spans)
    lines = {t["name"]: t for t in fig.figure["data"]}
    failed = [y for y in lines["failed (sent → error)"]["y"] if y is not None]
    assert set(failed) == {5}  # both failed attempts on request 5's row
    queued = lines["queued in the client (due → sent)"]
    on_row_5 = [x for x, y in zip(queued["x"], queued["y"], strict=True) if y == 5 and x is not None]
    t0 = records[0].t_scheduled
    # queued from its due time to its first send, then from each failed attempt's end to the next send
    starts = sorted(on_row_5[0::2])
    assert starts == pytest.approx([records[5].t_scheduled - t0, records[5].t_start + 0.1 - t0,
                                    records[5].t_start + 0.4 - t0])
    assert max(y for y in queued["y"] if y is not None) == 11  # 12 rows, one per request
    assert "attempts share its line" in fig.caption
    (plain,) = timeline_figures(request_timelines(records_frame(records).lazy()))
    assert "attempts share" not in plain.caption
