"""The order of a benchmark, written once: preflight → open run → calibrate → bucket → plan →
per experiment (deploy → its shards → teardown) → finalize → evaluate (judges deployed → every
experiment's evaluation → judges torn down, when the config asks) → regressions → report.

`run_sequence` drives it through a `Steps` object: `fmbench.inline.InlineSteps` runs the steps in
this process, the Prefect steps in ``flows/`` submit one task per step and per shard. Each
experiment's endpoint lives only as long as its shards, and every path out of a run, Ctrl-C and
SIGTERM included, deletes what the run deployed; the manifest records each endpoint's timeline
(a judge's too) as it happens.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import datetime as dt
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol, TypeVar

from fmbench import progress
from fmbench.config import BenchmarkConfig, instance_count
from fmbench.deploy import ENDED_WITH_ATTEMPT, DeployedEndpoint, EndpointTimeline, deploy_state
from fmbench.deploy.heartbeat import end_heartbeats
from fmbench.errors import EndpointHung
from fmbench.interrupts import StopScope, interrupt_deploy, stop_scope, termination_interrupts
from fmbench.pipeline import (
    PromptSet,
    ShardOutcome,
    check_buckets,
    check_client_hosts,
    experiment_tokenizer,
    failed_outcome,
    finished_shard,
    needs_endpoint,
    not_torn_down,
    plan_shards,
)
from fmbench.pipeline.shards import find_experiment
from fmbench.regression import RegressionReport
from fmbench.rundir import DeletionNote, RunInfo, exclusive_run, new_run_id, noted_deletion

log = logging.getLogger("fmbench")

T_co = TypeVar("T_co", covariant=True)

#: How long an interrupted deploy gets to delete what it created (a deployer notices the
#: interrupt after its poll sleep, then makes a few delete calls).
STOP_DEPLOY_WAIT_S = 120.0


def _now() -> str:
    # Milliseconds: endpoints that follow each other within a second must still order in the timeline.
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


#: How long the main thread waits on a future at a time before it checks for signals.
SIGNAL_POLL_S = 0.5


def settle(future: Any) -> Any:
    """``future.result()``, waited for in short slices.

    A signal (Ctrl-C, SIGTERM) that the kernel delivers to another thread of the process does not
    wake a main thread blocked in an untimed lock wait: Python runs the handler only when the main
    thread next runs bytecode, and a run waiting on a 15-minute deploy would sit out the interrupt
    (seen in CI). Waking every ``SIGNAL_POLL_S`` lets the handler run at once.
    """
    inner = getattr(future, "wrapped_future", future)
    done = getattr(inner, "done", None)
    if not callable(done):
        return future.result()
    while True:
        try:
            return future.result(timeout=SIGNAL_POLL_S)
        except TimeoutError:
            if done():  # it ended just after the timeout, or the step itself raised a TimeoutError
                return future.result()


class Pending(Protocol[T_co]):
    """A step's result that may still be computing (a future, or a value already there)."""

    def result(self, timeout: float | None = None) -> T_co:
        """The value; raises the step's exception, or TimeoutError when not done within ``timeout``."""
        ...


class Steps(Protocol):
    """How each step of a benchmark is executed; `run_sequence` decides their order."""

    def preflight(self, cfg: BenchmarkConfig, output: str | None, run_id: str | None) -> None: ...
    def open_run(self, cfg: BenchmarkConfig, output: str | None, run_id: str | None,
                 command: str | None) -> RunInfo: ...
    def calibrate(self, run: RunInfo) -> None: ...
    def bucket(self, cfg: BenchmarkConfig, run: RunInfo) -> list[PromptSet]: ...
    def deploy(self, cfg: BenchmarkConfig, experiment: str, run: RunInfo) -> Pending[DeployedEndpoint]: ...
    def shard(self, run: RunInfo, cfg: BenchmarkConfig, spec: Any, prompts_url: str,
              deployed: DeployedEndpoint) -> Pending[ShardOutcome]: ...
    def teardown(self, cfg: BenchmarkConfig, deployed: DeployedEndpoint) -> Pending[list[str]]: ...
    def endpoint_slot(self, cfg: BenchmarkConfig, experiment: str) -> AbstractContextManager[None]: ...
    def finalize(self, run: RunInfo, cfg: BenchmarkConfig, outcomes: list[ShardOutcome],
                 prompt_sets: list[PromptSet], warnings: list[str]) -> str: ...
    def evaluate(self, run: RunInfo, cfg: BenchmarkConfig, experiment: str, judges: Any) -> Pending[Any]: ...
    def regressions(self, run: RunInfo, threshold: float, png: bool = True) -> RegressionReport: ...
    def report(self, run: RunInfo, png: bool = True) -> str: ...


class RunResult(NamedTuple):
    """What a finished run produced."""

    run: RunInfo
    report: str
    regressions: RegressionReport | None


def check_before_run(cfg: BenchmarkConfig, output: str | None, run_id: str | None) -> None:
    """The preflight step: fmbench's environment variables, run id, output bucket, tokenizer,
    datasets, credentials and endpoints.

    Raises:
        FMBenchError: one line naming what is wrong and where.
    """
    from fmbench.preflight import check_output, preflight
    from fmbench.settings import check_environment

    check_environment()
    check_output(cfg, output, run_id)
    preflight(cfg, run_id=run_id)


def run_sequence(steps: Steps, cfg: BenchmarkConfig, *, output: str | None = None, run_id: str | None = None,
                 command: str | None = None, preflight: bool = True,
                 regression_threshold: float = 0.10, png: bool = True) -> RunResult:
    """Run a benchmark through ``steps``.

    Args:
        preflight: False when the caller has already run `check_before_run` (the CLI does, before
            it starts Prefect, so bad input fails in seconds).
        png: export the report's and the trend plots' static PNGs, all in the report step with one
            browser under one deadline (False: no browser is started).

    Returns:
        The run, its report.md URL and the regression check (None when the check failed).
    """
    with termination_interrupts(), contextlib.ExitStack() as held:
        if preflight:  # before the run directory exists: bad input leaves nothing behind
            steps.preflight(cfg, output, run_id)
        # In this process (the flow's), not in a step: it is held until the run has ended. A new run
        # is held too, under the id it is about to get: `fmbench cleanup` and a resume of that id in
        # another process both tell it is in progress.
        run_id = run_id or new_run_id()
        hold = held.enter_context(exclusive_run(cfg, output, run_id))
        held.callback(end_heartbeats, run_id)  # (what the run keeps running is no longer "in progress")
        run = steps.open_run(cfg, output, run_id, command)
        if cfg.evaluation is not None:  # `fmbench evaluate` later needs not the config's directory
            from fmbench.quality.evaluate import keep_judge_template

            keep_judge_template(run, cfg)
        check_client_hosts(cfg, run)  # a cluster that cannot write the results fails before measuring
        steps.calibrate(run)  # this host's client ceiling, before any shard
        prompt_sets = steps.bucket(cfg, run)
        warnings = check_buckets(cfg, prompt_sets)
        plans = {e.name: plan_shards(cfg, prompt_sets, e) for e in cfg.experiments}
        progress.run_planned(run.run_id, [s for specs in plans.values() for s in specs])
        lifecycles = Lifecycles(steps, cfg, run, plans, prompt_sets, check_hold=hold.check)
        # Another process that takes the run over measures it from then on: this one stops its shards
        # (`Lifecycles._shard` then raises the loss), deletes its endpoints and writes no report.
        hold.when_lost(lifecycles.in_flight.stop)
        outcomes, left_running = lifecycles.run_all()
        hold.check()
        steps.finalize(run, cfg, outcomes, prompt_sets, warnings + left_running)
        if cfg.evaluation is not None:
            evaluate_run(steps, run, cfg)
            hold.check()
        regressions: RegressionReport | None = None
        try:
            # png=False: the report step exports the trend plots along with its own PNGs, so a run
            # starts one browser, while the report's data is read, and waits on it at most once.
            regressions = steps.regressions(run, regression_threshold, png=False)
        except Exception as exc:  # noqa: BLE001 - the report is written without it
            log.warning("regression check failed, report written without it: %s", exc)
        report = steps.report(run, png)
    return RunResult(run, report, regressions)


def _ended(outcome: ShardOutcome) -> ShardOutcome:
    progress.shard_ended(outcome.shard_id, outcome.experiment, outcome.status, outcome.requests, outcome.errors,
                         cached=outcome.cached, error=outcome.error)
    return outcome


def evaluate_run(steps: Steps, run: RunInfo, cfg: BenchmarkConfig) -> None:
    """Evaluate every experiment's answers (one step each, after all shards so that judging does not
    load the client while it measures). The judges' endpoints live like an experiment's: deployed
    once for all evaluations, deleted after them on every path out, their timelines in the manifest
    (billed create to delete). A failed evaluation is recorded; the report says it is missing."""
    from fmbench.quality import finished_evaluation

    names = [e.name for e in cfg.experiments]
    todo = [n for n in names if finished_evaluation(run, cfg, n) is None]  # a resumed run redoes the rest
    judges = Lifecycles.of_judges(steps, cfg, run, needed=bool(todo))
    try:
        with stop_scope(judges.in_flight):  # judge calls a stop must end before their judges go
            _evaluate_all(steps, run, cfg, names, judges)
    except BaseException:
        # Ctrl-C, SIGTERM (Prefect cancellation) or a bug: no judge may outlive the run, and the
        # run says what it deleted, or what is left, as it does for the experiments' endpoints.
        judges.stop_all()
        raise
    judges.close_each()
    for problem in judges.left_running:
        log.warning("%s", problem)


def _evaluate_all(steps: Steps, run: RunInfo, cfg: BenchmarkConfig, names: list[str], judges: Lifecycles) -> None:
    """Deploy the judges, then evaluate every experiment (see `evaluate_run`)."""
    from fmbench.errors import EvaluationError
    from fmbench.quality import failed_evaluation

    panel = _judge_panel(judges, cfg) if judges.todo else None
    serving = [j.experiment_name for j in cfg.evaluation.judges if j.name in panel.deployed] \
        if panel is not None and cfg.evaluation else []
    judges.worked(serving, ended=False)
    pending = {name: steps.evaluate(run, cfg, name, panel) for name in names}
    for name, p in pending.items():
        try:
            settle(p)
        except EvaluationError as exc:  # its outcome.json names what is missing
            log.warning("%s", exc)
        except Exception as exc:  # noqa: BLE001 - the report is written without this evaluation
            log.warning("evaluation of %s failed, report written without it: %s", name, exc)
            failed_evaluation(run, name, exc)
    judges.worked(serving, ended=True)


def _judge_panel(judges: Lifecycles, cfg: BenchmarkConfig) -> Any:
    """Deploy the judges side by side; one that cannot be deployed is named in the panel's ``failed``."""
    from fmbench.quality.evaluate import JudgePanel

    panel = JudgePanel()
    members = [j for j in cfg.evaluation.judges if j.experiment_name in judges.todo] if cfg.evaluation else []
    for judge in members:
        judges.start(judge.experiment_name)
    for judge in members:
        try:
            panel.deployed[judge.name] = judges.open(judge.experiment_name)
        except Exception as exc:  # noqa: BLE001 - recorded; the other judges and the scores go on
            panel.failed[judge.name] = f"not deployed: {exc}"
    return panel


def _gone(alive: EndpointTimeline, deployed: DeployedEndpoint, note: DeletionNote | None) -> EndpointTimeline:
    """The timeline of an endpoint an earlier attempt left alive that a resumed deploy did not adopt
    but found gone (``deployed.earlier_gone_at``): it deleted it (it had failed), fmbench cleanup had
    deleted it while that attempt was in progress (``note``), or nothing was there (deleted outside
    fmbench at an unknown time, or, when it was never InService, perhaps never created by the killed
    attempt)."""
    life = alive.model_copy(update={"earlier": []})
    if deployed.deleted_failed_earlier:
        return life.model_copy(update={"deleted_at": deployed.earlier_gone_at,
                                       "deleted_by": "the resumed run, which found it failed"})
    if note is not None:
        return life.model_copy(update={"deleted_at": note.deleted_at, "deleted_by": note.deleted_by})
    return life.model_copy(update={"deleted_at": _last_alive(alive), "gone_by": deployed.earlier_gone_at,
                                   "deleted_by": "outside fmbench"})


def _last_alive(life: EndpointTimeline) -> str | None:
    known = [t for t in (life.in_service_at, life.last_shard_at) if t]  # it surely lived until then
    return max(known, key=dt.datetime.fromisoformat) if known else life.created_at


def _ended_with_attempt(timeline: EndpointTimeline, found_at: str) -> EndpointTimeline:
    """An earlier attempt's timeline with its simulated endpoints that were never recorded deleted
    closed: each was a child of that attempt's process and ended with it (a kill), at a time known
    only to lie between the last time it was known alive and ``found_at``, when the resumed run
    found it gone. Nothing of such an endpoint outlives its run, so it is billed no further."""
    lives = [life.model_copy(update={"deleted_at": _last_alive(life), "gone_by": found_at,
                                     "deleted_by": ENDED_WITH_ATTEMPT})
             if life.provider == "simulated" and life.created_at and not life.deleted_at else life
             for life in timeline.lives()]
    return EndpointTimeline.from_lives(lives)


class Lifecycles:
    """Every experiment's endpoint from deploy to teardown, with its shards in between.

    Experiments run one after another (``parallel_endpoints: true``: side by side). While one is
    measured, the next ``deploy_ahead`` endpoints may deploy, started once the current one is
    InService; an endpoint is deleted right after its own last shard.
    """

    def __init__(self, steps: Steps, cfg: BenchmarkConfig, run: RunInfo, plans: dict[str, list[Any]],
                 prompt_sets: list[PromptSet], check_hold: Callable[[], None] = lambda: None) -> None:
        """``check_hold`` raises once the run is another process's (`RunHold.check`): checked before
        each shard, and after one that was stopped."""
        self.steps, self.cfg, self.run, self.plans = steps, cfg, run, plans
        self.check_hold = check_hold
        # Each experiment's shards read the prompts its own tokenizer bucketed.
        self.files = {(ps.dataset, ps.tokenizer): ps.files for ps in prompt_sets}
        self.order = list(plans)
        # A resumed run deploys what still has shards to measure, and the SageMaker endpoints its killed
        # attempt may have left alive (the deploy adopts such an endpoint; it is then deleted with
        # nothing sent). A simulated server died with the process that started it.
        self.before = run.read_manifest().endpoints if run.resumed else {}  # the earlier attempts' timelines
        found_at = _now()
        for name, timeline in list(self.before.items()):
            if name in plans and (closed := _ended_with_attempt(timeline, found_at)) != timeline:
                self.before[name] = closed
                run.record_endpoint(closed)  # (also when the run deploys it no more: it measured everything)
        self.left_alive = {n: alive[-1] for n, t in self.before.items()  # to adopt (`_ended`: the deleted ones)
                           if (alive := [life for life in t.lives() if life.provider == "sagemaker"
                                         and life.created_at and not life.deleted_at])}
        self.todo = [n for n in self.order if n in self.left_alive or needs_endpoint(run, plans[n])]
        self.deploys: dict[str, Pending[DeployedEndpoint]] = {}
        self.timelines: dict[str, EndpointTimeline] = {}
        self.closed: set[str] = set()
        self.failed_deploys: set[str] = set()  # whose failure was said
        self.left_running: list[str] = []
        #: Experiments whose endpoint stopped answering in a shard, every attempt of it (`EndpointHung`),
        #: with that shard: their other shards are not sent (each would wait out its timeouts while the
        #: endpoint bills), so the endpoint is deleted now.
        self.hung: dict[str, str] = {}
        self._lock = threading.Lock()
        self.in_flight = StopScope()  # its shards (judges: judge calls) running now; stopped before any endpoint goes

    @classmethod
    def of_judges(cls, steps: Steps, cfg: BenchmarkConfig, run: RunInfo, needed: bool) -> Lifecycles:
        """The lifecycles of the evaluation's judge endpoints: `start`/`open` each, `worked` while
        they judge, `close_each` at the end. Their timelines are keyed judge-<name>.

        Args:
            needed: some evaluation is still to do (every judge is deployed); else only the SageMaker
                judges a killed attempt of this run left alive are (adopted, then deleted).
        """
        names = [j.experiment_name for j in cfg.evaluation.judges] if cfg.evaluation else []
        judges = cls(steps, cfg, run, {n: [] for n in names}, [])
        judges.todo = names if needed else [n for n in names if n in judges.left_alive]
        return judges

    def run_all(self) -> tuple[list[ShardOutcome], list[str]]:
        """Run every experiment; returns the shard outcomes in plan order, and a line per endpoint
        whose teardown did not finish (it may still be billed)."""
        outcomes: dict[str, list[ShardOutcome]] = {}
        # The shards started from here (in threads, Prefect tasks) see the run's stop scope.
        with stop_scope(self.in_flight):
            try:
                if self.cfg.parallel_endpoints or self.cfg.deploy_ahead == "all":
                    for name in self.todo:
                        self._start_deploy(name)
                if self.cfg.parallel_endpoints:
                    pool = concurrent.futures.ThreadPoolExecutor(max(1, len(self.order)), "fmbench-lane")
                    try:
                        lanes = {n: pool.submit(contextvars.copy_context().run, self.lifecycle, n) for n in self.order}
                        outcomes = {n: settle(lane) for n, lane in lanes.items()}
                    finally:
                        pool.shutdown(wait=False)  # interrupted: delete the endpoints first, lanes then end
                else:
                    for name in self.order:
                        outcomes[name] = self.lifecycle(name)
            except BaseException:
                # Ctrl-C, SIGTERM (Prefect cancellation) or a bug: nothing the run deployed may outlive it.
                self.stop_all()
                raise
        return [o for n in self.order for o in outcomes[n]], self.left_running

    # ------------------------------------------------------------ one experiment

    def lifecycle(self, name: str) -> list[ShardOutcome]:
        """Deploy → shards → teardown of one experiment; the finally covers the deploy wait."""
        specs = self.plans[name]
        if name not in self.todo:
            return [_ended(o) for s in specs if (o := finished_shard(self.run, s.shard_id)) is not None]
        self._start_deploy(name)
        try:
            try:
                deployed = settle(self.deploys[name])
            except Exception as exc:  # noqa: BLE001 - a failed deploy fails its shards, not the run
                progress.deploy_ended(name, ok=False)
                self._deploy_ahead(name)
                self._deploy_failed(name, exc)
                return [_ended(finished_shard(self.run, s.shard_id) or failed_outcome(s, f"endpoint not deployed: {exc}"))
                        for s in specs]
            progress.deploy_ended(name, ok=True)
            self._deploy_ahead(name)
            self._in_service(name, deployed)
            # One run at a time on an existing endpoint (other runs measuring it wait here).
            with self.steps.endpoint_slot(self.cfg, name):
                return [self._shard(name, spec, deployed) for spec in specs]
        except BaseException:
            # Interrupted (or a bug) while a shard may still measure in another thread: it stops
            # before the endpoint goes, or its requests would fail there and count as the endpoint's.
            self.in_flight.stop()
            raise
        finally:
            self._close(name)

    def start(self, name: str) -> None:
        """Start deploying ``name``'s endpoint (in the background where the steps allow)."""
        self._start_deploy(name)

    def open(self, name: str) -> DeployedEndpoint:
        """``name``'s endpoint once it takes requests, recorded in service.

        Raises:
            Exception: the deploy's error (recorded: what it created is deleted).
        """
        self._start_deploy(name)
        try:
            deployed = settle(self.deploys[name])
        except Exception as exc:
            progress.deploy_ended(name, ok=False)
            self._deploy_failed(name, exc)
            raise
        progress.deploy_ended(name, ok=True)
        self._in_service(name, deployed)
        return deployed

    def worked(self, names: list[str], ended: bool) -> None:
        """Record that these endpoints start (``ended``: stopped) serving the run's requests."""
        for name in names:
            if name in self.timelines:
                self._update(name, **{"last_shard_at" if ended else "first_shard_at": _now()})

    def _start_deploy(self, name: str) -> None:
        with self._lock:
            if name in self.deploys or name in self.closed:
                return
            started = _now()
            self.deploys[name] = self.steps.deploy(self.cfg, name, self.run)
        experiment = find_experiment(self.cfg, name)
        endpoint = experiment.endpoint
        judge = None if any(e.name == name for e in self.cfg.experiments) else \
            next((j.name for j in self.cfg.evaluation.judges if j.experiment_name == name), None) \
            if self.cfg.evaluation else None
        if endpoint.provider == "simulated" or (endpoint.provider == "sagemaker"
                                                and not getattr(endpoint, "endpoint_name", None)):
            # Only endpoints the run creates have a lifetime (and a bill) of the run's making.
            # What the config says is recorded now, so a killed run's manifest names what it was deploying.
            alive = self.left_alive.get(name)  # the endpoint the deploy adopts if it is still there
            named = None
            if endpoint.provider == "sagemaker":  # (its name is known before it exists: cleanup can record it)
                from fmbench.deploy.sagemaker import resource_name

                named = resource_name(name, self.run.run_id)
            self._record(EndpointTimeline(
                experiment=name, provider=endpoint.provider, judge=judge, endpoint_name=named,
                region=getattr(endpoint, "region", None),
                instance_type=getattr(endpoint, "instance_type", None),
                # the count its price per hour is for (`instance_count`): its bill and its shards' cost agree
                instance_count=instance_count(endpoint, experiment.pricing), created_at=started,
                first_shard_at=alive.first_shard_at if alive else None,
                last_shard_at=alive.last_shard_at if alive else None, earlier=self._ended(name)))

    def _ended(self, name: str) -> list[EndpointTimeline]:
        """The endpoints earlier attempts of this run billed for ``name`` and deleted (by their teardown,
        or by ``fmbench cleanup`` after a kill): a new deploy's timeline keeps them, so the run's cost
        still counts them."""
        before = self.before.get(name)
        # (one created and not deleted is the endpoint this deploy adopts: the same life goes on)
        return [t for t in before.lives() if t.created_at and t.deleted_at] if before is not None else []

    def _deploy_ahead(self, name: str) -> None:
        if self.cfg.parallel_endpoints or self.cfg.deploy_ahead == "all" or name not in self.todo:
            return  # every deploy started at the beginning
        ahead = int(self.cfg.deploy_ahead)
        i = self.todo.index(name)
        for nxt in self.todo[i + 1:i + 1 + ahead]:
            self._start_deploy(nxt)

    def _shard(self, name: str, spec: Any, deployed: DeployedEndpoint) -> ShardOutcome:
        done = finished_shard(self.run, spec.shard_id)
        if done is not None:  # measured before the run was interrupted: never sent again
            return _ended(done)
        if name in self.hung:
            return _ended(failed_outcome(spec, f"not measured: the endpoint stopped answering in shard "
                                               f"{self.hung[name]}"))
        self.check_hold()
        if name in self.timelines and self.timelines[name].first_shard_at is None:
            self._update(name, first_shard_at=_now())
        try:
            outcome = settle(self.steps.shard(self.run, self.cfg, spec, self._prompts_url(name, spec), deployed))
        except Exception as exc:  # noqa: BLE001 - a failed shard is recorded; the others still run
            self.check_hold()  # (stopped because another process took the run over: not a failed shard)
            outcome = failed_outcome(spec, exc)
            if isinstance(exc, EndpointHung):
                self.hung[name] = spec.shard_id
                log.warning("experiment %s: its endpoint stopped answering in shard %s, every attempt; its other "
                            "shards are not measured, and its endpoint is deleted", name, spec.shard_id)
        self._update(name, last_shard_at=_now())
        return _ended(outcome)

    def _prompts_url(self, name: str, spec: Any) -> str:
        experiment = next(e for e in self.cfg.experiments if e.name == name)
        return self.files[(spec.dataset, experiment_tokenizer(self.cfg, experiment))][spec.bucket]

    # ------------------------------------------------------------ ending an endpoint's life

    def _close(self, name: str) -> None:
        """Delete what the experiment deployed, or stop its deploy; once per experiment."""
        with self._lock:
            if name in self.closed or name not in self.deploys:
                return
            self.closed.add(name)
        deployed = self._finish_deploy(name)
        if deployed is not None:
            self._teardown(name, deployed)

    def close_each(self) -> None:
        """Delete every endpoint still alive, or stop its deploy; lines about those that may be left
        running go to ``left_running``."""
        interrupt = self._close_each()
        if interrupt is not None:
            raise interrupt

    def _close_each(self) -> BaseException | None:
        interrupt: BaseException | None = None
        for name in list(self.deploys):
            try:
                self._close(name)
            except BaseException as exc:  # noqa: BLE001 - a second Ctrl-C must not skip the others
                interrupt = interrupt or exc
        return interrupt

    def stop_all(self) -> None:
        """On the way out of an interrupted or failed run: stop the shards still measuring, delete every
        endpoint still alive, or stop its deploy, then say that all are deleted or which may still run
        (billed)."""
        self.in_flight.stop()
        interrupt = self._close_each()
        if self.left_running:
            log.warning("stopped early; still running (billed until deleted):\n  %s", "\n  ".join(self.left_running))
        else:
            log.warning("stopped early: every endpoint this run deployed is deleted")
        if interrupt is not None:
            raise interrupt

    def _finish_deploy(self, name: str) -> DeployedEndpoint | None:
        """The deployed endpoint; a deploy still in progress is interrupted (its deployer deletes
        what it created) and awaited."""
        pending = self.deploys[name]
        try:
            return pending.result(timeout=0)
        except TimeoutError:
            pass
        except BaseException as exc:  # noqa: BLE001 - failed or interrupted: the deployer removed what it made
            if name not in self.failed_deploys:  # not said yet: e.g. stopped on a Dask worker, whose log is not here
                log.warning("%s: its deploy ended: %s", self._label(name), exc)
                self._deploy_ended(name, exc)
            return None
        reached = interrupt_deploy(name)
        log.warning("%s: deploy %s; waiting for it to delete what it created", self._label(name),
                    "interrupted" if reached else "still running (not in this process)")
        try:
            deployed = pending.result(timeout=STOP_DEPLOY_WAIT_S)
        except TimeoutError:
            message = (f"{self._label(name)}: its interrupted deploy did not stop within {STOP_DEPLOY_WAIT_S:.0f} s; "
                       "its endpoint may still be running (fmbench cleanup lists what is left)")
            self._update(name, delete_error=message)
            self._still_running(message)
            return None
        except BaseException as exc:  # noqa: BLE001 - it stopped and deleted what it had created
            log.warning("%s: deploy stopped; what it had created is deleted", self._label(name))
            self._deploy_ended(name, exc)
            return None
        return deployed

    def _teardown(self, name: str, deployed: DeployedEndpoint) -> None:
        try:
            removed = settle(self.steps.teardown(self.cfg, deployed))
        except BaseException as exc:
            message = not_torn_down(deployed, exc, self._label(name))
            self._update(name, delete_error=message)
            self._still_running(message)
            if not isinstance(exc, Exception):
                raise
            return
        if deployed.keep or not deployed.created:
            return
        life = self.timelines.get(name)
        note = noted_deletion(self.run.url, deployed.endpoint_name, life.created_at if life else None)
        if note is not None:  # deleted while the run was in progress (fmbench cleanup --include-live)
            self._update(name, deleted_at=note.deleted_at, deleted_by=note.deleted_by)
            log.warning("%s: its endpoint was deleted by %s at %s, while the run was in progress; billed up to then",
                        self._label(name), note.deleted_by, note.deleted_at)
            return
        self._update(name, deleted_at=_now())
        log.info("%s: deleted %s", self._label(name), ", ".join(removed) or "its endpoint")

    def _still_running(self, message: str) -> None:
        """Say that an endpoint may still be running, billed until deleted: in the run's warnings
        (``left_running``) and in the log."""
        self.left_running.append(message)
        log.warning("%s", message)

    def _label(self, name: str) -> str:
        """How messages name an endpoint's owner: ``experiment NAME``, or ``judge NAME`` for a judge's
        (whose endpoint goes by judge-NAME)."""
        judge = next((j for j in self.cfg.evaluation.judges if j.experiment_name == name), None) \
            if self.cfg.evaluation else None
        return f"judge {judge.name}" if judge is not None else f"experiment {name}"

    # ------------------------------------------------------------ the timeline in the manifest

    def _in_service(self, name: str, deployed: DeployedEndpoint) -> None:
        if name not in self.timelines:
            return
        kept = deployed.keep and bool(deployed.created)
        changes = self._not_adopted(name, deployed, None) if deployed.earlier_gone_at else {}
        self._update(name, provider=deployed.provider, endpoint_name=deployed.endpoint_name,
                     region=deployed.region or self.timelines[name].region,
                     instance_type=deployed.instance_type or self.timelines[name].instance_type,
                     # a deployer that reports the instance type reports the count too
                     instance_count=deployed.instance_count if deployed.instance_type
                     else self.timelines[name].instance_count,
                     adopted=deployed.adopted, created_at=deployed.created_at or self.timelines[name].created_at,
                     in_service_at=deployed.in_service_at or _now(),
                     delete_error="kept (keep_endpoint): billed until you delete it" if kept else None, **changes)

    def _deploy_failed(self, name: str, error: BaseException) -> None:
        log.warning("%s: deploy failed%s: %s", self._label(name),
                    ", its shards are recorded failed" if self.plans.get(name) else "", error)
        self.failed_deploys.add(name)
        self._deploy_ended(name, error)

    def _deploy_ended(self, name: str, error: BaseException) -> None:
        """Record a deploy that failed or was interrupted. It deleted what it had created, but for what
        its error says is left (`deploy_state`: still billed). Its endpoint's timeline then ends now;
        it is the adopted endpoint's when the deploy had adopted one, and bills nothing when the deploy
        never reached CreateEndpoint."""
        if name not in self.timelines or self.timelines[name].deleted_at is not None:
            return
        state = deploy_state(error)
        changes: dict[str, Any] = {"deleted_at": _now(), **self._not_adopted(name, state, error)}
        if state is not None and state.adopted:  # it was the earlier attempt's endpoint, adopted, whose life goes on
            changes.update(adopted=True, created_at=state.created_at or self.timelines[name].created_at,
                           endpoint_name=state.endpoint_name,
                           in_service_at=self.left_alive[name].in_service_at if name in self.left_alive else None)
        left = [c for c in state.created if c.startswith("endpoint:")] if state is not None else []
        if state is not None and not state.adopted and not state.created_at and not left:
            changes.update(created_at=None, deleted_at=None, never_created=True)  # nothing billed
        if left:
            message = (f"{self._label(name)}: its deploy ended and could not delete {', '.join(left)}: still "
                       "running, billed until deleted (fmbench cleanup lists it)")
            changes.update(deleted_at=None, delete_error=message)
            self._still_running(message)
        self._update(name, **changes)

    def _not_adopted(self, name: str, state: DeployedEndpoint | None, error: BaseException | None) -> dict[str, Any]:
        """The timeline changes for an endpoint an earlier attempt left alive that this deploy did not
        adopt: its life joins the timeline's earlier ones (to when the deploy found it gone, or, when
        the deploy ended before it looked or found it and did not adopt it, still billing), and this
        endpoint's shards are its own."""
        alive = self.left_alive.get(name)
        if alive is None or (state is not None and state.adopted):
            return {}
        if state is not None and state.earlier_gone_at:
            life = _gone(alive, state, noted_deletion(self.run.url, alive.endpoint_name, alive.created_at))
        else:
            reason = "interrupted" if not isinstance(error, Exception) else str(error) or type(error).__name__
            what = f"endpoint {alive.endpoint_name}" if alive.endpoint_name else "the endpoint"
            if state is not None and state.found_earlier:
                how, alive_now = "found it and did not adopt it", "it is still running"
            else:
                how, alive_now = "ended before it looked", "it may still be running"
            message = (f"{self._label(name)}: {what} an earlier attempt of this run left was not adopted, as the "
                       f"deploy {how} ({reason}): {alive_now}, billed until deleted (fmbench cleanup lists it)")
            life = alive.model_copy(update={"earlier": [], "delete_error": message})
            self._still_running(message)
        return {"first_shard_at": None, "last_shard_at": None, "earlier": [*self.timelines[name].earlier, life]}

    def _update(self, name: str, **changes: Any) -> None:
        if name in self.timelines:
            self._record(self.timelines[name].model_copy(update=changes))

    def _record(self, timeline: EndpointTimeline) -> None:
        with self._lock:  # the manifest is written in the order the changes happen
            self.timelines[timeline.experiment] = timeline
            self.run.record_endpoint(timeline)
