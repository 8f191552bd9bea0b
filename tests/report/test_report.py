"""The report: Markdown, self-contained HTML and PNG plots from a synthetic run directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from fmbench import storage
from fmbench.report import compare_runs, load_run, metrics_table_rows, render_report, summary_markdown
from tests.support.synth_runs import SimExperiment, write_run

FIGURES = ["latency_p95_vs_load", "ttft_p95_vs_load", "throughput_vs_load", "prompt_tokens_vs_latency",
           "error_rate_vs_load", "price_performance", "cost_per_10k_by_experiment", "itl_distribution",
           "timeline_sim-big", "timeline_sim-small"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    run = tmp_path_factory.mktemp("runs") / "synth-bench" / "20260101-000000-abcd"
    write_run(str(run))
    return run, render_report(str(run))


def test_report_files_metrics_and_pngs_are_written(rendered: tuple[Path, object]) -> None:
    run, paths = rendered
    for name in ("report.md", "report.html", "metrics.csv", "metrics.parquet"):
        assert (run / name).is_file(), name
    assert paths.plots_missing_reason is None
    assert sorted(Path(p).stem for p in paths.plots) == sorted(FIGURES)
    for stem in FIGURES:
        data = (run / "plots" / f"{stem}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, stem
    metrics = pl.read_parquet(run / "metrics.parquet")
    assert metrics.height == 12  # 2 experiments x 2 buckets x 3 levels, the failed shard included
    assert pl.read_csv(run / "metrics.csv").height == 12


def test_markdown_has_every_section_and_relative_images(rendered: tuple[Path, object]) -> None:
    run, _ = rendered
    md = (run / "report.md").read_text()
    for heading in ("# fmbench report: synth-bench", "## Summary", "## Results by prompt size", "## Plots",
                    "## Errors", "## Reproducibility"):
        assert heading in md
    for stem in FIGURES:
        assert f"](plots/{stem}.png)" in md
    # run table
    assert "| Run id | 20260101-000000-abcd |" in md and "| fmbench version | 0.1.0 |" in md
    assert "| Config hash |" in md and f"| Stored at | {run} |" in md
    # one recommendation sentence per bucket
    assert md.count("For prompts of ") == 2
    assert "For prompts of 1–500 tokens (dataset synth), sim-small (ml.g5.xlarge) at concurrency 4 meets every SLO" in md
    # per-bucket tables mark pass/fail, failed and invalid shards
    assert "✔ pass" in md and "✘ fail: p95 latency" in md
    assert "✖ sim-big c=8: EndpointConnectionError: connection refused" in md
    assert "⚠ sim-small c=8: client CPU saturated" in md
    # errors by kind, and reproducibility
    assert "| server_error |" in md and "HTTP 503: model overloaded" in md
    assert "fmbench run configs/synth-bench.yml --run-id 20260101-000000-abcd" in md
    assert "public on-demand list price as of" in md


def test_recommendation_matches_the_metrics(rendered: tuple[Path, object]) -> None:
    run, _ = rendered
    m = pl.read_parquet(run / "metrics.parquet").filter(pl.col("bucket") == "1-500")
    ok = m.filter(pl.col("meets_slo") & pl.col("valid") & pl.col("cost_per_10k_txn").is_not_null())
    cheapest = ok.sort("cost_per_10k_txn").row(0, named=True)
    md = (run / "report.md").read_text()
    line = next(ln for ln in md.splitlines() if "For prompts of 1–500" in ln)
    assert f"{cheapest['experiment']} (ml.g5.xlarge) at concurrency {cheapest['concurrency']}" in line
    assert f"${cheapest['cost_per_10k_txn']:,.2f} per 10k transactions" in line


def test_html_is_self_contained_and_renders_plots_offline(rendered: tuple[Path, object], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    run, _ = rendered
    html = (run / "report.html").read_text()
    # plotly.js is inlined: no external script, stylesheet or image is referenced
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?https?:", html)
    assert html.count("<script") >= len(FIGURES) + 1
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.fail("Chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    problems: list[str] = []
    urls: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: urls.append(r.url))
            page.goto((run / "report.html").as_uri(), wait_until="load")
            page.wait_for_function(
                f"document.querySelectorAll('.js-plotly-plot svg.main-svg').length >= {len(FIGURES)}",
                timeout=30_000)
            plotted = page.evaluate("Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => d.id)")
            points = page.evaluate("document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        finally:
            browser.close()
    assert sorted(plotted) == sorted(f"fig-{s}" for s in FIGURES)
    assert points > 50
    assert problems == []
    assert [u for u in urls if not u.startswith(("file://", "data:", "blob:", "about:"))] == []


def test_existing_metrics_are_reused(rendered: tuple[Path, object]) -> None:
    run, _ = rendered
    data = load_run(str(run))
    assert data.metrics_computed is False and data.metrics.height == 12


def test_report_pngs_are_drawn_without_a_browser(tmp_path: Path, no_png: None) -> None:
    # Pillow draws every PNG of a run without endpoint timelines, answer quality or trend plots.
    run = tmp_path / "run"
    write_run(str(run))
    paths = render_report(str(run))
    assert paths.plots_missing_reason is None, paths.plots_missing_reason
    assert sorted(Path(p).stem for p in paths.plots) == sorted(FIGURES)
    for stem in FIGURES:
        assert (run / "plots" / f"{stem}.png").read_bytes().startswith(PNG_MAGIC), stem


def test_a_report_without_pngs_does_not_describe_them(tmp_path: Path, no_png: None) -> None:
    # Rendered with PNGs, then again with --no-png: the captions say how a PNG was drawn only in the first.
    run = tmp_path / "run"
    write_run(str(run))
    render_report(str(run))
    with_pngs = (run / "report.md").read_text()
    assert "](plots/" in with_pngs and "The PNG is drawn from the same numbers with Pillow" in with_pngs
    paths = render_report(str(run), png=False)
    assert paths.plots == []
    for name in ("report.md", "report.html"):
        text = (run / name).read_text()
        assert "PNG export skipped (--no-png)" in text and "The PNG is drawn" not in text, name
    assert "](plots/" not in (run / "report.md").read_text()


def test_missing_png_export_still_renders_and_says_why(tmp_path: Path, no_png: None) -> None:
    run = tmp_path / "run"
    write_run(str(run))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["endpoints"] = {"sim-big": {  # an endpoint timeline: a figure only the browser draws
        "experiment": "sim-big", "provider": "sagemaker", "endpoint_name": "fmbench-big-1",
        "created_at": "2026-01-01T00:00:00+00:00", "in_service_at": "2026-01-01T00:05:00+00:00",
        "deleted_at": "2026-01-01T01:00:00+00:00"}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    paths = render_report(str(run))
    assert paths.plots == [] and "ChromeNotFoundError: No browser found" in (paths.plots_missing_reason or "")
    md = (run / "report.md").read_text()
    assert "Plots are missing from this Markdown report: PNG export failed (RuntimeError" in md
    assert "](plots/" not in md
    html = (run / "report.html").read_text()
    assert "Static PNG plots are missing" in html and html.count('class="plotly-graph-div"') == len(FIGURES) + 1


def test_sparse_manifest_and_unpriced_run_still_render(tmp_path: Path, no_png: None) -> None:
    run = tmp_path / "run"
    write_run(str(run), experiments=[SimExperiment("solo")], slo={}, failed_shard=False, invalid_shard=False)
    storage.write_text(str(run / "manifest.json"), json.dumps({"run_id": "r1"}))
    render_report(str(run))
    md = (run / "report.md").read_text()
    assert "| Ended | unknown" in md and "| fmbench version | unknown |" in md
    assert "unknown (not recorded in the manifest)" in md
    assert "cost is unknown (no pricing configured)" in md
    assert "Not drawn — price-performance and cost plots: cost is unknown" in md



def test_a_run_whose_every_request_failed_says_so_rather_than_blame_pricing_or_records(
        tmp_path: Path, no_png: None) -> None:
    """Priced experiments whose every request failed: the shards cost money but bought no
    transaction. The report says that, not that pricing or the per-request records are missing."""
    priced = {"hourly_usd": 1.0}
    run = tmp_path / "run"
    write_run(str(run), experiments=[SimExperiment("down", error_p=1.0, pricing=priced)], failed_shard=False,
              invalid_shard=False)
    render_report(str(run))
    md = (run / "report.md").read_text()
    assert "> Not drawn — prompt tokens vs latency: no request succeeded, so no request has a latency to plot." in md
    assert ("> Not drawn — price-performance and cost plots: no request succeeded, so there is no cost per "
            "successful transaction (pricing is configured).") in md
    assert "> Not drawn — inter-token latency distribution: no request succeeded, so no answer was streamed." in md
    assert "no pricing configured" not in md and "no per-request records" not in md
    rows = [line for line in md.splitlines() if line.startswith("| down |")]
    assert rows and not [line for line in rows if "unknown" in line], rows
    per_bucket = [line for line in rows if "100.0%" in line]  # the results tables
    assert per_bucket and all("| – (no successful request) |" in line for line in per_bucket), per_bucket
    per_token = [line for line in rows if "| instance |" in line]  # cost per 1M tokens
    assert per_token and all(line.count("– (no successful request)") == 4 for line in per_token), per_token
    # Beside an experiment that succeeded, the one that failed throughout keeps its own cells.
    run = tmp_path / "mixed"
    write_run(str(run), experiments=[SimExperiment("down", error_p=1.0, pricing=priced),
                                     SimExperiment("up", pricing=priced)], failed_shard=False, invalid_shard=False)
    render_report(str(run))
    md = (run / "report.md").read_text()
    assert "Not drawn — price-performance" not in md and "Not drawn — prompt tokens" not in md
    costs = [line for line in md.splitlines() if line.startswith(("| down |", "| up |"))
             and ("| instance |" in line or line.split("|")[2].strip().startswith("c="))]
    assert len(costs) == 24 and all(("– (no successful request)" in line) == line.startswith("| down |")
                                    for line in costs), costs

def test_the_runs_own_warnings_are_in_the_report(tmp_path: Path, no_png: None) -> None:
    """What the run warned of (an endpoint it could not delete, a dataset's skipped buckets, its hold
    lost to another process) is under the run's table, not only inside manifest.json."""
    run = tmp_path / "run"
    write_run(str(run), experiments=[SimExperiment("solo")], failed_shard=False, invalid_shard=False)
    manifest = json.loads((run / "manifest.json").read_text())
    left = "endpoint fmbench-solo-1a2b3c4d (us-east-1): still running (billed until deleted)"
    manifest["warnings"] = [left, "dataset 'short' has no prompts in bucket 500-1000: its shards are skipped"]
    storage.write_text(str(run / "manifest.json"), json.dumps(manifest))
    render_report(str(run))
    md = (run / "report.md").read_text()
    assert f"> ⚠ {left}\n" in md
    assert "> ⚠ dataset 'short' has no prompts in bucket 500-1000: its shards are skipped" in md
    html = (run / "report.html").read_text()
    assert f'<div class="warn">⚠ {left}</div>' in html


def test_report_on_s3(s3_bucket: str, no_png: None) -> None:
    url = f"{s3_bucket}/runs/synth-bench/r-s3"
    write_run(url, run_id="r-s3")
    paths = render_report(url)
    assert paths.markdown == f"{url}/report.md"
    assert "## Summary" in storage.read_text(paths.markdown)
    assert "plotly-graph-div" in storage.read_text(paths.html)
    assert storage.read_parquet(f"{url}/metrics.parquet").height == 12
    assert storage.exists(f"{url}/metrics.csv")


def test_compare_two_runs_on_shared_buckets(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(str(a), name="bench-a", run_id="ra", seed=1)
    write_run(str(b), name="bench-b", run_id="rb", seed=2, buckets=[[1, 500], [1000, 2000]],
              experiments=[SimExperiment("sim-small", tpot_s=0.002, slowdown=0.1,
                                         pricing={"instance_type": "ml.g6.xlarge"})],
              failed_shard=False, invalid_shard=False)
    out = tmp_path / "cmp"
    paths = compare_runs([str(a), str(b)], str(out))
    md = (out / "report.md").read_text()
    assert "# fmbench comparison: bench-a, bench-b" in md
    assert "bench-a/sim-small" in md and "bench-a/sim-big" in md and "bench-b/sim-small" in md
    assert "1,000–2,000" not in md and "500–1,000" not in md  # only the shared 1-500 bucket
    # ... and the description says which were left out
    assert "Left out, as not measured by every run: bench-a's synth 500-1000; bench-b's synth 1000-2000." in md
    assert md.count("For prompts of ") == 1
    metrics = pl.read_parquet(out / "metrics.parquet")
    assert set(metrics["bucket"]) == {"1-500"}
    assert metrics.height == 6 + 3
    # the recommendation is the cheapest valid shard meeting the SLOs across both runs
    ok = metrics.filter(pl.col("meets_slo") & pl.col("valid")).sort("cost_per_10k_txn").row(0, named=True)
    assert f"{ok['experiment']} (" in next(ln for ln in md.splitlines() if "For prompts of" in ln)
    # the same figures, with one request timeline per run's experiment (3 instead of 2)
    assert paths.plots_missing_reason is None and len(paths.plots) == len(FIGURES) + 1
    assert {Path(p).stem for p in paths.plots} >= {"timeline_bench-a_sim-small", "timeline_bench-b_sim-small"}
    # deltas: bench-b's sim-small against bench-a's, shard by shard, each judged against the bootstrap noise
    assert "## Changes between runs" in md
    assert "| synth 1-500 c=1 | bench-a/sim-small | bench-b/sim-small | p95 latency |" in md
    assert "| p95 ITL |" in md and "| throughput (txn/min) |" in md and "| cost per 10k txn |" in md
    # the synthetic runs' TPOT differs by 2x (4 ms vs 2 ms): far beyond noise
    itl_row = next(ln for ln in md.splitlines() if "c=1 | bench-a/sim-small | bench-b/sim-small | p95 ITL" in ln)
    assert "✔ better" in itl_row
    assert "### Run bench-a / ra" in md and "### Run bench-b / rb" in md
    # inputs are left untouched
    assert not (a / "report.md").exists() and not (a / "metrics.parquet").exists()


def test_compare_judges_goodput_with_a_per_request_tpot_slo(tmp_path: Path, no_png: None) -> None:
    # The goodput rule for TPOT reads each request's chunks (a one-token streamed answer has no TPOT).
    slo = {"latency_p95_s": 0.6, "tpot_s": 0.005}
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(str(a), name="bench-a", run_id="ra", seed=1, slo=slo)
    write_run(str(b), name="bench-b", run_id="rb", seed=2, slo=slo, failed_shard=False, invalid_shard=False)
    compare_runs([str(a), str(b)], str(tmp_path / "cmp"))
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Changes between runs" in md and "| goodput" in md
    assert "every shard is judged against the same SLOs, bench-a's." in md  # (both runs set the same)


def test_compare_says_whose_slos_judge_every_run_and_which_runs_set_others(
        tmp_path: Path, no_png: None, caplog: pytest.LogCaptureFixture) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(str(a), name="bench-a", run_id="ra", seed=1, slo={"latency_p95_s": 0.6})
    write_run(str(b), name="bench-b", run_id="rb", seed=2, slo={"latency_p95_s": 5.0}, failed_shard=False,
              invalid_shard=False)
    compare_runs([str(a), str(b)], str(tmp_path / "cmp"))
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert ("every shard is judged against the same SLOs, bench-a's (bench-b set other SLOs in its own config, so its "
            "verdicts here can differ from its own report's).") in md
    assert "judging every run against bench-a's SLOs; bench-b set other SLOs of their own" in caplog.text


def test_compare_says_why_no_change_is_shown_when_no_shard_pairs(tmp_path: Path, no_png: None) -> None:
    # Several experiments per run, none of the same name: no fair pairing, and the report must say
    # so, not leave the section out as if nothing changed.
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(str(a), name="bench-a", run_id="ra", seed=1, failed_shard=False, invalid_shard=False)
    write_run(str(b), name="bench-b", run_id="rb", seed=2, failed_shard=False, invalid_shard=False,
              experiments=[SimExperiment("x", tpot_s=0.004, slowdown=0.1), SimExperiment("y", tpot_s=0.003, slowdown=0.1)])
    compare_runs([str(a), str(b)], str(tmp_path / "cmp"))
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Changes between runs" in md
    assert ("No change of bench-b against bench-a is shown: their experiments differ (sim-big, sim-small "
            "against x, y) and a run has several") in md
    assert "| p95 latency |" not in md
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "No change of bench-b against bench-a is shown" in html


def test_compare_needs_shared_buckets(tmp_path: Path) -> None:
    from fmbench.errors import ConfigError

    write_run(str(tmp_path / "a"), buckets=[[1, 500]], failed_shard=False, invalid_shard=False)
    write_run(str(tmp_path / "b"), buckets=[[1000, 2000]], failed_shard=False, invalid_shard=False)
    with pytest.raises(ConfigError, match="share no dataset bucket"):
        compare_runs([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))


def test_artifact_helpers(rendered: tuple[Path, object]) -> None:
    run, _ = rendered
    m = pl.read_parquet(run / "metrics.parquet")
    rows = metrics_table_rows(m)
    assert len(rows) == 12 and rows[0]["Dataset"] == "synth" and rows[0]["SLO"][0] in "✔✘"
    assert all(r["Cost per 10k txn"].startswith("$") for r in rows if r["Requests"] != "0")
    text = summary_markdown(m, load_run(str(run)).cfg.slo, title="synth-bench")
    assert text.startswith("## synth-bench") and text.count("- For prompts of") == 2
    assert "11 measured shard(s)" in text
    meets = int(m.filter(pl.col("requests") > 0)["meets_slo"].sum())
    assert f"{meets} meet every SLO." in text  # none of them invalid
    # the count that meet every SLO says how many of them are not valid measurements (never recommended)
    first = m.with_row_index().filter(pl.col("meets_slo") & pl.col("valid"))["index"][0]
    marked = m.with_row_index().with_columns(valid=pl.when(pl.col("index") == first).then(False)
                                             .otherwise(pl.col("valid"))).drop("index")
    text = summary_markdown(marked, load_run(str(run)).cfg.slo)
    assert f"{meets} meet every SLO (1 of them not valid measurements, so not recommended)." in text


def test_open_loop_token_priced_run_renders(tmp_path: Path, no_png: None) -> None:
    run = tmp_path / "run"
    write_run(str(run), experiments=[SimExperiment("bedrock-haiku", pricing={
        "input_per_1k_usd": 0.00025, "output_per_1k_usd": 0.00125})], levels=[1, 2],
        failed_shard=False, invalid_shard=False)
    # turn the closed-loop levels into open-loop rates (1 and 2 req/s, no in-flight cap)
    req = pl.read_parquet(run / "requests.parquet").with_columns(
        pl.col("concurrency").cast(pl.Float64).alias("request_rate"), pl.lit(0).alias("concurrency"))
    storage.write_parquet(str(run / "requests.parquet"), req)
    manifest = json.loads((run / "manifest.json").read_text())
    for s in manifest["shards"]:
        s["request_rate"], s["concurrency"] = float(s["concurrency"]), 0
    storage.write_text(str(run / "manifest.json"), json.dumps(manifest))
    render_report(str(run))
    md = (run / "report.md").read_text()
    assert "| bedrock-haiku | 1 req/s |" in md and "| bedrock-haiku | 2 req/s |" in md
    assert "$0.00025 per 1k input + $0.00125 per 1k output tokens" in md
    assert "at 2 req/s meets every SLO" in md or "at 1 req/s meets every SLO" in md
    html = (run / "report.html").read_text()
    assert "request rate (requests" in html and "concurrency (requests in flight)" not in html


def test_run_without_measurements_renders_and_says_so(tmp_path: Path, no_png: None) -> None:
    run = tmp_path / "run"
    write_run(str(run), experiments=[SimExperiment("solo")], levels=[1], buckets=[[1, 500]],
              failed_shard=False, invalid_shard=False)
    storage.write_parquet(str(run / "requests.parquet"), pl.read_parquet(run / "requests.parquet").head(0))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["shards"][0].update(status="failed", error="DeploymentError: endpoint never became InService")
    storage.write_text(str(run / "manifest.json"), json.dumps(manifest))
    render_report(str(run))
    md = (run / "report.md").read_text()
    assert "no valid shard produced successful measurements" in md
    assert "✖ solo c=1: DeploymentError: endpoint never became InService" in md
    assert "Not drawn — no shard produced measurements" in md


def test_errors_table_shows_retried_attempts_only_when_there_are_any() -> None:
    from fmbench.report.render import _error_rows

    base = {"experiment": "br", "dataset": "d", "bucket": "1-500", "concurrency": 4, "request_rate": None,
            "example": "ThrottlingException: Too many requests"}
    retried = pl.DataFrame([{**base, "error_kind": "throttled", "count": 0, "retried": 7}])
    (row,) = _error_rows(retried)
    assert row["Failed requests"] == "0" and row["Retried attempts"] == "7"
    plain = pl.DataFrame([{**base, "error_kind": "timeout", "count": 2, "retried": 0}])
    (row,) = _error_rows(plain)
    assert "Retried attempts" not in row and row["Failed requests"] == "2"


def test_goodput_itl_and_token_costs_are_reported(tmp_path: Path, no_png: None) -> None:
    run = tmp_path / "run"
    write_run(str(run), slo={"latency_p95_s": 0.6, "ttft_p95_s": 0.3, "max_error_rate": 0.05, "ttft_s": 0.12})
    render_report(str(run))
    md = (run / "report.md").read_text()
    m = pl.read_parquet(run / "metrics.parquet")
    assert "| each request's time to first token (goodput, ranks the recommendation) | ≤ 0.12 s |" in md
    assert "## Inter-token latency and goodput" in md and "A chunk that carries several tokens counts as one gap" in md
    # the recommendation ranks by goodput per dollar: the lowest cost per 10k good requests that meets the SLOs
    ok = m.filter(pl.col("meets_slo") & pl.col("valid") & (pl.col("bucket") == "1-500"))
    best = ok.sort("cost_per_10k_good").row(0, named=True)
    line = next(ln for ln in md.splitlines() if "For prompts of 1–500" in ln)
    assert f"{best['experiment']} (" in line and f"at concurrency {best['concurrency']} " in line
    assert "with the most goodput per dollar" in line and f"${best['cost_per_10k_good']:,.2f} per 10k good" in line
    # goodput row of that shard, and its cost per 1M tokens
    share = f"{best['goodput_share']:.1%}"
    assert any(ln.startswith(f"| {best['experiment']} | synth | 1-500 | c={best['concurrency']} |") and share in ln
               for ln in md.splitlines())
    assert "## Cost per 1M tokens" in md and "| Per 1M input tokens | Per 1M output tokens |" in md
    assert "Request timeline: sim-small" in md and "Every request is drawn." in md


def test_report_figures_are_plain_dicts_with_the_report_template() -> None:
    import plotly.graph_objects as go
    import plotly.io as pio

    from fmbench.report.figures import Figure, new_figure

    built = new_figure()
    built.add_trace(go.Scatter(x=[1, 2], y=[3, 4]))
    fig = Figure("a", "A", "caption", built)
    assert isinstance(fig.figure, dict) and fig.figure["data"][0]["y"] == [3, 4]
    assert fig.figure["layout"]["template"] == pio.templates["plotly_white"].to_plotly_json()
    assert fig.size() == (1100, 600)
    own = Figure("b", "B", "caption", go.Figure(layout={"template": pio.templates["ggplot2"], "width": 300}))
    assert own.figure["layout"]["template"] == pio.templates["ggplot2"].to_plotly_json()  # its own is kept
    assert own.size() == (300, 600)


def test_render_report_is_importable_without_the_report_modules() -> None:
    # render_report starts the PNG browser before polars and plotly are imported (over a second on
    # 2 cores, overlapped with Chromium's start); the package's other names load on first use.
    import subprocess
    import sys

    code = ("import sys; from fmbench.report import render_report; "
            "heavy = [m for m in ('polars', 'plotly.graph_objects', 'fmbench.report.render') if m in sys.modules]; "
            "from fmbench.report import load_run, metrics_table_rows; "
            "print(heavy, load_run.__module__, metrics_table_rows.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "fmbench.report.run", "fmbench.report.tables"]


def test_tables_computed_while_the_browser_draws_are_in_the_report(rendered: tuple[Path, object]) -> None:
    # The error counts, the benchmark's cost and the request timelines are computed after the
    # browser has its figures (ReportInput.later); the report still carries all three.
    run, _ = rendered
    md = (run / "report.md").read_text()
    errors = md[md.index("## Errors"):]
    assert "| Error kind | Failed requests |" in errors.split("\n## ")[0]
    assert "What this benchmark cost" in md and "Billed instance-hours" in md
    assert "](plots/timeline_sim-big.png)" in md


def test_cost_table_counts_every_request_sent_and_says_so(rendered: tuple[Path, object]) -> None:
    # "Requests sent" is what was billed: every record of the experiment, warm-ups and failed attempts
    # included, which differs from the results tables' measured requests; the caption says which is which.
    run, _ = rendered
    md = (run / "report.md").read_text()
    cost = md[md.index("What this benchmark cost"):].split("\n## ")[0]
    assert ("warm-ups, retried attempts and attempts\nset aside because the endpoint could not be reached or did not "
            "answer included") in cost
    requests = pl.read_parquet(run / "requests.parquet")
    header = next(line for line in cost.splitlines() if line.startswith("| Experiment"))
    col = [c.strip() for c in header.split("|")].index("Requests sent")
    for name, n in requests.group_by("experiment").len().iter_rows():
        row = next(line for line in cost.splitlines() if line.startswith(f"| {name} |"))
        assert [c.strip() for c in row.split("|")][col] == f"{n:,}", name


def test_requests_are_held_in_memory_only_while_their_gaps_are_few(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The report's queries share one in-memory copy of the request columns, unless the run's
    # inter-token gaps are too many to hold at once: then each query scans requests.parquet again.
    import fmbench.report.run as run_module

    run = tmp_path / "run"
    write_run(str(run))
    in_memory = load_run(str(run), write_metrics=False)
    assert in_memory.metrics_computed and in_memory.requests is not None
    assert "SCAN" not in in_memory.requests.explain().upper()
    monkeypatch.setattr(run_module, "IN_MEMORY_ITL_VALUES", 0)
    scanned = load_run(str(run), write_metrics=False)
    assert scanned.requests is not None and "PARQUET" in scanned.requests.explain().upper()
    assert scanned.metrics.equals(in_memory.metrics)  # the same numbers either way


def test_shards_during_which_the_machine_ran_slow_are_flagged() -> None:
    from fmbench.machine import SLOW_SHARE_WARN
    from fmbench.report.render import _machine_rows
    from fmbench.rundir import Manifest

    m = Manifest(shards=[
        {"shard_id": "e__d__b__c8", "machine": {"unit_us_median": 6.0, "slow_share": SLOW_SHARE_WARN + 0.03}},
        {"shard_id": "e__d__b__c1", "machine": {"unit_us_median": 6.0, "slow_share": SLOW_SHARE_WARN / 5}},
        {"shard_id": "e__d__b__c2"},  # measured before fmbench.machine
    ])
    [(label, text)] = _machine_rows(m)
    assert label == "⚠ Shards during which this machine ran slow"
    assert "e__d__b__c8 (8% of its 10-ms windows)" in text and "c1" not in text and "c2" not in text
    assert _machine_rows(Manifest(shards=[{"shard_id": "x", "machine": {"slow_share": 0.0}}])) == []


def test_the_report_says_how_the_arrival_of_answers_was_stamped() -> None:
    from fmbench.report.render import _stamp_rows
    from fmbench.rundir import Manifest

    m = Manifest(shards=[
        {"shard_id": "e__d__b__c8", "receive_stamps": {"kernel": 8, "event_loop": 0}},
        {"shard_id": "e__d__b__c4", "receive_stamps": {"kernel": 1, "event_loop": 3}},
        {"shard_id": "sm__d__b__c4"},  # a client that does not say (SageMaker), or an older run
    ])
    [(label, text)] = _stamp_rows(m)
    assert label == "⚠ Shards whose answer times are the client's event loop's"
    assert "e__d__b__c4 (3 of 4 connections)" in text and "c8" not in text and "sm__" not in text
    [(label, text)] = _stamp_rows(Manifest(shards=[m.shards[0], m.shards[2]]))
    assert (label, text) == ("Answer arrival times", "the kernel's receive stamps, on every connection of 1 shard(s)")
    assert _stamp_rows(Manifest(shards=[m.shards[2]])) == []
    # the AWS SDK's clients say they time answers in each request's thread: a row of their own, by experiment
    sdk = [{"shard_id": f"sm__d__b__c{c}", "experiment": "sm", "receive_stamps": {"sdk_thread": 8}} for c in (1, 4)]
    rows = _stamp_rows(Manifest(shards=[m.shards[0], *sdk]))
    assert rows[0] == ("Answer arrival times", "the kernel's receive stamps, on every connection of 1 shard(s)")
    assert rows[1][0] == "Answer arrival times (AWS SDK)" and len(rows) == 2
    assert "request's own thread" in rows[1][1] and rows[1][1].endswith("2 shard(s) of sm")
    [(label, _)] = _stamp_rows(Manifest(shards=sdk))
    assert label == "Answer arrival times (AWS SDK)"


def test_a_failed_shard_is_listed_as_invalid_only_for_a_reason_of_its_own() -> None:
    from fmbench.report.render import _bucket_sections
    from fmbench.report.tables import slo_cell

    base = {"dataset": "d", "bucket": "1-100", "bucket_min": 1, "bucket_max": 100, "request_rate": None,
            "meets_slo": False, "slo_failures": None, "shard_error": None}
    rows = [
        {**base, "experiment": "ok", "concurrency": 1, "status": "done", "valid": True, "invalid_reason": None},
        {**base, "experiment": "slow", "concurrency": 1, "status": "done", "valid": False,
         "invalid_reason": "client CPU saturated"},
        {**base, "experiment": "down", "concurrency": 1, "status": "failed", "valid": False, "invalid_reason": None,
         "shard_error": "endpoint refused"},
        {**base, "experiment": "both", "concurrency": 1, "status": "failed", "valid": False,
         "invalid_reason": "too few requests"},
        {**base, "experiment": "old", "concurrency": 1, "status": "done", "valid": False, "invalid_reason": None},
    ]
    cells = {r["experiment"]: slo_cell(r) for r in rows}
    assert "invalid" not in cells["ok"] and "invalid" not in cells["down"]
    assert "✖ shard failed" in cells["down"] and "✖ shard failed" in cells["both"]
    assert "⚠ invalid: client CPU saturated" in cells["slow"] and "⚠ invalid: too few requests" in cells["both"]
    assert "⚠ invalid: no reason given" in cells["old"]
    from fmbench.report.figures import _hover  # the plots' hover text says the same

    hover = {r["experiment"]: _hover(r) for r in rows}
    assert "SHARD FAILED" in hover["down"] and "INVALID" not in hover["down"]
    assert "INVALID: too few requests" in hover["both"] and "INVALID: client CPU saturated" in hover["slow"]
    assert "INVALID" not in hover["ok"] and "SHARD FAILED" not in hover["ok"]
    [section] = _bucket_sections(pl.DataFrame(rows))
    assert sorted(section["failed"]) == ["both c=1: failed (no error recorded)", "down c=1: endpoint refused"]
    assert sorted(section["invalid"]) == ["both c=1: too few requests", "old c=1: no reason given",
                                          "slow c=1: client CPU saturated"]


def test_compare_never_writes_over_a_runs_own_report(tmp_path: Path) -> None:
    from fmbench.errors import ConfigError

    a, b = tmp_path / "a", tmp_path / "b"
    write_run(str(a), failed_shard=False, invalid_shard=False)
    write_run(str(b), failed_shard=False, invalid_shard=False)
    before = {p.name: p.read_bytes() for p in a.iterdir() if p.is_file()}
    for output in (a, b):
        with pytest.raises(ConfigError, match=r"is a run's directory \(it holds manifest.json\)"):
            compare_runs([str(a), str(b)], str(output))
    assert {p.name: p.read_bytes() for p in a.iterdir() if p.is_file()} == before
    assert compare_runs([str(a), str(b)], str(tmp_path / "cmp")).markdown.endswith("report.md")


RETRIED_RUN = """
name: retried
tokenizer: cl100k_base
buckets: [[1, 200]]
datasets:
  - {name: synthetic, source: synthetic, prompts_per_bucket: 4, seed: 0}
experiments:
  - name: down
    endpoint: {provider: simulated, ttft_ms: 5, tpot_ms: 1, output_tokens: 4, max_batch: 4,
               faults: {http_503_rate: 1.0}}
    inference: {max_tokens: 4, stream: true}
    concurrency_levels: [1]
    requests_per_level: 4
    warmup_requests: 0
    request_retries: 2
    pricing: {hourly_usd: 1.0}
  - name: thr
    endpoint: {provider: simulated, ttft_ms: 5, tpot_ms: 1, output_tokens: 4, max_batch: 4,
               faults: {throttle_rate: 0.5, retry_after_s: 0.01}}
    inference: {max_tokens: 4, stream: true}
    concurrency_levels: [2]
    requests_per_level: 8
    warmup_requests: 1
    request_retries: 2
    pricing: {hourly_usd: 1.0}
slo: {latency_p95_s: 5.0}
"""


def test_a_retried_request_counts_once_in_the_errors_table_and_the_compared_samples(
        tmp_path: Path, no_png: None) -> None:
    from fmbench.config import load_config_text
    from fmbench.pipeline import run_benchmark
    from fmbench.records import final_attempts
    from fmbench.report.deltas import _by_shard, _shard_key

    run = Path(run_benchmark(load_config_text(RETRIED_RUN), output=str(tmp_path), run_id="r1", png=False)).parent
    records = pl.read_parquet(run / "requests.parquet").filter(~pl.col("warmup"))
    final = final_attempts(records).collect()
    # What the Errors table must say, from the records: per experiment and kind, the requests whose
    # final attempt failed that way, and the failed attempts that were sent again.
    expected = {}
    for exp in ("down", "thr"):
        mine, last = records.filter(pl.col("experiment") == exp), final.filter(pl.col("experiment") == exp)
        for kind in set(mine.filter(~pl.col("ok"))["error_kind"].to_list()):
            failed = last.filter(pl.col("error_kind") == kind).height
            expected[exp, kind] = (failed, mine.filter(pl.col("error_kind") == kind).height - failed)
    assert expected["down", "server_error"] == (4, 8)  # 4 requests, each sent 3 times
    assert expected["thr", "throttled"][1] > 0  # retries absorbed some throttling

    def errors_table(md: str) -> dict[tuple[str, str], tuple[int, int]]:
        section = md.split("## Errors", 1)[1].split("\n## ", 1)[0]
        rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in section.splitlines()
                if ln.startswith(("| down |", "| thr |"))]
        return {(r[0], r[4]): (int(r[5].replace(",", "")), int(r[6].replace(",", ""))) for r in rows}

    md = (run / "report.md").read_text()
    assert "| Failed requests | Retried attempts |" in md
    assert errors_table(md) == expected
    assert "| down | c=1 | 4 | 4 |" in md  # the results table agrees: 4 requests, 4 failed
    # Rendered again from the records alone (no metrics.parquet), the same counts.
    for name in ("metrics.parquet", "metrics.csv", "report.md"):
        (run / name).unlink()
    render_report(str(run))
    md = (run / "report.md").read_text()
    assert errors_table(md) == expected and "| down | c=1 | 4 | 4 |" in md
    # fmbench compare bootstraps each request once, by its final attempt, as the metrics it compares.
    loaded = load_run(str(run))
    parts = _by_shard(loaded.requests, loaded.cfg.slo if loaded.cfg else None)
    for m in loaded.metrics.iter_rows(named=True):
        assert parts[_shard_key(m)].height == m["requests"], m["experiment"]


def test_records_of_an_older_run_without_attempts_are_each_a_request(tmp_path: Path, no_png: None) -> None:
    run = tmp_path / "run"
    write_run(str(run), experiments=[SimExperiment("flaky", error_p=0.3)], levels=[2], buckets=[[1, 500]],
              failed_shard=False, invalid_shard=False)
    older = pl.read_parquet(run / "requests.parquet").drop("attempt")
    storage.write_parquet(str(run / "requests.parquet"), older)
    render_report(str(run))
    measured = older.filter(~pl.col("warmup"))
    failed = measured.filter(~pl.col("ok")).height
    assert failed > 0
    md = (run / "report.md").read_text()
    assert f"| flaky | synth | 1-500 | c=2 | server_error | {failed} | HTTP 503" in md
    assert f"| flaky | c=2 | {measured.height} | {failed} |" in md


def test_shards_whose_prompts_came_from_the_servers_cache_are_warned_of(tmp_path: Path, no_png: None) -> None:
    """A server that says it served most prompt tokens from its prompt cache (the same prompts go out at
    every level) gets a warning under the run's table and a "Prompt cache" table; an older run's records
    without the column, or a server that says nothing, get neither."""
    run = tmp_path / "run"
    write_run(str(run), experiments=[SimExperiment("cachey")], levels=[1, 2], buckets=[[1, 500]],
              failed_shard=False, invalid_shard=False)
    render_report(str(run))
    plain = (run / "report.md").read_text()
    assert "prompt cache" not in plain.lower()

    records = pl.read_parquet(run / "requests.parquet")
    # At c=2 the server served 90 % of each prompt from its cache; at c=1 it said it served none.
    cached = (pl.when(pl.col("concurrency") == 2).then((pl.col("input_tokens") * 9) // 10).otherwise(0)
              .cast(pl.Int64).alias("cached_tokens"))
    storage.write_parquet(str(run / "requests.parquet"), records.with_columns(cached))
    (run / "metrics.parquet").unlink()  # computed again from the records
    render_report(str(run))
    md = (run / "report.md").read_text()
    ok = records.filter(~pl.col("warmup") & pl.col("ok") & (pl.col("concurrency") == 2))
    prompt = int(ok["input_tokens"].sum())
    from_cache = int(((ok["input_tokens"] * 9) // 10).sum())
    assert "> ⚠ 1 shard had at least 50% of their prompt tokens served from the server's prompt cache" in md
    assert "`extra_body: {cache_prompt: false}`" in md
    table = md.split("## Prompt cache", 1)[1].split("## Errors", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| cachey |")]
    assert len(rows) == 1 and "| c=2 |" in rows[0], rows
    assert f"| {prompt:,} | {from_cache:,} |" in rows[0], rows
    html = (run / "report.html").read_text()
    assert '<h2 id="prompt-cache">Prompt cache</h2>' in html
    assert '<div class="warn">⚠ 1 shard had at least 50%' in html


def test_a_path_that_is_not_a_finished_run_says_what_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main
    from fmbench.errors import ExitCode

    runs = tmp_path / "synth-bench"
    write_run(str(runs / "r1"), run_id="r1", experiments=[SimExperiment("solo")], failed_shard=False,
              invalid_shard=False)
    assert main(["report", str(tmp_path / "nowhere"), "--no-png"]) == ExitCode.BAD_INPUT
    assert "nowhere: no such run directory" in capsys.readouterr().err
    # The benchmark's directory, not one of its runs.
    assert main(["report", str(runs), "--no-png"]) == ExitCode.BAD_INPUT
    assert "not a run directory; it holds runs (r1): give one of them" in capsys.readouterr().err
    # A run stopped before its end: its records are gathered only then, so resuming it is the way on.
    unfinished = runs / "r2"
    unfinished.mkdir()
    manifest = json.loads((runs / "r1" / "manifest.json").read_text())
    manifest.update(run_id="r2", ended_at=None, shards=[])
    (unfinished / "manifest.json").write_text(json.dumps(manifest))
    assert main(["report", str(unfinished), "--no-png"]) == ExitCode.ENVIRONMENT
    err = capsys.readouterr().err
    assert "the run has not finished" in err and "--run-id r2" in err
    assert main(["report", str(runs / "r1"), "--no-png"]) == ExitCode.OK
