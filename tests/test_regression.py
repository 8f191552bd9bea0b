"""fmbench.regression on run directories built from generated per-request records (no Prefect)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fmbench import regression, storage
from fmbench.config import load_config
from fmbench.metrics import summarize
from fmbench.records import REQUEST_SCHEMA

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "nightly-sim.yml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG)


def _records(cfg, *, ttft=0.05, latency=0.2, errors=0.0, n=200, seed=0, sigma=0.2) -> pl.DataFrame:
    """Per-request rows for every shard of the config: lognormal TTFT/latency, some failures."""
    rng = np.random.default_rng(seed)
    rows = []
    exp = cfg.experiments[0]
    for lo, hi in cfg.buckets:
        for c in exp.concurrency_levels:
            sid = f"{exp.name}__synthetic__{lo}-{hi}__c{c}"
            t = 1000.0
            for i in range(n + 2):
                warm = i < 2
                ok = bool(rng.random() >= errors) or warm
                tt = float(ttft * rng.lognormal(0, sigma))
                lat = float(latency * rng.lognormal(0, sigma))
                rows.append({
                    "experiment": exp.name, "dataset": "synthetic", "bucket": f"{lo}-{hi}", "bucket_min": lo,
                    "bucket_max": hi, "concurrency": c, "request_rate": None, "shard_id": sid, "request_id": i,
                    "prompt_id": f"p{i}", "attempt": 1, "warmup": warm, "ok": ok,
                    "error_kind": None if ok else "server_error", "error": None if ok else "HTTP 500",
                    "http_status": 200 if ok else 500, "input_tokens": lo + 10, "output_tokens": 16 if ok else None,
                    "usage_source": "server", "t_scheduled": t, "t_start": t,
                    "t_first_token": t + tt if ok else None, "t_end": t + lat, "send_lag_s": 0.0,
                    "ttft_s": tt if ok else None, "latency_s": lat if ok else None,
                    "tpot_s": (lat - tt) / 15 if ok else None, "itl_s": [], "chunks": 16 if ok else 0,
                })
                t += lat / c
    return pl.DataFrame(rows, schema=REQUEST_SCHEMA)


def _make_run(root: Path | str, cfg, run_id: str, records: pl.DataFrame, *, ended: bool = True,
              config_hash: str | None = None, manifest_shards: list[dict] | None = None) -> str:
    url = storage.join(str(root), cfg.name, run_id)
    storage.write_parquet(storage.join(url, "requests.parquet"), records)
    shards = [{"shard_id": s, "status": "ok", "valid": True} for s in records["shard_id"].unique().to_list()]
    storage.write_parquet(storage.join(url, "metrics.parquet"), summarize(records, cfg, shards=shards))
    manifest = {"name": cfg.name, "run_id": run_id, "config_hash": config_hash or cfg.config_hash(),
                "started_at": "2026-01-01T00:00:00+00:00",
                "ended_at": "2026-01-01T00:01:00+00:00" if ended else None, "shards": manifest_shards or []}
    storage.write_text(storage.join(url, "manifest.json"), json.dumps(manifest))
    return url


def test_first_run_says_there_is_nothing_to_compare(tmp_path, cfg):
    url = _make_run(tmp_path, cfg, "20260101-020000-aaaa", _records(cfg))
    report = regression.check_regressions(url, plots=False)
    assert report.status == "no-previous"
    assert "No previous successful run of `nightly-sim`" in Path(url, "regression.md").read_text()
    assert json.loads(Path(url, "regression.json").read_text())["status"] == "no-previous"


def test_previous_run_skips_unfinished_and_later_runs(tmp_path, cfg):
    recs = _records(cfg)
    first = _make_run(tmp_path, cfg, "20260101-020000-aaaa", recs)
    _make_run(tmp_path, cfg, "20260102-020000-bbbb", recs, ended=False)  # crashed run: no ended_at
    Path(tmp_path, cfg.name, "20260102-030000-cccc").mkdir()  # no manifest at all
    current = _make_run(tmp_path, cfg, "20260103-020000-dddd", recs)
    _make_run(tmp_path, cfg, "20260104-020000-eeee", recs)  # later than current: never "previous"
    assert regression.find_previous_run(current) == first
    assert regression.find_previous_run(first) is None


def test_same_distribution_is_not_a_regression(tmp_path, cfg):
    _make_run(tmp_path, cfg, "20260101-020000-aaaa", _records(cfg, seed=1))
    url = _make_run(tmp_path, cfg, "20260102-020000-bbbb", _records(cfg, seed=2))
    report = regression.check_regressions(url, plots=False)
    assert report.status == "ok", report.summary()
    assert report.compared_shards == 4
    md = Path(url, "regression.md").read_text()
    assert md.startswith("## Changes since 20260101-020000-aaaa")
    assert "**No regression.**" in md


def test_slower_ttft_is_flagged_beyond_noise(tmp_path, cfg):
    _make_run(tmp_path, cfg, "20260101-020000-aaaa", _records(cfg, ttft=0.05, seed=1))
    url = _make_run(tmp_path, cfg, "20260102-020000-bbbb", _records(cfg, ttft=0.08, seed=2),
                    config_hash="changed")
    report = regression.check_regressions(url, plots=False)
    assert report.status == "regressed"
    ttft = [c for c in report.regressions if c.metric == "ttft_p95_s"]
    assert len(ttft) == 4  # every shard
    for c in ttft:
        assert c.change is not None and 0.3 < c.change < 0.9
        assert c.significant is True and c.ci_low is not None and c.ci_low > 0
    assert not [c for c in report.regressions if c.metric == "latency_p95_s"]
    assert report.config_changed
    md = Path(url, "regression.md").read_text()
    assert "p95 TTFT" in md and "CI of difference" in md and "config changed" in md
    assert "regression(s)" in report.summary()


def test_a_change_on_a_shard_measured_under_a_late_simulator_or_saturated_client_is_not_a_regression(tmp_path, cfg):
    """A busy machine is not a slower endpoint: where either run's shard was flagged (the simulated
    endpoint's own stamps say it was late, or the shard is invalid), the change is listed as not
    counted, with the reason, and does not fail a nightly run."""
    _make_run(tmp_path, cfg, "20260101-020000-aaaa", _records(cfg, ttft=0.05, seed=1))
    recs = _records(cfg, ttft=0.08, seed=2)
    shards = sorted(recs["shard_id"].unique().to_list())
    flagged = []
    for sid, flag in zip(shards, ("late", "invalid", "slightly late")):
        row = recs.filter(pl.col("shard_id") == sid).row(0, named=True)
        entry = {k: row[k] for k in ("experiment", "dataset", "bucket", "concurrency", "request_rate")}
        entry |= {"shard_id": sid, "status": "ok"}
        if flag == "invalid":
            entry |= {"valid": False, "invalid_reason": "client saturated"}
        else:  # late by more than the 30 ms TTFT change, or by far less (which cannot explain it)
            entry |= {"valid": True, "simulator": {"late": True, "saturated": False,
                                                   "lateness_p99_ms": 200.0 if flag == "late" else 1.0,
                                                   "verdict": f"simulator late or saturated: {flag}"}}
        flagged.append(entry)
    url = _make_run(tmp_path, cfg, "20260102-020000-bbbb", recs, manifest_shards=flagged)
    report = regression.check_regressions(url, plots=False)
    ttft = {c.shard: c for c in report.changes if c.metric == "ttft_p95_s"}
    labels = {c.shard for c in ttft.values() if c.caveat}
    assert len(labels) == 2
    assert all(not ttft[label].regression and ttft[label].beyond_threshold for label in labels)
    assert {c.shard for c in report.regressions if c.metric == "ttft_p95_s"} == set(ttft) - labels
    assert {c.shard for c in report.untrusted if c.metric == "ttft_p95_s"} == labels
    assert "not counted" in report.summary()
    md = Path(url, "regression.md").read_text()
    assert "Not counted (" in md and "simulator late or saturated: late" in md
    assert "slightly late" not in md  # 1 ms late does not explain a 30 ms slower TTFT: still a regression
    assert ttft[shard_label_of(flagged[2])].regression
    assert "invalid: client saturated" in md
    # Only flagged shards: the run did not regress.
    _make_run(tmp_path, cfg, "20260103-020000-cccc", _records(cfg, ttft=0.05, seed=1))
    all_flagged = [{**flagged[0], "shard_id": sid, **{k: r[k] for k in ("experiment", "dataset", "bucket",
                                                                          "concurrency", "request_rate")}}
                   for sid in shards for r in [recs.filter(pl.col("shard_id") == sid).row(0, named=True)]]
    url = _make_run(tmp_path, cfg, "20260104-020000-dddd", _records(cfg, ttft=0.08, seed=2),
                    manifest_shards=all_flagged)
    report = regression.check_regressions(url, plots=False)
    assert report.status == "ok" and not report.regressions and report.untrusted, report.summary()


def shard_label_of(entry: dict) -> str:
    return f"{entry['experiment']} / {entry['dataset']} / {entry['bucket']} / c{entry['concurrency']}"


def test_small_noisy_shift_is_reported_as_within_noise(tmp_path, cfg):
    # 8 very noisy requests per shard and a 15% shift: p95 moves beyond the 10% threshold on
    # some shards, but the bootstrap interval of the difference still includes zero there.
    _make_run(tmp_path, cfg, "20260101-020000-aaaa", _records(cfg, latency=0.2, n=8, seed=3, sigma=0.5))
    url = _make_run(tmp_path, cfg, "20260102-020000-bbbb", _records(cfg, latency=0.23, n=8, seed=4, sigma=0.5))
    report = regression.check_regressions(url, plots=False)
    noisy = [c for c in report.changes if c.metric == "latency_p95_s" and c.beyond_threshold
             and c.significant is False]
    assert noisy, "expected a shard beyond the threshold yet within noise"
    assert not any(c.regression for c in noisy)
    assert all(c.ci_low is not None and c.ci_low < 0 < c.ci_high for c in noisy)
    assert "within run-to-run noise" in Path(url, "regression.md").read_text()


def test_error_rate_and_throughput(tmp_path, cfg):
    _make_run(tmp_path, cfg, "20260101-020000-aaaa", _records(cfg, latency=0.2, seed=1))
    url = _make_run(tmp_path, cfg, "20260102-020000-bbbb", _records(cfg, latency=0.3, errors=0.2, seed=2))
    report = regression.check_regressions(url, plots=False)
    metrics = {c.metric for c in report.regressions}
    assert {"error_rate", "transactions_per_min", "latency_p95_s"} <= metrics
    tput = [c for c in report.regressions if c.metric == "transactions_per_min"]
    assert len(tput) == 4 and all(c.significant is True and c.ci_high < 0 for c in tput)
    err = next(c for c in report.regressions if c.metric == "error_rate")
    assert err.previous == 0 and err.change is None and err.significant is True
    assert "from 0" in Path(url, "regression.md").read_text()


def test_thresholds_are_configurable(tmp_path, cfg):
    _make_run(tmp_path, cfg, "20260101-020000-aaaa", _records(cfg, ttft=0.05, seed=1))
    url = _make_run(tmp_path, cfg, "20260102-020000-bbbb", _records(cfg, ttft=0.08, seed=2))
    report = regression.check_regressions(url, regression.Thresholds.uniform(2.0), plots=False)
    assert report.status == "ok"
    assert all(c.threshold == 2.0 for c in report.changes)


def test_newly_failed_shard_is_a_regression(tmp_path, cfg):
    recs = _records(cfg, seed=1)
    _make_run(tmp_path, cfg, "20260101-020000-aaaa", recs)
    url = _make_run(tmp_path, cfg, "20260102-020000-bbbb", recs)
    metrics = pl.read_parquet(Path(url, "metrics.parquet"))
    metrics = metrics.with_columns(pl.when(pl.col("concurrency") == 4).then(pl.lit("failed"))
                                   .otherwise(pl.col("status")).alias("status"))
    storage.write_parquet(str(Path(url, "metrics.parquet")), metrics)
    report = regression.check_regressions(url, plots=False)
    assert report.status == "regressed" and len(report.newly_failed) == 2
    assert "failed now" in Path(url, "regression.md").read_text()


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(0, 0.3, 5000), rng.lognormal(0.1, 0.3, 5000)
    ci1 = regression.bootstrap_diff_ci(a, b, "p95", n_resamples=400, seed=5)
    ci2 = regression.bootstrap_diff_ci(a, b, "p95", n_resamples=400, seed=5)
    assert ci1 == ci2
    true_diff = np.quantile(b, 0.95) - np.quantile(a, 0.95)
    assert ci1[0] < true_diff < ci1[1] and ci1[0] > 0
    assert regression.bootstrap_diff_ci(a, b, "p95", n_resamples=400, seed=1) != ci1  # the seed matters
    assert all(np.isnan(regression.bootstrap_diff_ci(a[:0], b, "mean")))
    # a closed-loop rate (rows of time in flight, success): 10% longer mean latency -> about 10% less
    # throughput, beyond noise; the same share failing -> a third less; the same requests -> within noise
    ok = np.ones_like(a)
    flights = np.column_stack([a, ok])
    low, high = regression.bootstrap_rate_ci(flights, np.column_stack([a * 1.1, ok]), 600.0, seed=2)
    assert -70 < low < high < -40
    third = np.column_stack([a, (np.arange(a.size) % 3 != 0).astype(float)])
    low, high = regression.bootstrap_rate_ci(flights, third, 600.0, seed=2)
    assert -230 < low < -200 < high < -170
    low, high = regression.bootstrap_rate_ci(flights[:2500], flights[2500:], 600.0, seed=2)
    assert low < 0 < high
    none = np.column_stack([a, 0 * ok])  # every request failed: no rate left, for certain; none to start from
    assert regression.bootstrap_rate_ci(flights, none, 600.0) == (-600.0, -600.0)
    assert all(np.isnan(regression.bootstrap_rate_ci(none, flights, 600.0)))


@pytest.mark.integration  # Chromium (kaleido) renders the PNGs
def test_trend_plots_are_written(tmp_path, cfg):
    for day, ttft in enumerate([0.05, 0.05, 0.06], start=1):
        url = _make_run(tmp_path, cfg, f"2026010{day}-020000-aaaa", _records(cfg, ttft=ttft, n=50, seed=day))
    report = regression.check_regressions(url, trend_runs=3)
    assert report.plot_error is None, report.plot_error
    assert report.trend_runs == ["20260101-020000-aaaa", "20260102-020000-aaaa", "20260103-020000-aaaa"]
    for rel in regression.TREND_PLOTS.values():
        png = Path(url, rel)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![p95 latency trend](plots/trend_latency_p95.png)" in Path(url, "regression.md").read_text()


def test_works_on_s3(cfg, s3_bucket):
    root = f"{s3_bucket}/results"
    _make_run(root, cfg, "20260101-020000-aaaa", _records(cfg, ttft=0.05, n=50, seed=1))
    _make_run(root, cfg, "20260101-030000-bbbb", _records(cfg, n=50, seed=1), ended=False)
    url = _make_run(root, cfg, "20260102-020000-cccc", _records(cfg, ttft=0.1, n=50, seed=2))
    report = regression.check_regressions(url, plots=False)
    assert report.previous_run_id == "20260101-020000-aaaa"
    assert report.status == "regressed"
    assert storage.read_text(f"{url}/regression.md").startswith("## Changes since 20260101-020000-aaaa")
    assert regression.read_report(url).status == "regressed"


@pytest.fixture
def stalled_browser(tmp_path, monkeypatch) -> Path:
    """A "browser" that starts and never answers, and a PNG deadline of 2 s."""
    exe = tmp_path / "stalled-chromium"
    exe.write_text("#!/bin/sh\nwhile :; do sleep 1; done\n")
    exe.chmod(0o755)
    monkeypatch.setenv("BROWSER_PATH", str(exe))
    monkeypatch.setenv("FMBENCH_PNG_TIMEOUT_S", "2")
    return exe


def _alive(exe: Path) -> list:
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if str(exe) in " ".join(p.info["cmdline"] or [])]


def _trend_runs(tmp_path, cfg) -> str:
    for day, ttft in enumerate([0.05, 0.05, 0.06], start=1):
        url = _make_run(tmp_path, cfg, f"2026010{day}-020000-aaaa", _records(cfg, ttft=ttft, n=50, seed=day))
    return url


def test_trend_plots_past_the_png_deadline_cost_only_the_plots(tmp_path, cfg, stalled_browser):
    url = _trend_runs(tmp_path, cfg)
    report = regression.check_regressions(url, trend_runs=3)
    assert report.previous_run_id == "20260102-020000-aaaa" and report.changes  # the comparison is kept
    assert report.plots == [] and "did not finish within 2 s" in (report.plot_error or "")
    assert "Trend plots not rendered: TimeoutError: PNG export did not finish within 2 s" in \
        Path(url, "regression.md").read_text()
    assert not list(Path(url).glob("plots/trend_*.png"))
    assert not _alive(stalled_browser)  # the browser was killed with the export


def test_a_run_leaves_its_trend_plots_to_the_report_which_survives_a_stalled_browser(tmp_path, cfg,
                                                                                      stalled_browser):
    from fmbench.report import render_report

    url = _trend_runs(tmp_path, cfg)
    assert regression.check_regressions(url, trend_runs=3, plots=False).plot_error is None  # as a run does
    paths = render_report(url)  # one browser for the report's PNGs and the trend plots: it stalls
    assert paths.plots == [] and "did not finish within 2 s" in (paths.plots_missing_reason or "")
    report = regression.read_report(url)
    assert report is not None and report.plots == [] and "did not finish within 2 s" in (report.plot_error or "")
    md = Path(url, "report.md").read_text()
    assert "## Changes since 20260102-020000-aaaa" in md and "Trend plots not rendered: PNG export failed" in md
    assert not _alive(stalled_browser)


@pytest.mark.integration  # Chromium (kaleido) renders the PNGs
def test_the_report_renders_the_trend_plots_its_run_left(tmp_path, cfg):
    from fmbench.report import render_report

    url = _trend_runs(tmp_path, cfg)
    regression.check_regressions(url, trend_runs=3, plots=False)
    paths = render_report(url)
    assert paths.plots_missing_reason is None, paths.plots_missing_reason
    report = regression.read_report(url)
    assert report is not None and report.plot_error is None
    assert sorted(Path(p).name for p in report.plots) == sorted(Path(r).name for r in regression.TREND_PLOTS.values())
    for rel in regression.TREND_PLOTS.values():
        assert Path(url, rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for text in (Path(url, "regression.md").read_text(), Path(url, "report.md").read_text()):
        assert "![p95 latency trend](plots/trend_latency_p95.png)" in text
    assert "data:image/png;base64," in Path(url, "report.html").read_text()  # inlined in the HTML


def test_an_unreadable_earlier_run_costs_the_trend_plots_not_the_report(tmp_path, cfg, stalled_browser):
    from fmbench.report import render_report

    url = _trend_runs(tmp_path, cfg)
    regression.check_regressions(url, trend_runs=3, plots=False)
    Path(tmp_path, cfg.name, "20260101-020000-aaaa", "metrics.parquet").unlink()  # gone since the check
    render_report(url)
    report = regression.read_report(url)
    assert report is not None and report.plots == [] and "metrics.parquet" in (report.plot_error or "")
    assert "Trend plots not rendered: " in Path(url, "report.md").read_text()


def test_an_error_rate_change_is_judged_on_each_requests_final_attempt(tmp_path, cfg):
    """A request retried in its shard has a record per attempt, and the error rate counts its final
    outcome; so must the samples the change's noise is bootstrapped from. Failed attempts that were
    retried and then succeeded do not make a later run with more failed requests look better."""
    before = _records(cfg, errors=0.05, seed=1)
    retried = before.filter(pl.col("ok") & ~pl.col("warmup"))
    before = pl.concat([
        before.with_columns(attempt=pl.when(pl.col("ok") & ~pl.col("warmup")).then(2).otherwise(1)),
        retried.with_columns(attempt=pl.lit(1), ok=pl.lit(False), error_kind=pl.lit("throttled"),
                             ttft_s=None, latency_s=None, tpot_s=None, output_tokens=None),
    ]).cast(REQUEST_SCHEMA)
    _make_run(tmp_path, cfg, "20260101-020000-aaaa", before)
    url = _make_run(tmp_path, cfg, "20260102-020000-bbbb", _records(cfg, errors=0.2, seed=2))
    report = regression.check_regressions(url, plots=False)
    errors = [c for c in report.regressions if c.metric == "error_rate"]
    assert len(errors) == 4, report.regressions
    assert all(c.significant is True and c.ci_low > 0 and 0.03 < c.previous < 0.08 for c in errors), errors


def test_a_saturated_simulator_excuses_a_slower_latency_but_never_an_outage(tmp_path, cfg):
    """A simulator that was saturated (or late) only delays answers: it may account for a latency
    change of any size, but not for every request failing, nor for the throughput those failures
    took away. Those are regressions whatever the simulator's state."""
    _make_run(tmp_path, cfg, "20260101-020000-aaaa", _records(cfg, ttft=0.05, seed=1))
    recs = _records(cfg, ttft=0.08, seed=2)
    saturated = [{"shard_id": sid, "status": "ok", "valid": True,
                  **{k: row[k] for k in ("experiment", "dataset", "bucket", "concurrency", "request_rate")},
                  "simulator": {"late": False, "saturated": True, "lateness_p99_ms": 0.0, "cpu_util": 5.19,
                                "verdict": "simulator late or saturated: it used 519% of a CPU (saturated)"}}
                 for sid in sorted(recs["shard_id"].unique().to_list())
                 for row in [recs.filter(pl.col("shard_id") == sid).row(0, named=True)]]
    url = _make_run(tmp_path, cfg, "20260102-020000-bbbb", recs, manifest_shards=saturated)
    report = regression.check_regressions(url, plots=False)
    ttft = [c for c in report.changes if c.metric == "ttft_p95_s"]
    assert len(ttft) == 4 and all(c.caveat and not c.regression for c in ttft)
    assert report.status == "ok", report.summary()
    # the same saturated simulator, and every measured request failed
    url = _make_run(tmp_path, cfg, "20260103-020000-cccc", _records(cfg, errors=1.0, seed=3),
                    manifest_shards=saturated)
    report = regression.check_regressions(url, plots=False)
    assert report.status == "regressed", report.summary()
    for metric in ("error_rate", "transactions_per_min", "output_tokens_per_s"):
        changes = [c for c in report.changes if c.metric == metric]
        assert len(changes) == 4 and all(c.regression and c.caveat is None for c in changes), (metric, changes)
    md = Path(url, "regression.md").read_text()
    assert "| error rate | 0.0% | 100.0% |" in md and "Not counted" not in md, md
