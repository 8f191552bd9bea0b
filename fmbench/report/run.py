"""Read what a report needs from a run directory (local or s3://), computing metrics when absent."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from fmbench import storage
from fmbench.config import BenchmarkConfig, load_config_text
from fmbench.deploy import EndpointTimeline
from fmbench.errors import ConfigError, FMBenchError, StorageError
from fmbench.metrics import METRIC_COLUMNS, summarize
from fmbench.records import REQUEST_SCHEMA, final_attempts
from fmbench.rundir import Manifest, has_manifest, load_manifest, set_aside_files, with_noted_deletions

#: Columns of requests.parquet the report reads. The scan is lazy, so the itl_s lists are read only
#: by the queries that need them (ITL metrics and the ITL distribution); when the metrics are computed
#: here, the columns are read into memory once for all the report's queries.
REQUEST_COLUMNS = ["experiment", "dataset", "bucket", "bucket_min", "bucket_max", "concurrency", "request_rate",
                   "shard_id", "request_id", "attempt", "warmup", "ok", "error_kind", "error", "input_tokens",
                   "output_tokens", "t_scheduled", "t_start", "t_first_token", "t_end", "ttft_s", "latency_s",
                   "tpot_s", "itl_s", "chunks", "resends", "cached_tokens"]

#: Of those, the columns records of older runs may lack. Without ``attempt`` every record is its
#: request's only attempt; with it, a retried request counts once, by its final attempt
#: (`fmbench.records.final_attempts`), in the metrics, the Errors table and compare's bootstrap.
OPTIONAL_REQUEST_COLUMNS = {"attempt", "resends", "cached_tokens"}

#: At most this many requests are drawn in the prompt-tokens-vs-latency scatter.
SAMPLE_SIZE = 3000


@dataclass
class RunData:
    """One run as the report sees it."""

    url: str
    manifest: Manifest
    config_text: str | None
    cfg: BenchmarkConfig | None
    metrics: pl.DataFrame
    requests: pl.LazyFrame | None
    metrics_computed: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The benchmark name (manifest, else config, else the directory name)."""
        return str(self.manifest.name or (self.cfg.name if self.cfg else None) or "fmbench run")

    @property
    def run_id(self) -> str:
        """The run id (manifest, else the directory name)."""
        return str(self.manifest.run_id or self.url.rstrip("/").rsplit("/", 1)[-1])

    @property
    def shards(self) -> list[dict[str, Any]]:
        """The manifest's shard outcomes (empty when unknown)."""
        return [s for s in self.manifest.shards if isinstance(s, dict)]

    @property
    def endpoints(self) -> dict[str, EndpointTimeline]:
        """The manifest's endpoint timelines (experiment -> timeline), empty when absent."""
        return self.manifest.endpoints

    @property
    def ended_at(self) -> str | None:
        """When the run ended (manifest ``ended_at``), what an endpoint never deleted is billed up to."""
        return self.manifest.ended_at


#: What `fmbench.metrics.benchmark_cost` reads of each request sent.
_SENT_COLUMNS = ["experiment", "shard_id", "ok", "input_tokens", "output_tokens", "t_scheduled", "t_start", "t_end"]


def sent_requests(run: RunData, requests: pl.LazyFrame) -> pl.LazyFrame:
    """Every request the run sent, for what it cost: its records (warm-ups and retried attempts
    included) and those of the attempts set aside because their endpoint could not be reached
    (``shards/<shard>.failed-<time>.parquet``, kept beside the shard's records). A set-aside file that
    cannot be read is named in ``run.problems``. ``requests``: the run's records (``run.requests``)."""
    parts = [requests.select(_SENT_COLUMNS)]
    for url in set_aside_files(run.url, ".parquet"):
        name = url.rsplit("/", 1)[-1]
        try:
            parts.append(storage.read_parquet(url).lazy().select(_SENT_COLUMNS))
        except (StorageError, OSError, pl.exceptions.PolarsError) as exc:
            run.problems.append(f"shards/{name}: a set-aside attempt's records cannot be read ({exc.__class__.__name__}); "
                                "what it cost is not counted")
    return pl.concat(parts, how="vertical_relaxed") if len(parts) > 1 else parts[0]


def _request_columns(names: Iterable[str]) -> list[str]:
    """`REQUEST_COLUMNS` a file with these columns has, leaving out only optional ones it lacks."""
    present = set(names)
    return [c for c in REQUEST_COLUMNS if c in present or c not in OPTIONAL_REQUEST_COLUMNS]


def _read_requests(url: str) -> pl.LazyFrame | None:
    if not storage.exists(url):
        return None
    try:
        if storage.is_remote(url):
            data = storage.read_bytes(url)
            columns = _request_columns(pl.read_parquet_schema(io.BytesIO(data)))
            return pl.read_parquet(io.BytesIO(data), columns=columns).lazy()
        lf = pl.scan_parquet(url)
        lf = lf.select(_request_columns(lf.collect_schema()))
        lf.collect_schema()
        return lf
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise StorageError(f"{url}: cannot read request records: {exc.__class__.__name__}: {exc}") from exc


#: Inter-token gaps (8 bytes each) up to which the report holds the request columns in memory for
#: all its queries; above, each query scans requests.parquet again, so that a run of long streams
#: never has every gap of every request in memory at once.
IN_MEMORY_ITL_VALUES = 25_000_000


def _itl_values(url: str) -> int:
    """How many inter-token gaps a local requests.parquet holds (from its footer; nothing decoded)."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(url).metadata
    cols = [i for i in range(md.num_columns) if md.schema.column(i).path.split(".")[0] == "itl_s"]
    return sum(md.row_group(g).column(i).num_values for g in range(md.num_row_groups) for i in cols)


def load_run(run_url: str, *, write_metrics: bool = True) -> RunData:
    """Read config.yml, manifest.json, requests.parquet and metrics.parquet of a run.

    When metrics.parquet is missing (or lacks columns this version writes) the metrics are computed
    from requests.parquet and, if ``write_metrics``, stored as metrics.parquet and metrics.csv.

    Raises:
        StorageError: neither metrics.parquet nor requests.parquet can be read (for a run that has not
            finished, the message says to resume it).
        ConfigError: ``run_url`` is no directory, or a directory of runs rather than a run; or an
            experiment's pricing cannot be resolved while computing metrics.
    """
    url = run_url.rstrip("/") if storage.is_remote(run_url) else run_url
    problems: list[str] = []
    manifest = Manifest()
    if has_manifest(url):
        try:
            manifest = with_noted_deletions(url, load_manifest(url))
        except (StorageError, UnicodeDecodeError) as exc:
            problems.append(f"manifest.json is unreadable ({exc.__class__.__name__}); run details are missing")
    else:
        problems.append("manifest.json is missing; run details are unknown")
    config_text: str | None = None
    cfg: BenchmarkConfig | None = None
    curl = storage.join(url, "config.yml")
    if storage.exists(curl):
        config_text = storage.read_text(curl)
        try:
            cfg = load_config_text(config_text, source=curl)
        except FMBenchError as exc:
            problems.append(f"config.yml does not validate with this fmbench version ({exc}); "
                            "pricing and SLOs are unknown")
    else:
        problems.append("config.yml is missing; pricing and SLOs are unknown")
    requests = _read_requests(storage.join(url, "requests.parquet"))
    metrics_url = storage.join(url, "metrics.parquet")
    metrics: pl.DataFrame | None = None
    computed = False
    if storage.exists(metrics_url):
        metrics = storage.read_parquet(metrics_url)
        if requests is not None and not {"meets_slo", "cost_per_10k_txn", "valid", "itl_p50_s",
                                         "cost_per_1m_total_tokens"} <= set(metrics.columns):
            metrics = None
    if metrics is None:
        if requests is None:
            if not manifest.shards:
                _nothing_to_report(url, manifest)
            problems.append("requests.parquet is missing; only shard outcomes are known")
        rurl = storage.join(url, "requests.parquet")
        if requests is not None and (storage.is_remote(rurl) or _itl_values(rurl) <= IN_MEMORY_ITL_VALUES):
            # Read once into memory: the metrics and then the report's other queries (sample, ITL
            # distribution, timelines, errors, cost) would each decode the parquet again (0.25-0.3 s
            # of 1.2-1.9 s over 1M records on the 2-core VM). A remote file is in memory already.
            requests = requests.collect().lazy()
        source = requests if requests is not None else pl.DataFrame(
            schema={c: REQUEST_SCHEMA[c] for c in REQUEST_COLUMNS})
        metrics = summarize(source, cfg, shards=manifest.shards or None)
        computed = True
        if write_metrics:
            storage.write_parquet(metrics_url, metrics)
            storage.write_text(storage.join(url, "metrics.csv"), metrics.write_csv())
    return RunData(url=url, manifest=manifest, config_text=config_text, cfg=cfg, metrics=_with_columns(metrics),
                   requests=requests, metrics_computed=computed, problems=problems)


def _nothing_to_report(url: str, manifest: Manifest) -> None:
    """Why ``url`` has no records to report, in one line: not a directory, a directory of runs rather
    than a run, a run that has not finished (its records are gathered at its end), or nothing at all.

    Raises:
        ConfigError: the path is not a run's (a command-line mistake).
        StorageError: the run has nothing to report yet.
    """
    if not storage.is_remote(url):
        path = Path(url)
        if not path.is_dir():
            raise ConfigError(f"{url}: no such run directory")
        runs = sorted(d.name for d in path.iterdir() if d.is_dir() and has_manifest(str(d)))
        if runs and not has_manifest(url):
            shown = ", ".join(runs[-5:]) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
            raise ConfigError(f"{url}: not a run directory; it holds runs ({shown}): give one of them")
    if has_manifest(url) and not manifest.ended_at:
        run_id = manifest.run_id or url.rstrip("/").rsplit("/", 1)[-1]
        raise StorageError(f"{url}: the run has not finished, so its records are not gathered yet; resume it "
                           f"(fmbench run CONFIG --run-id {run_id}) to measure what is left and write its report, "
                           f"or report what it measured so far: fmbench report {url} --partial")
    raise StorageError(f"{url}: neither metrics.parquet nor requests.parquet exists; nothing to report")


def _with_columns(metrics: pl.DataFrame) -> pl.DataFrame:
    """Metrics from older writers may lack columns; add them as nulls so the report can rely on them."""
    missing = [c for c in METRIC_COLUMNS if c not in metrics.columns]
    if not missing:
        return metrics
    return metrics.with_columns([pl.lit(None).alias(c) for c in missing])


def request_sample(requests: pl.LazyFrame | None, n: int = SAMPLE_SIZE) -> pl.DataFrame | None:
    """A deterministic sample of measured requests (experiment, input_tokens, latency_s, ok), each
    request once: a retried one by its final attempt."""
    if requests is None:
        return None
    df = (final_attempts(requests).filter(~pl.col("warmup").fill_null(False))
          .select("experiment", "input_tokens", "latency_s", "ok").collect())
    return df.sample(n=n, seed=0) if df.height > n else df



#: At most this many requests of one shard are drawn in its request timeline.
TIMELINE_SIZE = 200

#: The quantiles (percent) at which each ITL distribution is drawn (an exact CDF at these points).
ITL_QUANTILES = list(range(101))


def itl_distribution(requests: pl.LazyFrame | None) -> pl.DataFrame | None:
    """The ITL distribution per (experiment, load): one row per quantile in `ITL_QUANTILES`.

    Pooled over every gap of every successful measured request, all datasets and buckets of the
    load together. Columns experiment, concurrency, request_rate, q (percent), itl_s, gaps.
    """
    if requests is None or "itl_s" not in requests.collect_schema().names():
        return None
    keys = ["experiment", "concurrency", "request_rate"]
    streamed = (requests.filter(~pl.col("warmup").fill_null(False) & pl.col("ok").fill_null(False)
                                & (pl.col("itl_s").list.len().fill_null(0) > 0))
                .select([*keys, "itl_s"]))
    # Each load's gaps are flattened inside its group and sorted once; the quantiles are then read
    # off the sorted list (linear interpolation, as `fmbench.metrics.percentile`), not re-sorted 101 times.
    grouped = streamed.group_by(keys).agg(pl.col("itl_s").explode().drop_nulls().sort().alias("_v")).collect()
    n = pl.col("_v").list.len()
    quantiles = []
    for q in ITL_QUANTILES:
        h = (n - 1).cast(pl.Float64) * (q / 100)
        lo, hi = h.floor().cast(pl.Int64), h.ceil().cast(pl.Int64)
        a, b = pl.col("_v").list.get(lo, null_on_oob=True), pl.col("_v").list.get(hi, null_on_oob=True)
        quantiles.append((a + (h - lo) * (b - a)).alias(f"q{q}"))
    wide = grouped.filter(n > 0).select(*keys, n.cast(pl.Int64).alias("gaps"), *quantiles)
    if wide.is_empty():
        return None
    return (wide.unpivot(index=[*keys, "gaps"], variable_name="q", value_name="itl_s")
            .with_columns(pl.col("q").str.slice(1).cast(pl.Int64))
            .sort([*keys, "q"], nulls_last=True))


def request_timelines(requests: pl.LazyFrame | None, size: int = TIMELINE_SIZE) -> pl.DataFrame | None:
    """Each shard's requests for its timeline, warm-ups included, every attempt of a retried request
    with it (sorted by ``attempt``); shards with more than ``size`` requests keep every k-th request
    by request id (k = ceil(n / size)), so the drawn ones span the whole shard. Adds
    ``shard_requests`` (all requests of the shard, a retried one counted once) and ``step`` (k)."""
    if requests is None:
        return None
    cols = ["experiment", "dataset", "bucket", "bucket_min", "concurrency", "request_rate", "shard_id", "request_id",
            "warmup", "ok", "t_scheduled", "t_start", "t_first_token", "t_end"]
    names = set(requests.collect_schema().names())
    if not set(cols) <= names:
        return None
    if "attempt" in names:  # records from before retries have one attempt per request
        cols.append("attempt")
    n = pl.col("request_id").n_unique().over("shard_id")
    step = ((n + size - 1) // size).clip(lower_bound=1)
    rank = pl.col("request_id").rank("dense").over("shard_id") - 1
    df = (requests.select(cols)
          .filter(pl.col("shard_id").is_not_null() & pl.col("t_scheduled").is_not_null())
          .with_columns(n.cast(pl.Int64).alias("shard_requests"), step.cast(pl.Int64).alias("step"))
          .filter((rank % pl.col("step")) == 0)
          .sort(["experiment", "dataset", "bucket_min", "concurrency", "request_rate", "request_id"]
                + (["attempt"] if "attempt" in cols else []), nulls_last=True)
          .collect())
    return None if df.is_empty() else df
