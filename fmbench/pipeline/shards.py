"""The shard steps: plan an experiment's shards, measure one, and record how each ended.

A shard is one experiment × dataset × bucket × level; `execute_shard` measures it with the load
engine and stores its records and `ShardOutcome` in the run, so a resumed run reuses it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fmbench import progress, storage
from fmbench.config import BedrockEndpoint, BenchmarkConfig, ExperimentConfig, bucket_label
from fmbench.deploy import DeployedEndpoint
from fmbench.errors import EndpointConnectionError, EndpointHung, silent_timeout
from fmbench.interrupts import StopScope, current_stop_scope, worker_stop_scope
from fmbench.machine import Sentinel
from fmbench.pipeline.prompts import PromptSet, experiment_tokenizer
from fmbench.rundir import RunInfo, json_problem, set_aside_file, set_aside_files, utc_now

log = logging.getLogger("fmbench")

#: A shard whose every request failed to connect, or that lost its endpoint mid-shard
#: (`lost_endpoint`), is measured again this many times, after these delays (the endpoint may be
#: restarting); the Prefect task and the inline steps both use them.
SHARD_RETRIES = 2
SHARD_RETRY_DELAYS_S = (2.0, 10.0)
#: A shard whose last requests all failed to connect, at least this many and at least as many as it
#: keeps in flight, lost its endpoint: it stopped accepting connections and did not come back before
#: the shard ran out of requests. Its records say nothing about the endpoint's error rate or speed
#: (the refusals are as fast as the client can send), so the attempt is set aside and the shard measured
#: again like one whose endpoint was down from the start; the report says it happened.
LOST_ENDPOINT_MIN_REQUESTS = 5
#: How often a running shard logs its requests done (the progress view updates every second).
PROGRESS_LOG_EVERY_S = 10.0


class ShardOutcome(BaseModel):
    """How one shard ended; what the manifest and the report list per shard."""

    model_config = ConfigDict(extra="forbid")

    shard_id: str
    experiment: str
    dataset: str
    bucket: str
    concurrency: int
    request_rate: float | None = None
    status: str = Field(description="ok | failed | skipped")
    error: str | None = None
    valid: bool = True
    invalid_reason: str | None = None
    overloaded: bool = Field(default=False, description="Open loop: the endpoint completed requests measurably "
                             "slower than they arrived (fmbench.loadgen.overload); fails the SLOs.")
    overload_reason: str | None = Field(default=None, description="Why the shard is overloaded.")
    completion_rate: float | None = Field(
        default=None, description="Open loop: the completion rate as a fraction of the arrival rate.")
    slot_waits: int = Field(default=0, description="Open loop: measured requests that waited for a max_concurrency slot.")
    requests: int = 0
    errors: int = 0
    duration_s: float | None = None
    client_cpu_s: float | None = None
    receive_stamps: dict[str, int] | None = Field(
        default=None, description="The client's connections by how the arrival of answers was stamped "
        "('kernel' or 'event_loop', see fmbench.rxstamp); None for clients that do not say.")
    processes: int = Field(default=1, description="Client processes the shard ran on.")
    client_load: float | None = Field(
        default=None, description="Fraction of the calibrated client ceiling the shard used (None: no calibration).")
    records_url: str | None = None
    cached: bool = False
    started_at: str | None = Field(default=None, description="Wall-clock UTC start of the shard (ISO).")
    ended_at: str | None = Field(default=None, description="Wall-clock UTC end of the shard (ISO).")
    endpoint_name: str | None = Field(default=None, description="Provider endpoint the shard measured (SageMaker).")
    simulator: dict[str, Any] | None = Field(
        default=None, description="The simulated endpoint's own view of the shard (chunk lateness, its CPU use, "
        "whether it was late or saturated); None for other endpoints.")
    machine: dict[str, Any] | None = Field(
        default=None, description="This machine's own speed during the shard (fmbench.machine): the share of "
        "10-ms windows in which a fixed piece of Python ran at least 4x slower than usual (on a shared VM, the "
        "host's doing); None when not measured.")
    client_hosts: list[dict[str, Any]] | None = Field(
        default=None, description="Multi-host shards: each Dask worker that sent its load, with its clock offset "
        "to the scheduler (fmbench.loadgen.hosts.HostClock); None on one host.")


def shard_id(experiment: str, dataset: str, bucket: str, concurrency: int | None, rate: float | None) -> str:
    """The stable id (and file name) of a shard."""
    level = f"r{rate:g}" if rate is not None else f"c{concurrency}"
    return f"{experiment}__{dataset}__{bucket}__{level}"


def plan_shards(cfg: BenchmarkConfig, prompt_sets: list[PromptSet], experiment: ExperimentConfig) -> list[Any]:
    """The shards of one experiment, in the order they run (bucket, dataset, then level ascending),
    over the prompts its own tokenizer bucketed."""
    from fmbench.loadgen import ShardSpec

    tok = experiment_tokenizer(cfg, experiment)
    by_name = {ps.dataset: ps for ps in prompt_sets if ps.tokenizer == tok}
    specs = []
    for lo, hi in cfg.buckets:
        label = bucket_label((lo, hi))
        for ds in cfg.datasets_for(experiment):
            if not by_name.get(ds.name) or not by_name[ds.name].counts.get(label):
                continue
            seed = getattr(ds, "seed", 0)
            common: dict[str, Any] = {
                "experiment": experiment.name, "dataset": ds.name, "bucket": label, "bucket_min": lo,
                "bucket_max": hi, "requests": experiment.requests_per_level,
                "warmup": experiment.warmup_requests, "seed": seed, "request_retries": experiment.request_retries,
                "store_text": experiment.store_text,
            }
            if isinstance(experiment.endpoint, BedrockEndpoint):
                common["throttle_retries"] = experiment.endpoint.throttle_retries
                common["throttle_backoff_s"] = experiment.endpoint.throttle_backoff_s
            procs = experiment.processes or 1  # unset: execute_shard chooses from the calibration
            for c in sorted(experiment.concurrency_levels or []):
                specs.append(ShardSpec(shard_id=shard_id(experiment.name, ds.name, label, c, None),
                                       concurrency=c, processes=min(procs, c), **common))
            # open loop: the endpoint's overload verdict, the experiment's margin when it sets one
            judged: dict[str, Any] = ({} if experiment.overload_shortfall is None
                                      else {"overload_shortfall": experiment.overload_shortfall})
            for r in sorted(experiment.request_rates or []):
                specs.append(ShardSpec(
                    shard_id=shard_id(experiment.name, ds.name, label, None, r),
                    request_rate=r, arrival=experiment.arrival,
                    burstiness=experiment.burstiness, max_concurrency=experiment.max_concurrency,
                    **judged,
                    processes=1 if experiment.max_concurrency else procs, **common))
    return specs


def needs_endpoint(run: RunInfo, specs: list[Any]) -> bool:
    """True when some shard of an experiment is still to be measured (a resumed run whose shards
    are all measured deploys nothing)."""
    return any(finished_shard(run, s.shard_id) is None for s in specs)


def finished_shard(run: RunInfo, sid: str) -> ShardOutcome | None:
    """The outcome of a shard already measured in this run (resume), or None.

    A shard whose outcome file cannot be read, or whose records are missing or not readable parquet,
    is not known to be measured: its files are set aside (renamed ``NAME.corrupt-STAMP``, with a
    warning naming them) and None returned, so the run measures it again instead of failing on it at
    every resume.

    A shard found intact is remembered in this process: asked again while its outcome and records are
    unchanged (`storage.version`), it is returned without reading them; once either changed, it is
    checked again in full.

    Raises:
        StorageError: the store cannot be reached (then the files may be fine: nothing is set aside).
    """
    url = run.shard_result(sid)
    outcome_version = storage.version(url)  # taken before the read: a later rewrite is seen next time
    if outcome_version is None:
        return None
    known = _recall_intact(url, outcome_version)
    if known is not None:
        return known.model_copy(update={"cached": True}, deep=True)
    data = storage.read_bytes(url)
    records = run.path("shards", f"{sid}.parquet")
    try:
        outcome = ShardOutcome.model_validate_json(data)
    except ValidationError as exc:
        _set_aside(sid, f"its outcome {url} is not readable ({json_problem(exc, data)})", url, records)
        return None
    records_url = _records_of(outcome)
    records_version = storage.version(records_url) if records_url else None
    problem = _records_problem(records_url, records_version)
    if problem:
        _set_aside(sid, problem, url, outcome.records_url or records)
        return None
    _remember_intact(url, outcome_version, records_version, outcome)
    return outcome.model_copy(update={"cached": True}, deep=True)


#: The shards `finished_shard` found intact in this process, by outcome URL: the versions of their
#: outcome and records when checked, and the outcome. A resumed run asks for every shard more than
#: once (`needs_endpoint`, then each shard as it runs); reading every records file each time would
#: download them all again from S3. Bounded: past the limit, the oldest are forgotten.
_INTACT_LIMIT = 20_000
_intact: OrderedDict[str, tuple[str, str | None, ShardOutcome]] = OrderedDict()
_intact_lock = threading.Lock()


def _recall_intact(url: str, outcome_version: str) -> ShardOutcome | None:
    """The remembered outcome at ``url`` if it and its records are as they were when checked."""
    with _intact_lock:
        known = _intact.get(url)
    if known is None or known[0] != outcome_version:
        return None
    records_url = _records_of(known[2])
    if records_url and storage.version(records_url) != known[1]:
        return None
    return known[2]


def _remember_intact(url: str, outcome_version: str, records_version: str | None, outcome: ShardOutcome) -> None:
    with _intact_lock:
        _intact[url] = (outcome_version, records_version, outcome)
        _intact.move_to_end(url)
        while len(_intact) > _INTACT_LIMIT:
            _intact.popitem(last=False)


def _records_of(outcome: ShardOutcome) -> str | None:
    """The records a shard's outcome needs (None: it has none to check, e.g. it failed)."""
    return outcome.records_url if outcome.status == "ok" and outcome.records_url else None


def _records_problem(url: str | None, version: str | None) -> str | None:
    """Why a measured shard's records (at ``url``, of ``version``) cannot be read (None: they can)."""
    if not url:
        return None
    if version is None:
        return f"its records {url} are missing"
    data = storage.read_bytes(url)
    try:
        pl.read_parquet(io.BytesIO(data))
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        return f"its records {url} are not readable parquet ({first})"
    return None


def _set_aside(sid: str, problem: str, *urls: str) -> None:
    """Rename a shard's files out of the way (kept, never deleted), so the shard is measured again."""
    with _intact_lock:
        for url in urls:
            _intact.pop(url, None)
    stamp = utc_now().replace(":", "")
    moved = []
    for url in urls:
        if storage.exists(url):
            storage.move(url, f"{url}.corrupt-{stamp}")
            moved.append(f"{url}.corrupt-{stamp}")
    log.warning("shard %s: %s; measuring it again (set aside as %s)", sid, problem, ", ".join(moved))


def execute_shard(run: RunInfo, cfg: BenchmarkConfig, spec: Any, prompts_url: str,
                  deployed: DeployedEndpoint, stop_event: str | None = None) -> ShardOutcome:
    """Measure one shard (or return it from the run if already measured).

    Args:
        stop_event: on a Dask worker, the Dask Event by which the run stops this shard
            (`fmbench.interrupts.reach_workers`) and the name under which its progress goes to the run
            (`fmbench.progress.to_run`); in the run's own process both reach it as they are.

    Raises:
        EndpointConnectionError: every request failed to connect (the endpoint is down), or the
            last ones did (it went away mid-shard, `lost_endpoint`), so an orchestrator can retry the
            shard; the failed attempt's records are kept beside it, with a `SetAside` note.
        ShardCancelled: the run stopped it (its records are not kept).
    """
    with worker_stop_scope(stop_event), progress.to_run(stop_event):
        return _execute_shard(run, cfg, spec, prompts_url, deployed)


def _execute_shard(run: RunInfo, cfg: BenchmarkConfig, spec: Any, prompts_url: str,
                   deployed: DeployedEndpoint) -> ShardOutcome:
    done = finished_shard(run, spec.shard_id)
    if done is not None:
        log.info("shard %s: already measured, reused", spec.shard_id)
        return done
    from fmbench.calibration import expected_shape, load_calibration, plan_processes
    from fmbench.datasets import load_experiment_tokenizer, read_prompts
    from fmbench.loadgen import run_shard
    from fmbench.loadgen.engine import ShardCancelled
    from fmbench.loadgen.hosts import current_worker, stamp_host
    from fmbench.records import final_attempts

    experiment = find_experiment(cfg, spec.experiment)
    cal = load_calibration(run.url)
    prompts = read_prompts(prompts_url)
    # Output tokens the server does not report are counted in the experiment's (the model's) tokenizer.
    tokenizer = load_experiment_tokenizer(cfg, experiment)
    client = make_endpoint_client(experiment, deployed)
    if experiment.processes is None and cal is not None:
        chunks, latency = expected_shape(experiment)
        n_proc = plan_processes(spec, cal, chunks, latency)
        if n_proc > 1 and not _picklable(client, tokenizer.count):
            log.warning("shard %s: its client cannot be sent to other processes; one process", spec.shard_id)
            n_proc = 1
        spec = spec.model_copy(update={"processes": n_proc})
    local = run.scratch_path("shards", f"{spec.shard_id}.parquet")
    log.info("shard %s: %d requests at %s, %d client process(es)", spec.shard_id, spec.requests, _level(spec),
             spec.processes)
    started_at = utc_now("milliseconds")  # a shard's start is ordered against other events
    progress.shard_started(spec.shard_id, spec.warmup + spec.requests)
    last_line = time.monotonic()

    def report(done: int, total: int, errors: int, ttft_p50_s: float | None) -> None:
        nonlocal last_line
        progress.shard_progressed(spec.shard_id, done, total, errors, ttft_p50_s)
        if time.monotonic() - last_line >= PROGRESS_LOG_EVERY_S:  # a log line is for people, not redraws
            last_line = time.monotonic()
            log.info("shard %s: %d/%d requests done, %d errors so far", spec.shard_id, done, total, errors,
                     extra={"progress": True})

    sim = SimulatorWatch.start(deployed, experiment)
    hosts = _client_hosts(experiment, spec, cal)
    clocks = None
    speed = _start_speed_watch()
    stop = current_stop_scope()  # the run's: it stops this shard before deleting its endpoint
    try:
        if hosts is None:
            result = run_shard(client, prompts, spec, local, tokenizer.count, report, stop)
            if (worker := current_worker()) is not None:  # on a cluster, say which machine sent the load
                stamp_host(local, worker)
        else:
            result, clocks = _run_on_hosts(run, spec, client, prompts, local, tokenizer.count, hosts,
                                           cal is not None, stop, report)
    except BaseException as exc:
        if speed is not None:
            speed.stop()
        if isinstance(exc, ShardCancelled):
            log.warning("shard %s: stopped with the run, before its endpoint is deleted; its records are not "
                        "kept (a resumed run measures it again)", spec.shard_id)
        raise
    ended_at = utc_now("milliseconds")
    machine = _speed_view(speed)
    sim_view = sim.finish(machine) if sim is not None else None
    if sim_view and sim_view.get("verdict"):
        log.warning("shard %s: %s", spec.shard_id, sim_view["verdict"])
    # One outcome per request: with request_retries, earlier attempts are records but not requests.
    attempts = final_attempts(pl.read_parquet(local)).collect()
    measured = attempts.filter(~pl.col("warmup"))
    n, n_err = measured.height, int((~measured["ok"]).sum())
    lost = lost_endpoint(measured, _concurrency(spec))
    hung = hung_endpoint(attempts, _concurrency(spec)) if lost is None else None
    if lost is not None or hung is not None:
        error: type[EndpointConnectionError] = EndpointConnectionError
        if lost is not None:
            before, after, first = lost
            loading = _LOADING in first.lower()
            if before == 0:
                reason = (f"all {n} requests were refused by a server still loading its model ({first})" if loading
                          else f"all {n} requests failed to connect ({first})")
            else:
                reason = (f"the endpoint stopped accepting connections after {before} of its {n} requests: "
                          f"the last {after} failed to connect ({first})")
                if loading:
                    reason = (f"the endpoint stopped serving after {before} of its {n} requests: the last {after} "
                              f"failed to connect or were refused while it loaded its model ({first})")
        else:
            assert hung is not None
            before, after, first = hung
            error = EndpointHung
            reason = (f"the endpoint stopped answering{f' after {before} answers' if before else ''}: the last "
                      f"{after} requests got {first}, and the shard stopped sending "
                      f"({n} of its {spec.requests} measured requests sent)")
            if not experiment.inference.stream:  # (such a server sends nothing before its whole answer)
                reason += "; unstreamed answers arrive whole, so if the endpoint is only slow, raise inference.timeout_s"
        failed = local.with_name(set_aside_file(spec.shard_id, ".parquet"))
        local.replace(failed)
        _upload(run, failed)
        note = SetAside(shard_id=spec.shard_id, records=failed.name, reason=reason, requests=n,
                        sent_before=before, started_at=started_at, ended_at=ended_at)
        storage.write_text(run.path("shards", f"{failed.stem}.json"), note.model_dump_json(indent=2))
        log.warning("shard %s: %s; this attempt is set aside (shards/%s), the shard is measured again while "
                    "retries remain", spec.shard_id, reason, failed.name)
        raise error(f"shard {spec.shard_id}: {reason}")
    records_url = _upload(run, local)
    load = None
    if cal is not None and result.duration_s > 0 and n:
        rate = result.achieved_rate if spec.request_rate is not None else n / result.duration_s
        chunks = float(measured.select(pl.col("chunks").mean()).item() or 0.0)
        load = cal.load_fraction(rate, chunks, spec.processes)
        if clocks:  # each host against its own ceiling: the busiest one says whether the client limited
            per_host = dict(measured.group_by("client_host").len().iter_rows())
            load = _hosts_load(clocks, per_host, result.duration_s, chunks, cal)
    outcome = ShardOutcome(
        shard_id=spec.shard_id, experiment=spec.experiment, dataset=spec.dataset, bucket=spec.bucket,
        concurrency=_concurrency(spec), request_rate=spec.request_rate, status="ok",
        valid=bool(getattr(result, "valid", True)), invalid_reason=getattr(result, "invalid_reason", None),
        overloaded=bool(getattr(result, "overloaded", False)), overload_reason=getattr(result, "overload_reason", None),
        completion_rate=getattr(result, "completion_rate", None), slot_waits=getattr(result, "slot_waits", 0),
        requests=n, errors=n_err, duration_s=getattr(result, "duration_s", None),
        client_cpu_s=getattr(result, "client_cpu_s", None), processes=spec.processes, client_load=load,
        receive_stamps=getattr(result, "receive_stamps", None),
        records_url=records_url, started_at=started_at, ended_at=ended_at,
        endpoint_name=deployed.endpoint_name, simulator=sim_view, machine=machine,
        client_hosts=[c.model_dump(mode="json") for c in clocks] if clocks else None,
    )
    storage.write_text(run.shard_result(spec.shard_id), outcome.model_dump_json(indent=2))
    log.info("shard %s: done, %d requests, %d errors", spec.shard_id, n, n_err)
    if outcome.overloaded:
        log.warning("shard %s: endpoint overloaded, %s", spec.shard_id, outcome.overload_reason)
    return outcome


#: An answer that says the server is up but not serving yet: llama.cpp's 503 while it loads its model
#: (``{"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}``).
_LOADING = "loading model"


def _unreachable(frame: pl.DataFrame) -> list[bool]:
    """Per record: it failed to connect, or was refused by a server still loading its model (`_LOADING`)."""
    refused = frame["error_kind"].cast(pl.Utf8) == "connection"
    if "http_status" in frame.columns:
        refused = refused | ((frame["http_status"] == 503)
                             & frame["error"].cast(pl.Utf8).str.to_lowercase().str.contains(_LOADING, literal=True))
    return refused.fill_null(False).to_list()


def _trailing(flags: list[bool]) -> int:
    """How many of the last ``flags`` are true in a row."""
    return next((k for k, f in enumerate(reversed(flags)) if not f), len(flags))


def lost_endpoint(measured: pl.DataFrame, concurrency: int) -> tuple[int, int, str] | None:
    """Whether a shard's endpoint went away and stayed away: its last requests (by request id, the
    order they were sent in) all failed to connect (or were refused by a server still loading its
    model: one restarting), at least `LOST_ENDPOINT_MIN_REQUESTS` of them and at least
    ``concurrency``; or every request did.

    Args:
        measured: the shard's measured requests (final attempts, no warm-ups).

    Returns:
        (requests before that run of failures, requests in it, the first one's error), or None.
    """
    in_order = measured.sort("request_id")
    n = in_order.height
    after = _trailing(_unreachable(in_order))
    if after == 0 or (after < n and after < max(LOST_ENDPOINT_MIN_REQUESTS, concurrency)):
        return None
    return n - after, after, str(in_order["error"][n - after])


def hung_endpoint(records: pl.DataFrame, concurrency: int) -> tuple[int, int, str] | None:
    """Whether a shard's endpoint stopped answering: its last requests to end (warm-ups included, by
    end time, the order the engine saw them in) all timed out with no byte of an answer, at least
    `HUNG_MIN_REQUESTS` of them and at least ``concurrency`` (`fmbench.loadgen.engine._Shard.halted`
    stops the shard there), or every request did, at least `HUNG_MIN_REQUESTS` of them.

    Args:
        records: the shard's final attempts, warm-ups included.

    Returns:
        (answered requests before that run, requests in it, the first one's error), or None.
    """
    from fmbench.loadgen.engine import HUNG_MIN_REQUESTS

    in_order = records.sort("t_end", nulls_last=False)
    n = in_order.height
    after = _trailing([silent_timeout(k, e) for k, e in zip(in_order["error_kind"].cast(pl.Utf8).to_list(),
                                                            in_order["error"].to_list(), strict=True)])
    if after < HUNG_MIN_REQUESTS or (after < n and after < concurrency):
        return None
    return int(in_order["ok"][: n - after].sum()), after, str(in_order["error"][n - after])


class SetAside(BaseModel):
    """A shard's attempt set aside because its endpoint could not be reached (`lost_endpoint`) or
    stopped answering (`hung_endpoint`); stored beside the attempt's records as
    ``shards/<shard>.failed-<time>.json``, and named in the run's warnings."""

    shard_id: str
    records: str = Field(description="The attempt's records, a file name in the run's shards/.")
    reason: str
    requests: int
    sent_before: int = Field(description="Requests sent before the endpoint stopped accepting connections.")
    started_at: str
    ended_at: str


def set_aside_warnings(run: RunInfo) -> list[str]:
    """One line per shard that had attempts set aside because its endpoint could not be reached,
    for the run's warnings (an endpoint lost mid-shard is a finding even when a later attempt
    measured the shard)."""
    notes: dict[str, list[SetAside]] = {}
    for url in set_aside_files(run.url, ".json"):
        try:
            note = SetAside.model_validate_json(storage.read_text(url))
        except (ValidationError, ValueError) as exc:
            log.warning("%s: not read (%s)", url, exc)
            continue
        notes.setdefault(note.shard_id, []).append(note)
    lines = []
    for sid, attempts in sorted(notes.items()):
        attempts.sort(key=lambda a: a.started_at)
        files = ", ".join(f"shards/{a.records}" for a in attempts)
        k = len(attempts)
        what = " ".join(f"Attempt of {a.started_at}: {a.reason}." for a in attempts)
        lines.append(f"shard {sid}: {k} attempt{'s' if k != 1 else ''} set aside, the endpoint could not be "
                     f"reached or did not answer; records kept in {files}. {what}")
    return lines


def check_client_hosts(cfg: BenchmarkConfig, run: RunInfo) -> None:
    """Before anything is measured: when an experiment splits its shards over client hosts, every Dask
    worker must write into the run's storage where this process reads it (else one line, StorageError)."""
    if not any(e.client_hosts is not None for e in cfg.experiments):
        return
    from fmbench.loadgen.hosts import check_hosts_reach, dask_client

    names = check_hosts_reach(dask_client(_cluster_address()), run.url)
    log.info("client hosts reach the run's output: %s", ", ".join(names))


def _client_hosts(experiment: ExperimentConfig, spec: Any, cal: Any) -> int | None:
    """How many client hosts a shard runs on, None for this host alone (client_hosts unset)."""
    n = experiment.client_hosts
    if n is None:
        return None
    if n == "auto":
        from fmbench.calibration import expected_shape, plan_processes
        from fmbench.loadgen.hosts import dask_client, live_workers

        chunks, latency = expected_shape(experiment)
        workers = len(live_workers(dask_client(_cluster_address())))
        # One client process per host: a host is planned like one more process of the calibration.
        return plan_processes(spec.model_copy(update={"processes": 1}), cal, chunks, latency, max(1, workers))
    return int(n)


def _cluster_address() -> str | None:
    runner = os.environ.get("FMBENCH_TASK_RUNNER", "")
    return runner if runner.startswith(("tcp://", "tls://")) else None


def _run_on_hosts(run: RunInfo, spec: Any, client: Any, prompts: Any, local: Any, count: Any, hosts: int,
                  calibrate: bool, stop: StopScope | None, report: Any) -> Any:
    from fmbench.loadgen.hosts import dask_client, run_shard_hosts

    dask = dask_client(_cluster_address())
    log.info("shard %s: split over %d client hosts", spec.shard_id, hosts)
    return run_shard_hosts(client, prompts, spec, local, count, hosts, dask,
                           lambda k: run.path("shards", "hosts", f"{spec.shard_id}.host-{k}.parquet"),
                           calibrate=calibrate, stop=stop, progress=report)


def _hosts_load(clocks: Any, measured: dict[str, int], duration_s: float, chunks: float, cal: Any) -> float | None:
    """The busiest client host's load: its measured requests (``measured``, by host; as one host's
    load counts them: final attempts, no warm-ups) per second against its own calibrated ceiling."""
    from fmbench.calibration import Calibration

    if duration_s <= 0:
        return None
    loads = []
    for c in clocks:
        own = Calibration.model_validate(c.calibration) if c.calibration else cal
        loads.append(own.load_fraction(measured.get(c.host, 0) / duration_s, chunks))
    return max(loads)


def _start_speed_watch() -> Sentinel | None:
    """This machine's speed over the shard, measured by a child process (None if it cannot start)."""
    try:
        return Sentinel()
    except OSError as exc:
        log.debug("machine speed not measured: %s", exc)
        return None


def _speed_view(speed: Sentinel | None) -> dict[str, Any] | None:
    if speed is None:
        return None
    try:
        m = speed.result()
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        log.debug("machine speed not measured: %s", exc)
        speed.stop()
        return None
    return {"unit_us_median": m["unit_us_median"], "slow_share": m["slow_share"], "slow_windows": len(m["windows"])}


#: A simulated endpoint is flagged late when its chunks' p99 lateness (sent minus due) exceeds
#: this fraction of its time per output token (and at least SIM_LATE_MIN_MS) ...
SIM_LATE_FRACTION = 0.25
SIM_LATE_MIN_MS = 2.0
#: ... and saturated when its process used more than this fraction of one CPU over the interval its
#: stamps cover (from their reset before the shard's warm-ups to its end).
SIM_SATURATED_CPU = 0.9
#: The kernel counts a process's CPU time in whole clock ticks (10 ms at USER_HZ=100), user and
#: system time apart, so the difference of two readings is off by up to two ticks. The simulator's
#: share of a CPU is given only when that error is at most this share over the interval (at least 20
#: ticks, 0.2 s at USER_HZ=100); shorter, it is unknown. Saturated then means that even the share
#: less that error exceeds SIM_SATURATED_CPU, so no rounding of ticks makes a shard saturated.
SIM_CPU_MAX_ERROR = 0.1
_CPU_ERROR_TICKS = 2


class SimulatorWatch:
    """The simulated server's own stamps and CPU over one shard: were its chunks late, was it saturated?

    Its event loop is one thread: near 100% of one CPU it can no longer release every chunk at its
    due time, and the shard's latencies (the first wave's TTFT above all) then include the
    simulator's queue rather than only the modelled server's. Its lateness and its CPU share cover
    the same interval: from `start` (before the shard's warm-ups) to `finish`.
    """

    def __init__(self, url: str, pid: int | None, tpot_ms: float) -> None:
        self.url, self.pid, self.tpot_ms = url, pid, tpot_ms
        self.cpu0, self.t0 = self._cpu_s(), time.monotonic()

    @classmethod
    def start(cls, deployed: DeployedEndpoint, experiment: ExperimentConfig) -> SimulatorWatch | None:
        """Reset the server's lateness record; None when the endpoint is not a simulated server."""
        if deployed.provider != "simulated" or not deployed.url:
            return None
        try:
            _sim_call(f"{deployed.url}/fmbench/stats/reset", post=True)
        except OSError:
            return None
        return cls(deployed.url, deployed.pid, float(getattr(experiment.endpoint, "tpot_ms", 0.0)))

    def _cpu_s(self) -> float | None:
        if self.pid is None:
            return None
        try:  # utime + stime of the server process, in clock ticks
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def _cpu_share(self, cpu1: float | None, elapsed_s: float) -> tuple[float | None, float | None]:
        """The server's share of one CPU since `start` and its error from tick rounding; (None, None)
        when unknown or when the interval is too short for whole ticks to measure it."""
        if cpu1 is None or self.cpu0 is None or elapsed_s <= 0:
            return None, None
        error = _CPU_ERROR_TICKS / os.sysconf("SC_CLK_TCK") / elapsed_s
        if error > SIM_CPU_MAX_ERROR:
            return None, None
        return (cpu1 - self.cpu0) / elapsed_s, error

    def finish(self, machine: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The shard's simulator view, with ``verdict`` set when it was late or saturated (``machine``:
        this machine's speed over the shard, see `fmbench.machine`, named in the verdict)."""
        cpu1, elapsed = self._cpu_s(), time.monotonic() - self.t0
        try:
            stats = json.loads(_sim_call(f"{self.url}/fmbench/stats"))["lateness"]
        except (OSError, ValueError, KeyError):
            return None
        util, error = self._cpu_share(cpu1, elapsed)
        limit = max(SIM_LATE_MIN_MS, SIM_LATE_FRACTION * self.tpot_ms)
        p99 = stats.get("p99_ms")
        late = isinstance(p99, (int, float)) and p99 > limit
        saturated = util is not None and error is not None and util - error > SIM_SATURATED_CPU
        reasons = []
        if late:
            reasons.append(f"its chunks were late (p99 {p99:.1f} ms after their due time, limit {limit:.1f} ms)")
        if saturated:
            reasons.append(f"it used {util:.0%} of a CPU (saturated)")
        elif late:  # not busy itself, yet late: other processes held the CPU it needed
            reasons.append(f"while using only {util:.0%} of a CPU: the shared CPU (load average "
                           f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs) delayed it" if util is not None
                           else "its CPU use is unknown")
            slow = (machine or {}).get("slow_share")
            if isinstance(slow, (int, float)) and slow > 0:
                reasons.append(f"this machine itself ran slow (>= 4x) in {slow:.1%} of the shard's 10-ms windows")
        return {"chunks": stats.get("n"), "lateness_p50_ms": stats.get("p50_ms"), "lateness_p99_ms": p99,
                "lateness_max_ms": stats.get("max_ms"), "late_limit_ms": limit,
                "cpu_util": None if util is None else round(util, 3), "cpu_interval_s": round(elapsed, 3),
                "late": late, "saturated": saturated,
                "verdict": ("simulator late or saturated: " + ", ".join(reasons) + "; results may reflect the "
                            "simulator, not the modelled server") if reasons else None}


def _sim_call(url: str, post: bool = False) -> bytes:
    import urllib.request

    req = urllib.request.Request(url, method="POST" if post else "GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return bytes(resp.read())


def _picklable(*objs: Any) -> bool:
    import pickle

    try:
        pickle.dumps(objs)
    except Exception:  # noqa: BLE001 - pickle raises many types
        return False
    return True


def failed_outcome(spec: Any, error: BaseException | str) -> ShardOutcome:
    """The outcome recorded for a shard that could not be measured."""
    message = error if isinstance(error, str) else (str(error) or error.__class__.__name__)
    return ShardOutcome(
        shard_id=spec.shard_id, experiment=spec.experiment, dataset=spec.dataset, bucket=spec.bucket,
        concurrency=_concurrency(spec), request_rate=spec.request_rate, status="failed", error=message,
        valid=False,
    )


def _concurrency(spec: Any) -> int:
    # As in the records: closed loop, requests in flight; open loop, the cap (0 = none).
    return spec.concurrency if spec.request_rate is None else (spec.max_concurrency or 0)


def _level(spec: Any) -> str:
    if spec.request_rate is not None:
        return f"{spec.request_rate:g} req/s"
    return f"concurrency {spec.concurrency}"


def _upload(run: RunInfo, local: Any) -> str:
    url = run.path("shards", local.name)
    if storage.is_remote(run.url):
        storage.write_bytes(url, local.read_bytes())
    return url


def make_endpoint_client(experiment: ExperimentConfig, deployed: DeployedEndpoint) -> Any:
    """The client for an experiment's deployed endpoint."""
    from fmbench.endpoints import make_client

    endpoint = experiment.endpoint
    if deployed.endpoint_name and hasattr(endpoint, "endpoint_name"):
        endpoint = endpoint.model_copy(update={"endpoint_name": deployed.endpoint_name})
    return make_client(endpoint, experiment.inference, url=deployed.url)


def find_experiment(cfg: BenchmarkConfig, name: str) -> ExperimentConfig:
    """The experiment of that name, or the judge whose endpoint goes by it (KeyError when there is none)."""
    for e in cfg.experiments:
        if e.name == name:
            return e
    for judge in cfg.evaluation.judges if cfg.evaluation else []:
        if judge.experiment_name == name:
            return judge.as_experiment()
    raise KeyError(name)
