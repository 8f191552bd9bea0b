"""The steps of a benchmark as Prefect tasks: `fmbench.sequence.run_sequence` decides their order,
this submits them, so the UI shows one task run per step and per shard."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectFuture

from fmbench import pipeline, progress
from fmbench.config import BenchmarkConfig
from fmbench.deploy import DeployedEndpoint
from fmbench.interrupts import current_stop_scope, reach_workers
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

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner

log = logging.getLogger("fmbench")

#: How long the run's first Dask task waits for the workers' warm-up import (`_warm_workers`).
WARM_WAIT_S = 60.0

T = TypeVar("T")


class Taken(Generic[T]):
    """A submitted step's future that lets go of the task once the run has its result (or error).

    On a Dask cluster, a worker that dies takes the results it held with it, and Dask computes
    again every finished task whose future a client still holds (PrefectHQ/prefect#15442): Prefect
    then runs the task's body a second time, as a new task run. The run holds each deploy's future
    until the endpoint is deleted, so a lost worker would deploy the endpoint anew: a second
    simulator process, or, after the teardown, a SageMaker endpoint nobody deletes (billed). Once
    the result is here, the Dask future is released and the cluster forgets the task.
    """

    def __init__(self, future: PrefectFuture[T]) -> None:
        self._future: PrefectFuture[T] | None = future
        self._value: T | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        """True once the step ended (`fmbench.sequence.settle` waits in slices on this)."""
        return self._future is None or _ended(self._future)

    def result(self, timeout: float | None = None) -> T:
        """The step's value; raises its exception, or TimeoutError while it runs past ``timeout``."""
        future = self._future
        if future is None:
            if self._error is not None:
                raise self._error
            return self._value  # type: ignore[return-value]
        try:
            value = future.result(timeout=timeout)
        except Exception:
            if not _ended(future):  # still running past the timeout
                raise
            try:  # it ended (perhaps just after the timeout): its own outcome, at once
                value = future.result()
            except Exception as exc:
                self._error = exc
                self._let_go(future)
                raise
        self._value = value
        self._let_go(future)
        return value

    def _let_go(self, future: PrefectFuture[T]) -> None:
        self._future = None
        release = getattr(getattr(future, "wrapped_future", None), "release", None)
        if callable(release):  # a Dask future (threads: nothing to forget)
            try:
                release()
            except Exception as exc:  # noqa: BLE001 - the result is here; forgetting it is housekeeping
                log.debug("could not release a finished task's Dask future: %s", exc)


class PrefectSteps:
    """`fmbench.sequence.Steps` as Prefect tasks, inside a flow run."""

    def __init__(self) -> None:
        self._warming: threading.Thread | None = None
        self._reached: set[str] = set()  # the names by which the run reached steps on Dask workers

    def close(self) -> None:
        """After a run that ended normally: let go of what following steps on Dask workers kept on the
        cluster (`fmbench.progress.stop_following`). Best effort: a LocalCluster goes with the run anyway."""
        runner = _dask_runner()
        for name in sorted(self._reached):
            try:
                if runner is not None:
                    progress.stop_following(runner.client, name)
            except Exception as exc:  # noqa: BLE001 - housekeeping of a finished run
                log.debug("could not stop following the workers' progress: %s", exc)
        self._reached.clear()

    def _warmed(self) -> None:
        """Before the run's first task goes to a Dask cluster: the workers' warm-up (`_warm_workers`)
        has ended, or it is given up on after `WARM_WAIT_S`."""
        warming, self._warming = self._warming, None
        if warming is not None:
            warming.join(WARM_WAIT_S)

    def preflight(self, cfg: BenchmarkConfig, output: str | None, run_id: str | None) -> None:
        preflight_task(cfg, output, run_id)

    def open_run(self, cfg: BenchmarkConfig, output: str | None, run_id: str | None,
                 command: str | None) -> RunInfo:
        self._warming = _warm_workers()
        return open_run_task(cfg, output, run_id, command)

    def calibrate(self, run: RunInfo) -> None:
        calibrate_task(run)

    def bucket(self, cfg: BenchmarkConfig, run: RunInfo) -> list[PromptSet]:
        jobs = pipeline.bucketing_jobs(cfg)
        self._warmed()
        bucketed = [Taken(bucket_dataset_task.submit(cfg, name, tok)) for name, tok in jobs]  # side by side
        return [store_prompts_task(run, name, fut.result(), tok) for (name, tok), fut in zip(jobs, bucketed)]

    def deploy(self, cfg: BenchmarkConfig, experiment: str, run: RunInfo) -> Taken[DeployedEndpoint]:
        self._warmed()
        return _stoppable(self._reached, lambda stop_event: deploy_task.submit(cfg, experiment, run, stop_event))

    def shard(self, run: RunInfo, cfg: BenchmarkConfig, spec: Any, prompts_url: str,
              deployed: DeployedEndpoint) -> Taken[ShardOutcome]:
        self._warmed()
        return _stoppable(self._reached, lambda stop_event: run_shard_task.submit(run, cfg, spec, prompts_url,
                                                                                  deployed, stop_event))

    def endpoint_slot(self, cfg: BenchmarkConfig, experiment: str) -> AbstractContextManager[None]:
        name = pipeline.endpoint_lock_name(find_experiment(cfg, experiment))
        if name is None:
            return nullcontext()
        _ensure_limit(name)
        return concurrency(name, occupy=1, strict=True)

    def teardown(self, cfg: BenchmarkConfig, deployed: DeployedEndpoint) -> Taken[list[str]]:
        self._warmed()
        return Taken(teardown_task.submit(cfg, deployed))

    def finalize(self, run: RunInfo, cfg: BenchmarkConfig, outcomes: list[ShardOutcome],
                 prompt_sets: list[PromptSet], warnings: list[str]) -> str:
        return finalize_task(run, cfg, outcomes, prompt_sets, warnings)

    def evaluate(self, run: RunInfo, cfg: BenchmarkConfig, experiment: str,
                 judges: JudgePanel | None) -> Taken[Any]:
        self._warmed()
        return _stoppable(self._reached,
                          lambda stop_event: evaluate_task.submit(run, cfg, experiment, judges, stop_event))

    def regressions(self, run: RunInfo, threshold: float, png: bool = True) -> RegressionReport:
        return check_regressions_task(run, threshold, png=png)

    def report(self, run: RunInfo, png: bool = True) -> str:
        return report_task(run, png)


def _stoppable(reached: set[str], submit: Callable[[str | None], PrefectFuture[T]]) -> Taken[T]:
    """Submit a step that the run's stop must reach (a deploy, a shard, judge calls) wherever it runs.

    In threads, the run's stop scope reaches it through the context Prefect copies into the task.
    On a Dask cluster nothing of this process's context does: the step is registered in the run's
    scope and given the name of the Dask Event by which the scope stops it, and the stopping run
    waits for the task's end as it does for a thread's; what the step reports there comes back to this
    process's progress view (`fmbench.progress.from_workers`). Without this, a run interrupted while a
    worker measured a shard deleted the endpoint under it, and the shard went on sending to it.
    """
    scope = current_stop_scope()
    runner = _dask_runner()
    if scope is None or runner is None:
        return Taken(submit(None))
    event_name, ended = reach_workers(scope, runner.client)
    try:  # what the step reports there (a shard's requests, a deploy's status) shows here
        progress.from_workers(runner.client, event_name)
        reached.add(event_name)
    except Exception as exc:  # noqa: BLE001 - only the live view would miss it
        log.debug("cannot follow the workers' progress: %s", exc)
    try:
        future = submit(event_name)
    except BaseException:
        ended()
        raise
    future.add_done_callback(lambda _: ended())
    return Taken(future)


def _dask_runner() -> DaskTaskRunner | None:
    """The flow run's task runner when it is a DaskTaskRunner, else None (threads, or no flow run).

    Compared by name first, so a run on threads never imports prefect_dask (which may not be installed).
    """
    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx is not None else None
    if type(runner).__name__ != "DaskTaskRunner":
        return None
    from prefect_dask import DaskTaskRunner

    return runner if isinstance(runner, DaskTaskRunner) else None


def _ended(future: PrefectFuture[Any]) -> bool:
    """Whether a submitted task ended: its runner's own future says so without a call to the API."""
    done = getattr(getattr(future, "wrapped_future", None), "done", None)
    return bool(done()) if callable(done) else future.state.is_final()


def _ensure_limit(name: str) -> None:
    """Create the endpoint's global concurrency limit (1) on first use; a limit set by hand is kept."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def _warm_workers() -> threading.Thread | None:
    """On a Dask cluster, have every worker import the tasks now, while this process opens the run
    and calibrates; returns the thread that waits for it (None: nothing to warm). A worker's first
    task otherwise spends seconds importing Prefect and fmbench (more on a loaded machine), so with
    ``parallel_endpoints`` the experiment whose deploy landed on a fresh worker started its chain
    that much after the others and their shards barely overlapped.

    The run's first task is sent only once the warm-up has ended (`PrefectSteps._warmed`): a task
    unpickled on a worker while the warm-up thread there still imported Prefect made the two imports
    meet in Prefect's own circular imports, and Python broke the deadlock in the warm-up ("Failed to
    initialize plugins: deadlock detected by _ModuleLock(...)" on the run's output), or could have
    left the task with a half-initialized module. Best effort: a worker that cannot import them
    fails its first task, as it would have anyway."""
    import asyncio
    import importlib

    runner = _dask_runner()
    if runner is None:  # threads: nothing to warm
        return None

    async def warm() -> None:  # local: sent by value, so unpickling it on the worker imports nothing
        await asyncio.to_thread(importlib.import_module, "tasks.benchmark")  # off the worker's event loop

    def run() -> None:
        try:
            runner.client.run(warm)  # returns when every worker has imported them
        except Exception as exc:  # noqa: BLE001 - only a head start; the tasks import what they need anyway
            log.debug("could not warm the Dask workers: %s", exc)

    thread = threading.Thread(target=run, name="fmbench-warm-workers", daemon=True)
    thread.start()
    return thread
