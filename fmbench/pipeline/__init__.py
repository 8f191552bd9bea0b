"""The steps of a benchmark as plain functions, and `run_benchmark`: the one library entry point.

The order they run in is written once, in `fmbench.sequence`; `run_benchmark` runs it here
without Prefect (for the CLI, a REPL or a test), the `fmbench` flow runs it with each step as a
Prefect task. Each step takes and returns small serialisable values (paths, URLs, pydantic
models), so the steps can run in different processes or on different machines. The steps, by
concern: `prepare` (config, calibration), `prompts`, `endpoint` (deploy, teardown), `shards`,
`results` (records, metrics, report).
"""

from __future__ import annotations

from fmbench.config import BenchmarkConfig
from fmbench.pipeline.endpoint import (
    TEARDOWN_RETRIES,
    TEARDOWN_RETRY_DELAY_S,
    deploy,
    endpoint_lock_name,
    not_torn_down,
    teardown,
)
from fmbench.pipeline.prepare import (
    calibrate,
    check_dataset_files,
    check_pricing,
    check_tokenizers,
    config_source_label,
    load_benchmark_config,
)
from fmbench.pipeline.prompts import (
    PromptSet,
    bucket_dataset,
    bucketing_jobs,
    check_buckets,
    dataset_cache_key,
    experiment_tokenizer,
    store_prompts,
    tokenizer_slug,
)
from fmbench.pipeline.results import ArtifactContent, artifact_contents, finalize_run, write_report
from fmbench.pipeline.shards import (
    SHARD_RETRIES,
    SHARD_RETRY_DELAYS_S,
    ShardOutcome,
    check_client_hosts,
    execute_shard,
    failed_outcome,
    finished_shard,
    make_endpoint_client,
    needs_endpoint,
    plan_shards,
    shard_id,
)

__all__ = [
    "SHARD_RETRIES",
    "SHARD_RETRY_DELAYS_S",
    "TEARDOWN_RETRIES",
    "TEARDOWN_RETRY_DELAY_S",
    "ArtifactContent",
    "PromptSet",
    "ShardOutcome",
    "artifact_contents",
    "bucket_dataset",
    "bucketing_jobs",
    "calibrate",
    "check_buckets",
    "check_client_hosts",
    "check_dataset_files",
    "check_pricing",
    "check_tokenizers",
    "config_source_label",
    "dataset_cache_key",
    "deploy",
    "endpoint_lock_name",
    "execute_shard",
    "experiment_tokenizer",
    "failed_outcome",
    "finalize_run",
    "finished_shard",
    "load_benchmark_config",
    "make_endpoint_client",
    "needs_endpoint",
    "not_torn_down",
    "plan_shards",
    "run_benchmark",
    "shard_id",
    "store_prompts",
    "teardown",
    "tokenizer_slug",
    "write_report",
]


def run_benchmark(cfg: BenchmarkConfig, output: str | None = None, run_id: str | None = None,
                  command: str | None = None, preflight: bool = True, png: bool = True) -> str:
    """Run a whole benchmark in this process, without Prefect; returns the report.md URL."""
    from fmbench.inline import InlineSteps
    from fmbench.sequence import run_sequence

    with InlineSteps() as steps:
        return run_sequence(steps, cfg, output=output, run_id=run_id, command=command, preflight=preflight,
                            png=png).report
