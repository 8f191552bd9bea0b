"""The steps after the shards: gather records and metrics into the run, render and publish the report."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from fmbench import storage
from fmbench.config import BenchmarkConfig
from fmbench.errors import ConfigError, FMBenchError, StorageError
from fmbench.names import slug
from fmbench.pipeline.prompts import PromptSet
from fmbench.pipeline.shards import ShardOutcome, set_aside_warnings
from fmbench.records import REQUEST_SCHEMA
from fmbench.rundir import Manifest, RunInfo, utc_now

log = logging.getLogger("fmbench")


def finalize_run(run: RunInfo, cfg: BenchmarkConfig, outcomes: list[ShardOutcome],
                 prompt_sets: list[PromptSet], warnings: list[str] | None = None, partial: bool = False) -> str:
    """Gather every shard's records into requests.parquet, compute metrics, update the manifest
    (``partial``: of `partial_report`'s copy of an unfinished run).

    Returns:
        The URL of metrics.parquet.
    """
    from fmbench.metrics import summarize

    frames = []
    for o in outcomes:
        if o.status == "ok" and o.records_url:
            frames.append(_with_schema(storage.read_parquet(o.records_url)))
    requests = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=REQUEST_SCHEMA)
    storage.write_parquet(run.path("requests.parquet"), requests)
    shard_dicts = [o.model_dump(mode="json") for o in outcomes]
    notes = list(warnings or []) + set_aside_warnings(run) + _collect_endpoint_metrics(run, cfg, shard_dicts)

    def finish(manifest: Manifest) -> None:
        manifest.shards = shard_dicts
        manifest.payload_hashes = {f"{ps.key}/{lb}": h for ps in prompt_sets for lb, h in ps.hashes.items()}
        manifest.prompt_counts = {f"{ps.key}/{lb}": c for ps in prompt_sets for lb, c in ps.counts.items()}
        manifest.warnings = notes
        manifest.ended_at = utc_now()

    run.update_manifest(finish)
    if not partial:  # (the run has finished: a partial report of it, made meanwhile, is stale)
        storage.remove_tree(run.path(PARTIAL))
    metrics = summarize(requests, cfg, shards=shard_dicts)
    storage.write_parquet(run.path("metrics.parquet"), metrics)
    storage.write_text(run.path("metrics.csv"), _csv(metrics))
    return run.path("metrics.parquet")


#: Where `partial_report` puts the report of an unfinished run, inside the run (which it leaves as it is).
PARTIAL = "partial"


def partial_report(run_url: str, png: bool = True) -> str:
    """Report what an unfinished run (stopped, killed, or still measuring) has measured so far: its
    shards' records, metrics and report go to ``RUN/partial/``; the run itself is left as it is, for
    its resume, which writes the full report. Returns the partial report.md URL.

    Raises:
        ConfigError: not a run directory, or a finished run (its report is `fmbench report`'s).
        StorageError: no shard measured yet, or the run's files cannot be read.
    """
    from fmbench.config import load_config_text
    from fmbench.rundir import (
        MANIFEST,
        has_manifest,
        is_set_aside,
        load_manifest,
        save_manifest,
        with_noted_deletions,
    )

    url = run_url.rstrip("/") if storage.is_remote(run_url) else str(Path(run_url).resolve())
    if not has_manifest(url):
        raise ConfigError(f"{run_url}: no {MANIFEST}; not a run directory")
    manifest = with_noted_deletions(url, load_manifest(url))
    run_id = manifest.run_id or url.rsplit("/", 1)[-1]
    if manifest.ended_at:
        raise ConfigError(f"{run_url}: run {run_id} has finished; its report is fmbench report {run_url}")
    config_text = storage.read_text(storage.join(url, "config.yml"))
    cfg = load_config_text(config_text, source=storage.join(url, "config.yml"))
    run = RunInfo(name=cfg.name, run_id=run_id, url=url, scratch=url)
    outcomes = []
    for shard_url in storage.list_files(run.path("shards"), ".json"):
        if is_set_aside(shard_url):
            continue  # (named in the warnings)
        try:
            outcomes.append(ShardOutcome.model_validate_json(storage.read_text(shard_url)))
        except ValueError as exc:
            log.warning("%s: not read (%s)", shard_url, exc)
    if not outcomes:
        raise StorageError(f"{run_url}: run {run_id} has measured no shard yet; nothing to report")
    outcomes.sort(key=lambda o: o.started_at or "")
    dest = storage.join(url, PARTIAL)
    storage.write_text(storage.join(dest, "config.yml"), config_text)
    save_manifest(dest, manifest)  # (with the deletions noted beside it: a killed run's endpoint cleanup deleted)
    scratch = dest if not storage.is_remote(dest) else tempfile.mkdtemp(prefix="fmbench-partial-")
    part = RunInfo(name=cfg.name, run_id=run_id, url=dest, scratch=scratch)
    note = (f"Partial report: run {run_id} has not finished (stopped, or still measuring); this report shows the "
            f"{len(outcomes)} shard(s) it measured by {utc_now()}, and nothing of the others. Resume it "
            f"(fmbench run CONFIG --run-id {run_id}) to measure the rest and write its full report.")
    finalize_run(part, cfg, outcomes, [], [note, *set_aside_warnings(run)], partial=True)

    def unfinished(m: Manifest) -> None:
        m.ended_at = None  # (not ended: the report says so)

    part.update_manifest(unfinished)
    return write_report(part, png=png)


def _with_schema(records: pl.DataFrame) -> pl.DataFrame:
    # A resumed run may hold shards recorded by an fmbench whose records lacked newer columns.
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in REQUEST_SCHEMA.items() if c not in records.columns]
    return records.with_columns(missing).select(list(REQUEST_SCHEMA)) if missing else records.select(
        list(REQUEST_SCHEMA))


def _collect_endpoint_metrics(run: RunInfo, cfg: BenchmarkConfig, shards: list[dict[str, Any]]) -> list[str]:
    # Optional: CloudWatch metrics of SageMaker shards (cloudwatch.parquet); a failure is a warning.
    if not any(getattr(e.endpoint, "cloudwatch_metrics", False) for e in cfg.experiments):
        return []
    from fmbench.deploy.cloudwatch import collect_run_metrics

    try:
        rows = collect_run_metrics(cfg, shards)
    except FMBenchError as exc:
        log.warning("CloudWatch metrics not collected: %s", exc)
        return [f"CloudWatch metrics not collected: {exc}"]
    if rows:
        storage.write_parquet(run.path("cloudwatch.parquet"), pl.DataFrame(rows, infer_schema_length=None))
    return []


def _csv(df: pl.DataFrame) -> str:
    flat = df.select([c for c in df.columns if not isinstance(df.schema[c], (pl.List, pl.Struct))])
    return flat.write_csv()


def write_report(run: RunInfo, png: bool = True) -> str:
    """Render report.md, report.html and plots (PNGs unless ``png`` is False); returns the report.md URL."""
    from fmbench.report import render_report

    paths = render_report(run.url, png=png)
    return str(getattr(paths, "markdown", run.path("report.md")))


class ArtifactContent(BaseModel):
    """What an orchestrator publishes about a finished run."""

    key: str = Field(description="Stable artifact key prefix for this benchmark (versions over runs).")
    summary_markdown: str
    table: list[dict[str, str]]
    report_url: str


def artifact_contents(run: RunInfo, cfg: BenchmarkConfig) -> ArtifactContent:
    """The summary, metrics table and report link of a run, for Prefect artifacts."""
    from fmbench.report import metrics_table_rows, summary_markdown

    metrics = storage.read_parquet(run.path("metrics.parquet"))
    if cfg.evaluation is not None:  # slo.min_accuracy reads the evaluated accuracy
        from fmbench.report.quality import quality_view, with_accuracy

        metrics = with_accuracy(metrics, quality_view(run.url, cfg))
    key = "fmbench-" + slug(cfg.name)
    report_url = run.path("report.html")
    if not storage.is_remote(report_url):
        report_url = "file://" + report_url
    summary = summary_markdown(metrics, cfg.slo, title=f"{cfg.name}: run {run.run_id}")
    return ArtifactContent(key=key, summary_markdown=summary, table=metrics_table_rows(metrics),
                           report_url=report_url)
