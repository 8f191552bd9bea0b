"""The steps of a benchmark as Prefect tasks: `fmbench.sequence.run_sequence` decides their order,
this submits them, so the UI shows one task run per step and per shard."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectFuture

from fmbench import pipeline
from fmbench.config import BenchmarkConfig
from fmbench.deploy import DeployedEndpoint
from fmbench.pipeline import PromptSet, ShardOutcome
from fmbench.pipeline.shards import find_experiment
from fmbench.quality.evaluate import JudgePanel
from fmbench.regression import RegressionReport
from fmbench.rundir import RunInfo
from tasks.benchmark import (
    bucket_dataset_task,
    deploy_task,
    evaluate_task,
    finalize_task,
    open_run_task,
    preflight_task,
    report_task,
    run_shard_task,
    store_prompts_task,
    teardown_task,
)
from tasks.calibration import calibrate_task
from tasks.regression import check_regressions_task


class PrefectSteps:
    """`fmbench.sequence.Steps` as Prefect tasks, inside a flow run."""

    def preflight(self, cfg: BenchmarkConfig, output: str | None, run_id: str | None) -> None:
        preflight_task(cfg, output, run_id)

    def open_run(self, cfg: BenchmarkConfig, output: str | None, run_id: str | None,
                 command: str | None) -> RunInfo:
        return open_run_task(cfg, output, run_id, command)

    def calibrate(self, run: RunInfo) -> None:
        calibrate_task(run)

    def bucket(self, cfg: BenchmarkConfig, run: RunInfo) -> list[PromptSet]:
        jobs = pipeline.bucketing_jobs(cfg)
        bucketed = [bucket_dataset_task.submit(cfg, name, tok) for name, tok in jobs]  # side by side
        return [store_prompts_task(run, name, fut.result(), tok) for (name, tok), fut in zip(jobs, bucketed)]

    def deploy(self, cfg: BenchmarkConfig, experiment: str, run: RunInfo) -> PrefectFuture[DeployedEndpoint]:
        return deploy_task.submit(cfg, experiment, run)

    def shard(self, run: RunInfo, cfg: BenchmarkConfig, spec: Any, prompts_url: str,
              deployed: DeployedEndpoint) -> PrefectFuture[ShardOutcome]:
        return run_shard_task.submit(run, cfg, spec, prompts_url, deployed)

    def endpoint_slot(self, cfg: BenchmarkConfig, experiment: str) -> AbstractContextManager[None]:
        name = pipeline.endpoint_lock_name(find_experiment(cfg, experiment))
        if name is None:
            return nullcontext()
        _ensure_limit(name)
        return concurrency(name, occupy=1, strict=True)

    def teardown(self, cfg: BenchmarkConfig, deployed: DeployedEndpoint) -> PrefectFuture[list[str]]:
        return teardown_task.submit(cfg, deployed)

    def finalize(self, run: RunInfo, cfg: BenchmarkConfig, outcomes: list[ShardOutcome],
                 prompt_sets: list[PromptSet], warnings: list[str]) -> str:
        return finalize_task(run, cfg, outcomes, prompt_sets, warnings)

    def evaluate(self, run: RunInfo, cfg: BenchmarkConfig, experiment: str,
                 judges: JudgePanel | None) -> PrefectFuture[Any]:
        return evaluate_task.submit(run, cfg, experiment, judges)

    def regressions(self, run: RunInfo, threshold: float, png: bool = True) -> RegressionReport:
        return check_regressions_task(run, threshold, png=png)

    def report(self, run: RunInfo, png: bool = True) -> str:
        return report_task(run, png)


def _ensure_limit(name: str) -> None:
    """Create the endpoint's global concurrency limit (1) on first use; a limit set by hand is kept."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
