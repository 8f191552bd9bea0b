"""The `fmbench` flow: config -> bucketed prompts -> deploy -> shards -> metrics -> report.

It only composes tasks. Shards on one endpoint run one after another (overlapping shards would
distort each other's latencies); experiments run side by side only when the config allows it.
Endpoints are torn down even when shards fail. Then the run is compared with the previous run
of the same benchmark (regression.md). FMBENCH_TASK_RUNNER=dask runs the tasks on a Dask cluster.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from prefect import allow_failure, flow
from prefect.futures import PrefectFuture
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from fmbench.pipeline import (
    ShardOutcome,
    check_buckets,
    failed_outcome,
    finished_shard,
    needs_endpoint,
    not_torn_down,
    plan_shards,
)
from tasks.artifacts import publish_artifacts_task
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
from tasks.calibration import calibrate_task
from tasks.regression import check_regressions_task


def _task_runner() -> Any:
    """Threads by default; FMBENCH_TASK_RUNNER=dask runs tasks on a local Dask cluster
    (FMBENCH_DASK_WORKERS processes), FMBENCH_TASK_RUNNER=tcp://host:8786 on an existing one."""
    choice = os.environ.get("FMBENCH_TASK_RUNNER", "threads").strip()
    if choice in ("", "threads"):
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if choice == "dask":
        workers = int(os.environ.get("FMBENCH_DASK_WORKERS", "2"))
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 2,
                                              "processes": True, "dashboard_address": None})
    if "://" in choice:
        return DaskTaskRunner(address=choice)
    raise ValueError(f"FMBENCH_TASK_RUNNER={choice!r}: use threads, dask or a tcp:// scheduler address")


@flow(name="fmbench", log_prints=True, task_runner=_task_runner())
def benchmark(
    config: str = "configs/quickstart.yml",
    output: str | None = None,
    run_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] | None = None,
    experiments: list[str] | None = None,
    concurrency_levels: list[Annotated[int, Field(ge=1)]] | None = None,
    requests_per_level: Annotated[int, Field(ge=1)] | None = None,
    overrides: list[str] | None = None,
    command: str | None = None,
    regression_threshold: Annotated[float, Field(ge=0)] = 0.10,
    fail_on_regression: bool = False,
) -> str | State:
    """Benchmark every experiment of a config over its datasets' buckets and concurrency levels,
    then compare the results with the previous run of the same benchmark under the same output.

    Args:
        config: Path (relative to the repo on the worker), s3:// URL, or the YAML text of a config.
        output: Results location, a local directory or s3://bucket/prefix; runs go to
            OUTPUT/NAME/RUN_ID. Empty: the config's output.
        run_id: Reuse a run id to resume that run (measured shards are not sent again).
        experiments: Only these experiments (empty: all).
        concurrency_levels: Replace every experiment's concurrency levels.
        requests_per_level: Replace every experiment's measured requests per shard.
        overrides: Config overrides as key.path=value (YAML value), e.g. experiments.sim.endpoint.ttft_ms=120.
        command: The command line that started the run (stored for reproducibility).
        regression_threshold: Relative change (0.1 = 10%) versus the previous run of p95 latency or TTFT,
            throughput, error rate or cost that is flagged as a regression (if beyond run-to-run noise).
        fail_on_regression: End the flow run Failed when a regression is found (for a Prefect automation).

    Returns:
        The URL of the run's report.md (a Failed state on regression with fail_on_regression).
    """
    cfg = load_config_task(config, overrides, experiments, concurrency_levels, requests_per_level)
    run = open_run_task(cfg, output, run_id, command)
    calibrate_task(run)  # this host's client ceiling, before any shard (execute_shard reads it)

    bucketed = {d.name: bucket_dataset_task.submit(cfg, d.name) for d in cfg.datasets}
    prompt_sets = [store_prompts_task(run, name, fut.result()) for name, fut in bucketed.items()]
    warnings = check_buckets(cfg, prompt_sets)
    files = {ps.dataset: ps.files for ps in prompt_sets}
    plans = {e.name: plan_shards(cfg, prompt_sets, e) for e in cfg.experiments}

    deploys = {name: deploy_task.submit(cfg, name, run) for name, specs in plans.items()
               if needs_endpoint(run, specs)}
    deployed = {name: fut.result(raise_on_failure=False) for name, fut in deploys.items()}

    shards: list[tuple[Any, Any]] = []
    try:
        previous: PrefectFuture | None = None
        for name, specs in plans.items():
            if cfg.parallel_endpoints:
                previous = None  # a chain per endpoint; otherwise one chain for the whole run
            for spec in specs:
                handle = deployed.get(name)
                if handle is None:  # every shard already measured (resumed run): reused from the run
                    shards.append((spec, finished_shard(run, spec.shard_id)))
                    continue
                if isinstance(handle, BaseException):
                    shards.append((spec, handle))
                    continue
                fut = run_shard_task.submit(run, cfg, spec, files[spec.dataset][spec.bucket], handle,
                                            wait_for=[allow_failure(previous)] if previous else None)
                shards.append((spec, fut))
                previous = fut
        outcomes = [_outcome(spec, fut) for spec, fut in shards]
    finally:
        warnings += _teardown_all(cfg, deployed)

    finalize_task(run, cfg, outcomes, prompt_sets, warnings)
    regressions = check_regressions_task.submit(run, regression_threshold).result(raise_on_failure=False)
    report = report_task(run)
    publish_artifacts_task(run, cfg)
    if isinstance(regressions, BaseException):
        print(f"regression check failed, report written without it: {regressions}")
    elif fail_on_regression and regressions.status == "regressed":
        print(f"report: {report}")
        return Failed(message=regressions.summary())
    return report


def _teardown_all(cfg: Any, deployed: dict[str, Any]) -> list[str]:
    """Tear every deployed endpoint down, even when one teardown fails or a second Ctrl-C comes;
    say which endpoints are still running (and costing money)."""
    left, interrupt = [], None
    for handle in deployed.values():
        if isinstance(handle, BaseException):
            continue
        try:
            teardown_task.submit(cfg, handle).result()
        except BaseException as exc:  # noqa: BLE001 - a second Ctrl-C must not skip the others
            interrupt = exc if isinstance(exc, KeyboardInterrupt) else interrupt
            left.append(not_torn_down(handle, exc))
    for message in left:
        print(message)
    if interrupt is not None:
        raise interrupt
    return left


def _outcome(spec: Any, fut: PrefectFuture | ShardOutcome | BaseException) -> ShardOutcome:
    if isinstance(fut, ShardOutcome):
        return fut
    if isinstance(fut, BaseException):
        return failed_outcome(spec, f"endpoint not deployed: {fut}")
    result = fut.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        return failed_outcome(spec, result)
    return result
