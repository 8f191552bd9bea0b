"""The `fmbench` flow: load the config, then run the library's one sequencing of a benchmark
(`fmbench.sequence.run_sequence`) with each step as a Prefect task, and publish artifacts.

Each experiment's endpoint lives from its deploy to right after its last shard; the next one
deploys while the current one is measured (``deploy_ahead``). Shards on one endpoint run one after
another; experiments run side by side only with ``parallel_endpoints``. The run is compared with
the previous run of the same benchmark (regression.md). FMBENCH_TASK_RUNNER=dask runs the tasks on
a Dask cluster.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.steps import PrefectSteps
from fmbench.config import BenchmarkConfig
from fmbench.names import RUN_ID_PATTERN
from fmbench.sequence import run_sequence
from fmbench.settings import task_runner_choice
from tasks.artifacts import publish_artifacts_task
from tasks.benchmark import load_config_task


def _task_runner() -> Any:
    """Threads by default; FMBENCH_TASK_RUNNER=dask runs tasks on a local Dask cluster
    (FMBENCH_DASK_WORKERS processes), FMBENCH_TASK_RUNNER=tcp://host:8786 on an existing one
    (`fmbench.settings.task_runner_choice`; a bad value is a ConfigError naming the variable)."""
    choice = task_runner_choice()
    if choice.kind == "threads":
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if choice.kind == "dask":
        return DaskTaskRunner(cluster_kwargs={"n_workers": choice.workers, "threads_per_worker": 2,
                                              "processes": True, "dashboard_address": None})
    return DaskTaskRunner(address=choice.address)


class _RunnerOfTheRun(ThreadPoolTaskRunner[Any]):
    """Stands in for the flow's task runner: Prefect starts each run on ``task_runner.duplicate()``,
    which here is the runner FMBENCH_TASK_RUNNER names at that moment (`_task_runner`), so a variable
    set after this module was imported (a notebook, a test, a long-lived process) still chooses it.
    A bad value fails the run as it starts, naming the variable."""

    def duplicate(self) -> Any:
        return _task_runner()


_RUNNER: Any = _RunnerOfTheRun()  # Any, as `_task_runner`'s: Prefect's runner types are invariant in their futures


@flow(name="fmbench", log_prints=True, task_runner=_RUNNER)
def benchmark(
    config: str | BenchmarkConfig = "configs/quickstart.yml",
    output: str | None = None,
    run_id: Annotated[str, Field(pattern=RUN_ID_PATTERN)] | None = None,
    experiments: list[str] | None = None,
    concurrency_levels: list[Annotated[int, Field(ge=1)]] | None = None,
    requests_per_level: Annotated[int, Field(ge=1)] | None = None,
    overrides: list[str] | None = None,
    command: str | None = None,
    regression_threshold: Annotated[float, Field(ge=0)] = 0.10,
    fail_on_regression: bool = False,
    preflight: bool = True,
    png: bool = True,
) -> str | State:
    """Benchmark every experiment of a config over its datasets' buckets and concurrency levels,
    then compare the results with the previous run of the same benchmark under the same output.

    Args:
        config: Path (relative to the repo on the worker), s3:// URL, or the YAML text of a config; or
            the whole config as a form (choose BenchmarkConfig): datasets, experiments, SLOs.
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
        preflight: Check tokenizer, datasets, credentials and endpoints before the run (off only when the
            caller already did, as `fmbench run` does before it starts Prefect).
        png: Export static PNG plots (needs Chromium); off, the report has only its interactive figures.

    Returns:
        The URL of the run's report.md (a Failed state on regression with fail_on_regression).
    """
    cfg = load_config_task(config, overrides, experiments, concurrency_levels, requests_per_level)
    steps = PrefectSteps()
    result = run_sequence(steps, cfg, output=output, run_id=run_id, command=command,
                          preflight=preflight, regression_threshold=regression_threshold, png=png)
    steps.close()
    publish_artifacts_task(result.run, cfg)
    if fail_on_regression and result.regressions is not None and result.regressions.status == "regressed":
        print(f"report: {result.report}")
        return Failed(message=result.regressions.summary())
    return result.report
