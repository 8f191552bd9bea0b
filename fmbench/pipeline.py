"""The steps of a benchmark as plain functions: the one library entry point.

The order they run in is written once, in `fmbench.sequence`; `run_benchmark` runs it here
without Prefect (for the CLI, a REPL or a test), the `fmbench` flow runs it with each step as a
Prefect task. Each step takes and returns small serialisable values (paths, URLs, pydantic
models), so the steps can run in different processes or on different machines.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from fmbench import progress, storage
from fmbench.config import (
    BedrockEndpoint,
    BenchmarkConfig,
    ExperimentConfig,
    SimulatedEndpoint,
    bucket_label,
    resolve_path,
)
from fmbench.deploy import DeployedEndpoint, deploy_endpoint, teardown_endpoint
from fmbench.errors import DatasetError, EndpointConnectionError, FMBenchError
from fmbench.interrupts import deploying
from fmbench.records import REQUEST_SCHEMA
from fmbench.rundir import Manifest, RunInfo, utc_now

log = logging.getLogger("fmbench")

#: A shard whose every request failed to connect is measured again this many times, after these
#: delays (the endpoint may be restarting); the Prefect task and the inline steps both use them.
SHARD_RETRIES = 2
SHARD_RETRY_DELAYS_S = (2.0, 10.0)
#: How often a running shard logs its requests done (the progress view updates every second).
PROGRESS_LOG_EVERY_S = 10.0
#: A teardown that failed is tried again this many times, this long apart.
TEARDOWN_RETRIES = 2
TEARDOWN_RETRY_DELAY_S = 5.0


class PromptSet(BaseModel):
    """Where a dataset's bucketed prompts are stored in a run."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    files: dict[str, str] = Field(default_factory=dict, description="bucket label -> prompts parquet URL")
    counts: dict[str, int] = Field(default_factory=dict, description="bucket label -> prompts")
    hashes: dict[str, str] = Field(default_factory=dict, description="bucket label -> payload sha256")
    dropped: int = Field(default=0, description="Prompts outside every bucket.")


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
    requests: int = 0
    errors: int = 0
    duration_s: float | None = None
    client_cpu_s: float | None = None
    processes: int = Field(default=1, description="Client processes the shard ran on.")
    client_load: float | None = Field(
        default=None, description="Fraction of the calibrated client ceiling the shard used (None: no calibration).")
    records_url: str | None = None
    cached: bool = False
    started_at: str | None = Field(default=None, description="Wall-clock UTC start of the shard (ISO).")
    ended_at: str | None = Field(default=None, description="Wall-clock UTC end of the shard (ISO).")
    endpoint_name: str | None = Field(default=None, description="Provider endpoint the shard measured (SageMaker).")


# ---------------------------------------------------------------- config


def load_benchmark_config(config: str | BenchmarkConfig, overrides: list[str] | None = None,
                          experiments: list[str] | None = None, concurrency_levels: list[int] | None = None,
                          requests_per_level: int | None = None) -> BenchmarkConfig:
    """Load a config (path, URL, YAML text, or a config model as a Prefect form gives it), apply
    run-time overrides, and check what can be checked before anything is measured (pricing
    resolves for every experiment).

    Raises:
        ConfigError: naming the file or parameter and the field.
    """
    from fmbench.config import apply_overrides, load_config_source, narrow_config, parse_config

    if isinstance(config, BenchmarkConfig):
        data = config.model_dump(mode="python")
        loaded = parse_config(apply_overrides(data, overrides) if overrides else data, source="config")
    else:
        loaded = load_config_source(config, overrides=overrides)
    cfg = narrow_config(loaded, experiments, concurrency_levels, requests_per_level)
    check_pricing(cfg)
    return cfg


def check_pricing(cfg: BenchmarkConfig) -> None:
    """Resolve every experiment's pricing now, so an unknown instance type fails before the run
    rather than after it has measured everything.

    Raises:
        ConfigError: naming the experiment and the pricing field.
    """
    from fmbench.pricing import resolve_pricing

    for experiment in cfg.experiments:
        resolve_pricing(experiment)


# ---------------------------------------------------------------- prompts


def dataset_cache_key(cfg: BenchmarkConfig, dataset_name: str) -> str:
    """A key that changes when the dataset's content, template, buckets or tokenizer change."""
    from fmbench.datasets import dataset_fingerprint, load_run_tokenizer

    dataset = _dataset(cfg, dataset_name)
    return dataset_fingerprint(cfg, dataset, load_run_tokenizer(cfg))


def bucket_dataset(cfg: BenchmarkConfig, dataset_name: str) -> dict[str, list[dict[str, Any]]]:
    """Load, render, count and bucket one dataset; returns bucket label -> prompt rows.

    The result is plain data so an orchestrator can cache it across runs by `dataset_cache_key`.
    """
    from fmbench.datasets import build_dataset_prompts, load_run_tokenizer

    dataset = _dataset(cfg, dataset_name)
    bucketed = build_dataset_prompts(cfg, dataset, load_run_tokenizer(cfg))
    out: dict[str, list[dict[str, Any]]] = {}
    for label, prompts in bucketed.buckets.items():
        out[label] = [{"prompt_id": p.prompt_id, "text": p.text, "input_tokens": p.input_tokens} for p in prompts]
    out["__dropped__"] = [{"count": int(getattr(bucketed, "dropped", 0) or 0)}]
    return out


def store_prompts(run: RunInfo, dataset_name: str, bucketed: dict[str, list[dict[str, Any]]]) -> PromptSet:
    """Write a dataset's bucketed prompts into the run (prompts/<dataset>__<bucket>.parquet)."""
    from fmbench.datasets import write_prompts
    from fmbench.protocol import Prompt

    ps = PromptSet(dataset=dataset_name)
    for label, rows in bucketed.items():
        if label == "__dropped__":
            ps.dropped = int(rows[0]["count"]) if rows else 0
            continue
        if not rows:
            continue
        prompts = [Prompt(r["prompt_id"], r["text"], int(r["input_tokens"])) for r in rows]
        url = run.prompts_file(dataset_name, label)
        write_prompts(url, prompts, dataset=dataset_name, bucket=label)
        digest = hashlib.sha256()
        for p in prompts:
            digest.update(p.prompt_id.encode() + b"\0" + p.text.encode() + b"\0")
        ps.files[label] = url
        ps.counts[label] = len(prompts)
        ps.hashes[label] = digest.hexdigest()
    return ps


def check_buckets(cfg: BenchmarkConfig, prompt_sets: list[PromptSet]) -> list[str]:
    """Fail on a bucket no prompt of any dataset falls into; return warnings for partial coverage.

    Raises:
        DatasetError: naming the empty bucket(s).
    """
    labels = [bucket_label(b) for b in cfg.buckets]
    empty = [lb for lb in labels if not any(ps.counts.get(lb) for ps in prompt_sets)]
    if empty:
        ranges = ", ".join(f"[{lb.replace('-', ', ')})" for lb in empty)
        raise DatasetError(
            f"buckets: no prompt of any dataset falls into {ranges} tokens; remove the bucket or add prompts of "
            "that length"
        )
    return [
        f"dataset {ps.dataset!r} has no prompts in bucket {lb}: its shards are skipped"
        for ps in prompt_sets for lb in labels if not ps.counts.get(lb)
    ]


# ---------------------------------------------------------------- shards


def shard_id(experiment: str, dataset: str, bucket: str, concurrency: int | None, rate: float | None) -> str:
    """The stable id (and file name) of a shard."""
    level = f"r{rate:g}" if rate is not None else f"c{concurrency}"
    return f"{experiment}__{dataset}__{bucket}__{level}"


def plan_shards(cfg: BenchmarkConfig, prompt_sets: list[PromptSet], experiment: ExperimentConfig) -> list[Any]:
    """The shards of one experiment, in the order they run (bucket, dataset, then level ascending)."""
    from fmbench.loadgen import ShardSpec

    by_name = {ps.dataset: ps for ps in prompt_sets}
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
            for r in sorted(experiment.request_rates or []):
                specs.append(ShardSpec(
                    shard_id=shard_id(experiment.name, ds.name, label, None, r),
                    request_rate=r, arrival=experiment.arrival,
                    burstiness=experiment.burstiness, max_concurrency=experiment.max_concurrency,
                    processes=1 if experiment.max_concurrency else procs, **common))
    return specs


def needs_endpoint(run: RunInfo, specs: list[Any]) -> bool:
    """True when some shard of an experiment is still to be measured (a resumed run whose shards
    are all measured deploys nothing)."""
    return any(finished_shard(run, s.shard_id) is None for s in specs)


def finished_shard(run: RunInfo, sid: str) -> ShardOutcome | None:
    """The outcome of a shard already measured in this run (resume), or None."""
    url = run.shard_result(sid)
    if not storage.exists(url):
        return None
    outcome = ShardOutcome.model_validate_json(storage.read_text(url))
    return outcome.model_copy(update={"cached": True})


def execute_shard(run: RunInfo, cfg: BenchmarkConfig, spec: Any, prompts_url: str,
                  deployed: DeployedEndpoint) -> ShardOutcome:
    """Measure one shard (or return it from the run if already measured).

    Raises:
        EndpointConnectionError: every request failed to connect (the endpoint is down), so an
            orchestrator can retry the shard; the failed attempt's records are kept beside it.
    """
    done = finished_shard(run, spec.shard_id)
    if done is not None:
        log.info("shard %s: already measured, reused", spec.shard_id)
        return done
    from fmbench.calibration import expected_shape, load_calibration, plan_processes
    from fmbench.datasets import load_run_tokenizer, read_prompts
    from fmbench.loadgen import run_shard
    from fmbench.loadgen.retry import final_attempts

    experiment = _experiment(cfg, spec.experiment)
    cal = load_calibration(run.url)
    prompts = read_prompts(prompts_url)
    tokenizer = load_run_tokenizer(cfg)
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
    started_at = utc_now()
    progress.shard_started(spec.shard_id, spec.warmup + spec.requests)
    last_line = time.monotonic()

    def report(done: int, total: int, errors: int, ttft_p50_s: float | None) -> None:
        nonlocal last_line
        progress.shard_progressed(spec.shard_id, done, total, errors, ttft_p50_s)
        if time.monotonic() - last_line >= PROGRESS_LOG_EVERY_S:  # a log line is for people, not redraws
            last_line = time.monotonic()
            log.info("shard %s: %d/%d requests done, %d errors so far", spec.shard_id, done, total, errors,
                     extra={"progress": True})

    result = run_shard(client, prompts, spec, local, tokenizer.count, report)
    ended_at = utc_now()
    # One outcome per request: with request_retries, earlier attempts are records but not requests.
    measured = final_attempts(pl.read_parquet(local)).filter(~pl.col("warmup")).collect()
    n, n_err = measured.height, int((~measured["ok"]).sum())
    conn_fail = n > 0 and measured.filter(pl.col("error_kind") == "connection").height == n
    if conn_fail:
        failed = local.with_name(f"{spec.shard_id}.failed-{utc_now().replace(':', '')}.parquet")
        local.replace(failed)
        _upload(run, failed)
        first = measured["error"][0]
        raise EndpointConnectionError(f"shard {spec.shard_id}: all {n} requests failed to connect ({first})")
    records_url = _upload(run, local)
    load = None
    if cal is not None and result.duration_s > 0 and n:
        rate = result.achieved_rate if spec.request_rate is not None else n / result.duration_s
        load = cal.load_fraction(rate, float(measured.select(pl.col("chunks").mean()).item() or 0.0), spec.processes)
    outcome = ShardOutcome(
        shard_id=spec.shard_id, experiment=spec.experiment, dataset=spec.dataset, bucket=spec.bucket,
        concurrency=_concurrency(spec), request_rate=spec.request_rate, status="ok",
        valid=bool(getattr(result, "valid", True)), invalid_reason=getattr(result, "invalid_reason", None),
        requests=n, errors=n_err, duration_s=getattr(result, "duration_s", None),
        client_cpu_s=getattr(result, "client_cpu_s", None), processes=spec.processes, client_load=load,
        records_url=records_url, started_at=started_at, ended_at=ended_at,
        endpoint_name=deployed.endpoint_name,
    )
    storage.write_text(run.shard_result(spec.shard_id), outcome.model_dump_json(indent=2))
    log.info("shard %s: done, %d requests, %d errors", spec.shard_id, n, n_err)
    return outcome


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


# ---------------------------------------------------------------- deploy


def deploy(cfg: BenchmarkConfig, experiment_name: str, run: RunInfo) -> DeployedEndpoint:
    """Deploy an experiment's endpoint for this run.

    A simulated server counts prompt tokens with the run's tokenizer unless its config names
    another, so its usage (and its prefill time) agrees with the buckets the prompts were put in.
    While it waits, an interrupt of the run reaches this thread (`fmbench.interrupts`).
    """
    experiment = _experiment(cfg, experiment_name)
    if isinstance(experiment.endpoint, SimulatedEndpoint):
        spec = experiment.endpoint.tokenizer or cfg.tokenizer
        if not spec.startswith("hf:") and resolve_path(cfg, spec).is_file():  # a tokenizer.json beside the config
            spec = str(resolve_path(cfg, spec))
        endpoint = experiment.endpoint.model_copy(update={"tokenizer": spec})
        experiment = experiment.model_copy(update={"endpoint": endpoint})
    deployed: DeployedEndpoint | None = None
    try:
        with deploying(experiment_name), progress.deploy_scope(experiment_name, experiment.endpoint.provider):
            deployed = deploy_endpoint(experiment, run.run_id, config_name=cfg.name)
    except KeyboardInterrupt:
        # The interrupt landed after the deployer returned: what it made would be lost, delete it.
        if deployed is not None:
            teardown_endpoint(deployed, experiment)
        raise
    return deployed


def teardown(cfg: BenchmarkConfig, deployed: DeployedEndpoint) -> list[str]:
    """Tear down what `deploy` created."""
    return teardown_endpoint(deployed, _experiment(cfg, deployed.experiment))


def not_torn_down(deployed: DeployedEndpoint, error: BaseException) -> str:
    """What to tell the user about an endpoint whose teardown did not finish (it may cost money)."""
    reason = "interrupted" if isinstance(error, KeyboardInterrupt) else (str(error) or type(error).__name__)
    what = ", ".join(deployed.created) or deployed.endpoint_name or deployed.url or "its endpoint"
    message = f"experiment {deployed.experiment}: teardown did not finish ({reason}); still running: {what}"
    if deployed.provider == "sagemaker" and deployed.endpoint_name:
        message += (f" — it is billed until deleted: aws sagemaker delete-endpoint --endpoint-name "
                    f"{deployed.endpoint_name} (then its endpoint config and model)")
    return message


def calibrate(run: RunInfo) -> Any:
    """Measure this host's client ceiling into the run (calibration.json, manifest), before the shards.

    A failed calibration is logged, not raised: shards then run in one process each, unflagged.
    """
    from fmbench.calibration import calibrate_run

    try:
        cal = calibrate_run(run.url)
    except FMBenchError as exc:
        log.warning("client calibration failed, shards run unflagged in one process: %s", exc)
        return None
    log.info("client calibration: %s", cal.summary())
    return cal


# ---------------------------------------------------------------- results


def finalize_run(run: RunInfo, cfg: BenchmarkConfig, outcomes: list[ShardOutcome],
                 prompt_sets: list[PromptSet], warnings: list[str] | None = None) -> str:
    """Gather every shard's records into requests.parquet, compute metrics, update the manifest.

    Returns:
        The URL of metrics.parquet.
    """
    from fmbench.metrics import summarize

    frames = []
    for o in outcomes:
        if o.status == "ok" and o.records_url:
            frames.append(_with_schema(storage.read_parquet(o.records_url)))
    requests = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=REQUEST_SCHEMA)
    storage.write_parquet(run.path("requests.parquet"), requests)
    shard_dicts = [o.model_dump(mode="json") for o in outcomes]
    notes = list(warnings or []) + _collect_endpoint_metrics(run, cfg, shard_dicts)

    def finish(manifest: Manifest) -> None:
        manifest.shards = shard_dicts
        manifest.payload_hashes = {f"{ps.dataset}/{lb}": h for ps in prompt_sets for lb, h in ps.hashes.items()}
        manifest.prompt_counts = {f"{ps.dataset}/{lb}": c for ps in prompt_sets for lb, c in ps.counts.items()}
        manifest.warnings = notes
        manifest.ended_at = utc_now()

    run.update_manifest(finish)
    metrics = summarize(requests, cfg, shards=shard_dicts)
    storage.write_parquet(run.path("metrics.parquet"), metrics)
    storage.write_text(run.path("metrics.csv"), _csv(metrics))
    return run.path("metrics.parquet")


def _with_schema(records: pl.DataFrame) -> pl.DataFrame:
    # A resumed run may hold shards recorded by an fmbench whose records lacked newer columns.
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in REQUEST_SCHEMA.items() if c not in records.columns]
    return records.with_columns(missing).select(list(REQUEST_SCHEMA)) if missing else records.select(
        list(REQUEST_SCHEMA))


def _collect_endpoint_metrics(run: RunInfo, cfg: BenchmarkConfig, shards: list[dict[str, Any]]) -> list[str]:
    # Optional: CloudWatch metrics of SageMaker shards (cloudwatch.parquet); a failure is a warning.
    if not any(getattr(e.endpoint, "cloudwatch_metrics", False) for e in cfg.experiments):
        return []
    from fmbench.deploy.cloudwatch import collect_run_metrics

    try:
        rows = collect_run_metrics(cfg, shards)
    except FMBenchError as exc:
        log.warning("CloudWatch metrics not collected: %s", exc)
        return [f"CloudWatch metrics not collected: {exc}"]
    if rows:
        storage.write_parquet(run.path("cloudwatch.parquet"), pl.DataFrame(rows, infer_schema_length=None))
    return []


def _csv(df: pl.DataFrame) -> str:
    flat = df.select([c for c in df.columns if not isinstance(df.schema[c], (pl.List, pl.Struct))])
    return flat.write_csv()


def write_report(run: RunInfo) -> str:
    """Render report.md, report.html and plots; returns the report.md URL."""
    from fmbench.report import render_report

    paths = render_report(run.url)
    return str(getattr(paths, "markdown", run.path("report.md")))


class ArtifactContent(BaseModel):
    """What an orchestrator publishes about a finished run."""

    key: str = Field(description="Stable artifact key prefix for this benchmark (versions over runs).")
    summary_markdown: str
    table: list[dict[str, str]]
    report_url: str


def artifact_contents(run: RunInfo, cfg: BenchmarkConfig) -> ArtifactContent:
    """The summary, metrics table and report link of a run, for Prefect artifacts."""
    from fmbench.report import metrics_table_rows, summary_markdown

    metrics = storage.read_parquet(run.path("metrics.parquet"))
    key = "fmbench-" + "".join(c if c.isalnum() else "-" for c in cfg.name.lower()).strip("-")
    report_url = run.path("report.html")
    if not storage.is_remote(report_url):
        report_url = "file://" + report_url
    summary = summary_markdown(metrics, cfg.slo, title=f"{cfg.name}: run {run.run_id}")
    return ArtifactContent(key=key, summary_markdown=summary, table=metrics_table_rows(metrics),
                           report_url=report_url)


# ---------------------------------------------------------------- without Prefect


def run_benchmark(cfg: BenchmarkConfig, output: str | None = None, run_id: str | None = None,
                  command: str | None = None, preflight: bool = True) -> str:
    """Run a whole benchmark in this process, without Prefect; returns the report.md URL."""
    from fmbench.inline import InlineSteps
    from fmbench.sequence import run_sequence

    with InlineSteps() as steps:
        return run_sequence(steps, cfg, output=output, run_id=run_id, command=command, preflight=preflight).report


def _experiment(cfg: BenchmarkConfig, name: str) -> ExperimentConfig:
    for e in cfg.experiments:
        if e.name == name:
            return e
    raise KeyError(name)


def _dataset(cfg: BenchmarkConfig, name: str) -> Any:
    for d in cfg.datasets:
        if d.name == name:
            return d
    raise KeyError(name)
