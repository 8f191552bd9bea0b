"""Compare several runs in one report, side by side on the dataset buckets they share.

Experiments are renamed ``RUN/EXPERIMENT`` (RUN = the run id, or the benchmark name when those
differ between runs) so they stay distinct, and every shard is judged against the same SLOs (those
of the first run unless given), so one recommendation across runs is fair.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from fmbench import storage
from fmbench.errors import ConfigError
from fmbench.metrics import benchmark_cost, error_counts, evaluate_slo
from fmbench.report.render import ReportInput, ReportPaths, pricing_rows, render
from fmbench.report.run import RunData, load_run, request_sample


def _labels(runs: list[RunData]) -> list[str]:
    names = [r.name for r in runs]
    base = names if len(set(names)) == len(names) else [r.run_id for r in runs]
    if len(set(base)) != len(base):
        base = [f"{b}#{i + 1}" for i, b in enumerate(base)]
    return base


def _prefix(df: pl.DataFrame, label: str) -> pl.DataFrame:
    return df.with_columns((pl.lit(f"{label}/") + pl.col("experiment")).alias("experiment"))


def compare_runs(run_urls: list[str], output: str, slo: Any = None) -> ReportPaths:
    """Write one report comparing several runs (report.md/html, plots/, metrics.csv/parquet in ``output``).

    Args:
        run_urls: run directories (local paths or s3:// URLs), at least two.
        output: directory (local or s3://) for the comparison report.
        slo: the `SLOConfig` to judge every run against (default: the first run's).

    Raises:
        ConfigError: fewer than two runs, or the runs share no dataset bucket.
        StorageError: a run cannot be read or the output cannot be written.
    """
    if len(run_urls) < 2:
        raise ConfigError(f"compare: give at least two runs (got {len(run_urls)})")
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
    slo = slo if slo is not None else next((r.cfg.slo for r in runs if r.cfg is not None), None)

    metrics, samples, errors, costs = [], [], [], []
    for label, run in zip(labels, runs):
        m = run.metrics.join(shared_df, on=["dataset", "bucket"], how="semi")
        metrics.append(_prefix(m, label))
        if run.requests is not None:
            req = run.requests.join(shared_df.lazy(), on=["dataset", "bucket"], how="semi")
            sample = request_sample(req)
            if sample is not None:
                samples.append(_prefix(sample, label))
            errors.append(_prefix(error_counts(req), label))
            costs.append(_prefix(benchmark_cost(run.requests, run.cfg, run.shards, run.endpoints, run.ended_at), label))
    combined = evaluate_slo(pl.concat(metrics, how="diagonal_relaxed"), slo)
    storage.write_parquet(storage.join(output, "metrics.parquet"), combined)
    storage.write_text(storage.join(output, "metrics.csv"), combined.write_csv())
    prices = [{**row, "Experiment": f"{label}/{row['Experiment']}"}
              for label, run in zip(labels, runs) for row in pricing_rows([run])]
    inp = ReportInput(
        title=f"fmbench comparison: {', '.join(labels)}",
        description=f"{len(runs)} runs compared on {len(shared)} shared dataset bucket(s); every shard is judged "
                    "against the same SLOs.",
        runs=runs, metrics=combined, slo=slo,
        sample=pl.concat(samples, how="vertical_relaxed") if samples else None,
        errors=pl.concat(errors, how="vertical_relaxed") if errors else None,
        bench_cost=pl.concat(costs, how="vertical_relaxed") if costs else None,
        pricing=prices, compare=True,
    )
    return render(inp, output)
