"""Prefect tasks of the benchmark: each wraps one `fmbench.pipeline` step and carries its
retry and cache policy on the decorator, with no logic of its own."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from fmbench import pipeline
from fmbench.config import BenchmarkConfig
from fmbench.deploy import DeployedEndpoint
from fmbench.errors import EndpointConnectionError
from fmbench.pipeline import PromptSet, ShardOutcome
from fmbench.quality.evaluate import (
    EvaluationOutcome,
    JudgePanel,
    evaluate_complete,
)
from fmbench.rundir import RunInfo, open_run
from fmbench.sequence import check_before_run


def _dataset_key(context: Any, parameters: dict[str, Any]) -> str:
    # Across runs: same dataset content, template, buckets and tokenizer (vocabulary) -> same prompts.
    return "fmbench-prompts-" + pipeline.dataset_cache_key(parameters["cfg"], parameters["dataset_name"],
                                                           parameters.get("tokenizer"))


# Shards and evaluations are not cached by Prefect: the run directory is their one record
# (`finished_shard`, `finished_evaluation`), and a resumed run reuses what it holds there. A Prefect
# cache entry outlives it: a shard's result file deleted would stand measured, and an evaluation done
# before a resume measured more shards would hide their answers.


def _retry_if_endpoint_down(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except EndpointConnectionError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is not retried
        return False
    return False


@task(name="load-config", cache_policy=NO_CACHE)
def load_config_task(config: str | BenchmarkConfig, overrides: list[str] | None = None, experiments: list[str] | None = None,
                     concurrency_levels: list[int] | None = None,
                     requests_per_level: int | None = None) -> BenchmarkConfig:
    return pipeline.load_benchmark_config(config, overrides, experiments, concurrency_levels, requests_per_level)


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(cfg: BenchmarkConfig, output: str | None, run_id: str | None) -> None:
    check_before_run(cfg, output, run_id)


@task(name="open-run", cache_policy=NO_CACHE)
def open_run_task(cfg: BenchmarkConfig, output: str | None, run_id: str | None, command: str | None) -> RunInfo:
    return open_run(cfg, output=output, run_id=run_id, command=command)


@task(name="bucket-dataset", cache_key_fn=_dataset_key, persist_result=True, task_run_name="bucket-{dataset_name}")
def bucket_dataset_task(cfg: BenchmarkConfig, dataset_name: str,
                        tokenizer: str | None = None) -> dict[str, list[dict[str, Any]]]:
    return pipeline.bucket_dataset(cfg, dataset_name, tokenizer)


@task(name="store-prompts", cache_policy=NO_CACHE, task_run_name="store-prompts-{dataset_name}")
def store_prompts_task(run: RunInfo, dataset_name: str, bucketed: dict[str, list[dict[str, Any]]],
                       tokenizer: str | None = None) -> PromptSet:
    return pipeline.store_prompts(run, dataset_name, bucketed, tokenizer)


@task(name="deploy-endpoint", cache_policy=NO_CACHE, task_run_name="deploy-{experiment_name}")
def deploy_task(cfg: BenchmarkConfig, experiment_name: str, run: RunInfo,
                stop_event: str | None = None) -> DeployedEndpoint:
    return pipeline.deploy(cfg, experiment_name, run, stop_event)


@task(name="inference-shard", cache_policy=NO_CACHE, retries=pipeline.SHARD_RETRIES,
      retry_delay_seconds=list(pipeline.SHARD_RETRY_DELAYS_S), retry_condition_fn=_retry_if_endpoint_down,
      task_run_name="shard-{spec.shard_id}")
def run_shard_task(run: RunInfo, cfg: BenchmarkConfig, spec: Any, prompts_url: str,
                   deployed: DeployedEndpoint, stop_event: str | None = None) -> ShardOutcome:
    return pipeline.execute_shard(run, cfg, spec, prompts_url, deployed, stop_event)


@task(name="teardown-endpoint", cache_policy=NO_CACHE, retries=pipeline.TEARDOWN_RETRIES,
      retry_delay_seconds=pipeline.TEARDOWN_RETRY_DELAY_S,
      task_run_name="teardown-{deployed.experiment}")
def teardown_task(cfg: BenchmarkConfig, deployed: DeployedEndpoint) -> list[str]:
    return pipeline.teardown(cfg, deployed)


@task(name="finalize-run", cache_policy=NO_CACHE)
def finalize_task(run: RunInfo, cfg: BenchmarkConfig, outcomes: list[ShardOutcome],
                  prompt_sets: list[PromptSet], warnings: list[str]) -> str:
    return pipeline.finalize_run(run, cfg, outcomes, prompt_sets, warnings)


@task(name="evaluate-answers", cache_policy=NO_CACHE, task_run_name="evaluate-{experiment}")
def evaluate_task(run: RunInfo, cfg: BenchmarkConfig, experiment: str, judges: JudgePanel | None,
                  stop_event: str | None = None) -> EvaluationOutcome:
    return evaluate_complete(run, cfg, experiment, judges, stop_event)


@task(name="render-report", cache_policy=NO_CACHE)
def report_task(run: RunInfo, png: bool = True) -> str:
    return pipeline.write_report(run, png)
