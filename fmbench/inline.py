"""The steps of a benchmark run in this process, without Prefect (`run_benchmark`, notebooks, tests).

Deploys run in background threads, so the next endpoint can deploy while the current one is
measured; every other step runs in the calling thread. Shards and teardowns are retried as the
Prefect tasks retry them, so both ways of running give the same outcomes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from fmbench import pipeline
from fmbench.config import BenchmarkConfig
from fmbench.deploy import DeployedEndpoint
from fmbench.errors import EndpointConnectionError
from fmbench.pipeline import PromptSet, ShardOutcome
from fmbench.regression import RegressionReport
from fmbench.rundir import RunInfo

T = TypeVar("T")


class Done(Generic[T]):
    """A step that has already run: its value, or the exception it raised."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._value: T | None = None
        self._error: Exception | None = None
        try:
            self._value = fn()
        except Exception as exc:  # noqa: BLE001 - handed to whoever asks for the result
            self._error = exc

    def result(self, timeout: float | None = None) -> T:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def _retrying(fn: Callable[[], T], delays: tuple[float, ...], retry_on: type[Exception] = Exception) -> T:
    for delay in delays:
        try:
            return fn()
        except retry_on:
            time.sleep(delay)
    return fn()


class InlineSteps:
    """`fmbench.sequence.Steps` run directly; use as a context manager (it owns the deploy threads)."""

    def __init__(self) -> None:
        self._deploys = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="fmbench-deploy")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        # The run has stopped every deploy it started; do not wait for threads on the way out.
        self._deploys.shutdown(wait=False, cancel_futures=True)

    def preflight(self, cfg: BenchmarkConfig, output: str | None, run_id: str | None) -> None:
        from fmbench.sequence import check_before_run

        check_before_run(cfg, output, run_id)

    def open_run(self, cfg: BenchmarkConfig, output: str | None, run_id: str | None,
                 command: str | None) -> RunInfo:
        from fmbench.rundir import open_run

        return open_run(cfg, output=output, run_id=run_id, command=command)

    def calibrate(self, run: RunInfo) -> None:
        pipeline.calibrate(run)

    def bucket(self, cfg: BenchmarkConfig, run: RunInfo) -> list[PromptSet]:
        return [pipeline.store_prompts(run, name, pipeline.bucket_dataset(cfg, name, tok), tok)
                for name, tok in pipeline.bucketing_jobs(cfg)]

    def deploy(self, cfg: BenchmarkConfig, experiment: str, run: RunInfo) -> concurrent.futures.Future[DeployedEndpoint]:
        return self._deploys.submit(contextvars.copy_context().run, pipeline.deploy, cfg, experiment, run)

    def shard(self, run: RunInfo, cfg: BenchmarkConfig, spec: Any, prompts_url: str,
              deployed: DeployedEndpoint) -> Done[ShardOutcome]:
        return Done(lambda: _retrying(lambda: pipeline.execute_shard(run, cfg, spec, prompts_url, deployed),
                                      pipeline.SHARD_RETRY_DELAYS_S[:pipeline.SHARD_RETRIES], EndpointConnectionError))

    def endpoint_slot(self, cfg: BenchmarkConfig, experiment: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # one process: the lanes of this run already never share an endpoint

    def teardown(self, cfg: BenchmarkConfig, deployed: DeployedEndpoint) -> Done[list[str]]:
        delays = (pipeline.TEARDOWN_RETRY_DELAY_S,) * pipeline.TEARDOWN_RETRIES
        return Done(lambda: _retrying(lambda: pipeline.teardown(cfg, deployed), delays))

    def finalize(self, run: RunInfo, cfg: BenchmarkConfig, outcomes: list[ShardOutcome],
                 prompt_sets: list[PromptSet], warnings: list[str]) -> str:
        return pipeline.finalize_run(run, cfg, outcomes, prompt_sets, warnings)

    def evaluate(self, run: RunInfo, cfg: BenchmarkConfig, experiment: str, judges: Any) -> Done[Any]:
        from fmbench.quality.evaluate import evaluate_complete

        return Done(lambda: evaluate_complete(run, cfg, experiment, judges))

    def regressions(self, run: RunInfo, threshold: float, png: bool = True) -> RegressionReport:
        from fmbench import regression

        return regression.check_regressions(run.url, regression.Thresholds.uniform(threshold), plots=png)

    def report(self, run: RunInfo, png: bool = True) -> str:
        return pipeline.write_report(run, png)
