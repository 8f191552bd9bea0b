"""Prefect artifacts of a finished run: a markdown summary, a metrics table and a link to the
report, under stable keys so each benchmark's artifacts version over time in the UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from fmbench.config import BenchmarkConfig
from fmbench.pipeline import artifact_contents
from fmbench.rundir import RunInfo


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts_task(run: RunInfo, cfg: BenchmarkConfig) -> str:
    content = artifact_contents(run, cfg)
    create_markdown_artifact(key=f"{content.key}-summary", markdown=content.summary_markdown,
                             description=f"fmbench summary of run {run.run_id}")
    create_table_artifact(key=f"{content.key}-metrics", table=content.table,
                          description=f"fmbench metrics per shard, run {run.run_id}")
    create_link_artifact(key=f"{content.key}-report", link=content.report_url, link_text="fmbench report",
                         description=f"report of run {run.run_id}")
    return content.key
