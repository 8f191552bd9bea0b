"""The steps of a benchmark as Prefect tasks: `fmbench.sequence.run_sequence` decides their order,
this submits them, so the UI shows one task run per step and per shard."""

from __future__ import annotations

from typing import Any

from prefect.futures import PrefectFuture

from fmbench.config import BenchmarkConfig
from fmbench.deploy import DeployedEndpoint
from fmbench.pipeline import PromptSet, ShardOutcome
from fmbench.regression import RegressionReport
from fmbench.rundir import RunInfo
from tasks.benchmark import (
    bucket_dataset_task,
    deploy_task,
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
        bucketed = {d.name: bucket_dataset_task.submit(cfg, d.name) for d in cfg.datasets}  # side by side
        return [store_prompts_task(run, name, fut.result()) for name, fut in bucketed.items()]

    def deploy(self, cfg: BenchmarkConfig, experiment: str, run: RunInfo) -> PrefectFuture[DeployedEndpoint]:
        return deploy_task.submit(cfg, experiment, run)

    def shard(self, run: RunInfo, cfg: BenchmarkConfig, spec: Any, prompts_url: str,
              deployed: DeployedEndpoint) -> PrefectFuture[ShardOutcome]:
        return run_shard_task.submit(run, cfg, spec, prompts_url, deployed)

    def teardown(self, cfg: BenchmarkConfig, deployed: DeployedEndpoint) -> PrefectFuture[list[str]]:
        return teardown_task.submit(cfg, deployed)

    def finalize(self, run: RunInfo, cfg: BenchmarkConfig, outcomes: list[ShardOutcome],
                 prompt_sets: list[PromptSet], warnings: list[str]) -> str:
        return finalize_task(run, cfg, outcomes, prompt_sets, warnings)

    def regressions(self, run: RunInfo, threshold: float, png: bool = True) -> RegressionReport:
        return check_regressions_task(run, threshold, png=png)

    def report(self, run: RunInfo, png: bool = True) -> str:
        return report_task(run, png)
