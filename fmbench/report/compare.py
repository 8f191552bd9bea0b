"""Compare several runs in one report, side by side on the dataset buckets they share.

Experiments are renamed ``RUN/EXPERIMENT`` (RUN = the run id, or the benchmark name when those
differ between runs) so they stay distinct, and every shard is judged against the same SLOs (those
of the first run unless given), so one recommendation across runs is fair.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from fmbench import storage
from fmbench.errors import ConfigError
from fmbench.metrics import SHARD_KEYS, benchmark_cost, error_counts, evaluate_slo, good_request
from fmbench.report.deltas import Delta, accuracy_deltas, delta_note, delta_rows, run_deltas
from fmbench.report.quality import QualityView, quality_view, with_accuracy
from fmbench.report.render import ReportInput, ReportPaths, pricing_rows, render
from fmbench.report.run import (
    RunData,
    itl_distribution,
    load_run,
    request_sample,
    request_timelines,
    sent_requests,
)

log = logging.getLogger("fmbench")


def _labels(runs: list[RunData]) -> list[str]:
    names = [r.name for r in runs]
    base = names if len(set(names)) == len(names) else [r.run_id for r in runs]
    if len(set(base)) != len(base):
        base = [f"{b}#{i + 1}" for i, b in enumerate(base)]
    return base


def _prefix(df: pl.DataFrame, label: str) -> pl.DataFrame:
    return df.with_columns((pl.lit(f"{label}/") + pl.col("experiment")).alias("experiment"))


def _with_goodput(metrics: pl.DataFrame, requests: pl.LazyFrame | None, slo: Any) -> pl.DataFrame:
    """A run's metrics with goodput recomputed under ``slo`` (its own config may set other limits)."""
    good = good_request(slo)
    if requests is None or good is None:
        return metrics
    counts = (requests.filter(~pl.col("warmup").fill_null(False)).group_by(SHARD_KEYS)
              .agg(good.sum().cast(pl.Int64).alias("good_requests")).collect())
    cols = ["good_requests", "goodput_share", "goodput_per_s", "cost_per_10k_good"]
    m = metrics.drop([c for c in cols if c in metrics.columns]).join(counts, on=SHARD_KEYS, how="left",
                                                                     nulls_equal=True)
    return m.with_columns(
        pl.when(pl.col("requests") > 0).then(pl.col("good_requests") / pl.col("requests")).otherwise(None)
        .alias("goodput_share"),
        pl.when(pl.col("duration_s") > 0).then(pl.col("good_requests") / pl.col("duration_s")).otherwise(None)
        .alias("goodput_per_s"),
        pl.when(pl.col("good_requests") > 0).then(pl.col("shard_cost_usd") / pl.col("good_requests") * 10_000)
        .otherwise(None).alias("cost_per_10k_good"),
    )


def _accuracy_deltas(views: list[tuple[str, RunData, QualityView | None]], shared: pl.DataFrame) -> list[Delta]:
    """Evaluated accuracy of each run against the first's, on the shared buckets, scored by the first
    run's accuracy metric (runs without an evaluation are left out)."""
    from fmbench.quality.summary import accuracy_values, load_quality

    evaluated = [(label, run, v) for label, run, v in views if v is not None]
    if len(evaluated) < 2 or evaluated[0][0] != views[0][0]:
        return []
    first = evaluated[0][2]
    assert first is not None
    values = []
    for label, run, _ in evaluated:
        q = load_quality(run.url, [e.name for e in run.cfg.experiments] if run.cfg else [])
        values.append((label, accuracy_values(q, first.metric).join(shared, on=["dataset", "bucket"], how="semi")))
    return accuracy_deltas(values, f"accuracy ({first.metric_label})")


def _left_out(labels: list[str], runs: list[RunData], shared: set[tuple[str, str]]) -> str:
    """The dataset buckets only some runs measured, which every table of the comparison leaves out."""
    parts = []
    for label, run in zip(labels, runs):
        own = sorted({f"{d} {b}" for d, b in run.metrics.select("dataset", "bucket").iter_rows()} -
                     {f"{d} {b}" for d, b in shared})
        if own:
            parts.append(f"{label}'s {', '.join(own)}")
    return f" Left out, as not measured by every run: {'; '.join(parts)}." if parts else ""


def compare_runs(run_urls: list[str], output: str, slo: Any = None) -> ReportPaths:
    """Write one report comparing several runs (report.md/html, plots/, metrics.csv/parquet in ``output``).

    Args:
        run_urls: run directories (local paths or s3:// URLs), at least two.
        output: directory (local or s3://) for the comparison report.
        slo: the `SLOConfig` to judge every run against (default: the first run's).

    Raises:
        ConfigError: fewer than two runs, the runs share no dataset bucket, or ``output`` is a run's
            directory.
        StorageError: a run cannot be read or the output cannot be written.
    """
    if len(run_urls) < 2:
        raise ConfigError(f"compare: give at least two runs (got {len(run_urls)})")
    if storage.exists(storage.join(output, "manifest.json")):
        raise ConfigError(f"compare: the output {output} is a run's directory (it holds manifest.json): the "
                          "comparison would overwrite that run's own report and metrics; choose another directory")
    runs = [load_run(u, write_metrics=False) for u in run_urls]
    labels = _labels(runs)
    shared: set[tuple[str, str]] | None = None
    for run in runs:
        keys = {(d, b) for d, b in run.metrics.select("dataset", "bucket").iter_rows()}
        shared = keys if shared is None else shared & keys
    if not shared:
        have = "; ".join(f"{lab}: {sorted({f'{d}/{b}' for d, b in r.metrics.select('dataset', 'bucket').iter_rows()})}"
                         for lab, r in zip(labels, runs))
        raise ConfigError(f"compare: the runs share no dataset bucket ({have})")
    shared_df = pl.DataFrame(sorted(shared), schema=["dataset", "bucket"], orient="row")
    source = "the given"
    if slo is None:
        source, slo = next(((f"{lab}'s", r.cfg.slo) for lab, r in zip(labels, runs) if r.cfg is not None),
                           ("no run's", None))
    # Runs whose own SLOs differ: their verdicts here are not the ones their own reports gave.
    differ = [lab for lab, r in zip(labels, runs) if r.cfg is not None and r.cfg.slo != slo]
    slo_note = (f" every shard is judged against the same SLOs, {source}"
                + (f" ({', '.join(differ)} set other SLOs in {'its' if len(differ) == 1 else 'their'} own config, "
                   "so its verdicts here can differ from its own report's)" if differ else "") + ".")
    if differ:
        log.warning("compare: judging every run against %s SLOs; %s set other SLOs of their own", source,
                    ", ".join(differ))

    metrics, samples, errors, costs, itl, timelines = [], [], [], [], [], []
    per_run: list[tuple[str, pl.DataFrame, pl.LazyFrame | None]] = []
    views: list[tuple[str, RunData, QualityView | None]] = []
    for label, run in zip(labels, runs):
        m = run.metrics.join(shared_df, on=["dataset", "bucket"], how="semi")
        req = None
        if run.requests is not None:
            req = run.requests.join(shared_df.lazy(), on=["dataset", "bucket"], how="semi")
        m = _with_goodput(m, req, slo)
        view = quality_view(run.url, run.cfg) if run.cfg is not None else None
        views.append((label, run, view))
        if view is not None:  # each run's own evaluated accuracy, for slo.min_accuracy
            m = with_accuracy(m, view)
        metrics.append(_prefix(m, label))
        if run.requests is not None and req is not None:
            sample = request_sample(req)
            if sample is not None:
                samples.append(_prefix(sample, label))
            errors.append(_prefix(error_counts(req), label))
            costs.append(_prefix(benchmark_cost(sent_requests(run, run.requests), run.cfg, run.shards, run.endpoints, run.ended_at),
                                 label))
            dist, spans = itl_distribution(req), request_timelines(req)
            if dist is not None:
                itl.append(_prefix(dist, label))
            if spans is not None:
                timelines.append(_prefix(spans, label))
        per_run.append((label, m, req))
    deltas, unmatched = run_deltas(per_run, slo)
    deltas += _accuracy_deltas(views, shared_df)
    combined = evaluate_slo(pl.concat(metrics, how="diagonal_relaxed"), slo)
    storage.write_parquet(storage.join(output, "metrics.parquet"), combined)
    storage.write_text(storage.join(output, "metrics.csv"), combined.write_csv())
    prices = [{**row, "Experiment": f"{label}/{row['Experiment']}"}
              for label, run in zip(labels, runs) for row in pricing_rows([run])]
    inp = ReportInput(
        title=f"fmbench comparison: {', '.join(labels)}",
        description=f"{len(runs)} runs compared on {len(shared)} shared dataset bucket(s);{slo_note}"
                    f"{_left_out(labels, runs, shared)}",
        runs=runs, metrics=combined, slo=slo,
        sample=pl.concat(samples, how="vertical_relaxed") if samples else None,
        errors=pl.concat(errors, how="vertical_relaxed") if errors else None,
        bench_cost=pl.concat(costs, how="vertical_relaxed") if costs else None,
        pricing=prices, compare=True,
        itl_dist=pl.concat(itl, how="vertical_relaxed") if itl else None,
        request_spans=pl.concat(timelines, how="vertical_relaxed") if timelines else None,
        delta_rows=delta_rows(deltas) or None,
        delta_note=" ".join([delta_note(), *unmatched]) if deltas else " ".join(unmatched) or None,
    )
    return render(inp, output)
