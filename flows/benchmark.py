"""The `fmbench` flow: config -> bucketed prompts -> deploy -> shards -> metrics -> report.

It only composes tasks. Shards on one endpoint run one after another (overlapping shards would
distort each other's latencies); experiments run side by side only when the config allows it.
Endpoints are torn down even when shards fail.
"""

from __future__ import annotations

from typing import Any

from prefect import allow_failure, flow
from prefect.futures import PrefectFuture

from fmbench.pipeline import ShardOutcome, check_buckets, failed_outcome, plan_shards
from tasks.benchmark import (
    bucket_dataset_task,
    deploy_task,
    finalize_task,
    load_config_task,
    open_run_task,
    report_task,
    run_shard_task,
    store_prompts_task,
    teardown_task,
)


@flow(name="fmbench", log_prints=True)
def benchmark(
    config: str = "configs/quickstart.yml",
    output: str | None = None,
    run_id: str | None = None,
    experiments: list[str] | None = None,
    concurrency_levels: list[int] | None = None,
    requests_per_level: int | None = None,
    overrides: list[str] | None = None,
    command: str | None = None,
) -> str:
    """Benchmark every experiment of a config over its datasets' buckets and concurrency levels.

    Args:
        config: Path or URL of a YAML config, or the config itself as YAML text.
        output: Where results go (local directory or s3://bucket/prefix); default: the config's.
        run_id: Reuse a run id to resume that run (measured shards are not sent again).
        experiments: Only these experiments (default: all).
        concurrency_levels: Replace every experiment's concurrency levels.
        requests_per_level: Replace every experiment's measured requests per shard.
        overrides: Config overrides as key.path=value (YAML values).
        command: The command line that started the run (stored for reproducibility).

    Returns:
        The URL of the run's report.md.
    """
    cfg = load_config_task(config, overrides, experiments, concurrency_levels, requests_per_level)
    run = open_run_task(cfg, output, run_id, command)

    bucketed = {d.name: bucket_dataset_task.submit(cfg, d.name) for d in cfg.datasets}
    prompt_sets = [store_prompts_task(run, name, fut.result()) for name, fut in bucketed.items()]
    warnings = check_buckets(cfg, prompt_sets)
    files = {ps.dataset: ps.files for ps in prompt_sets}
    plans = {e.name: plan_shards(cfg, prompt_sets, e) for e in cfg.experiments}

    deploys = {name: deploy_task.submit(cfg, name, run) for name, specs in plans.items() if specs}
    deployed = {name: fut.result(raise_on_failure=False) for name, fut in deploys.items()}

    shards: list[tuple[Any, PrefectFuture | BaseException]] = []
    try:
        previous: PrefectFuture | None = None
        for name, specs in plans.items():
            if cfg.parallel_endpoints:
                previous = None  # a chain per endpoint; otherwise one chain for the whole run
            for spec in specs:
                handle = deployed[name]
                if isinstance(handle, BaseException):
                    shards.append((spec, handle))
                    continue
                fut = run_shard_task.submit(run, cfg, spec, files[spec.dataset][spec.bucket], handle,
                                            wait_for=[allow_failure(previous)] if previous else None)
                shards.append((spec, fut))
                previous = fut
        outcomes = [_outcome(spec, fut) for spec, fut in shards]
    finally:
        for handle in deployed.values():
            if not isinstance(handle, BaseException):
                teardown_task.submit(cfg, handle).wait()

    finalize_task(run, cfg, outcomes, prompt_sets, warnings)
    return report_task(run)


def _outcome(spec: Any, fut: PrefectFuture | BaseException) -> ShardOutcome:
    if isinstance(fut, BaseException):
        return failed_outcome(spec, f"endpoint not deployed: {fut}")
    result = fut.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        return failed_outcome(spec, result)
    return result
