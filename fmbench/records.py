"""The per-request record: one row per request sent, the unit every metric is computed from.

A shard's records are written as they complete (see `fmbench.loadgen`), then gathered into the
run's ``requests.parquet``. Times are seconds; ``t_*`` columns are absolute ``time.monotonic()``
stamps (one clock for every process on a host), the others are durations.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import polars as pl

#: Error kinds a failed request is classified as (``error_kind`` column).
ERROR_KINDS = ("timeout", "throttled", "server_error", "client_error", "connection", "protocol", "cancelled")

#: The schema of ``requests.parquet`` and of each shard's records file.
REQUEST_SCHEMA: dict[str, pl.DataType] = {
    "experiment": pl.String(),
    "dataset": pl.String(),
    "bucket": pl.String(),  # label "min-max"
    "bucket_min": pl.Int64(),
    "bucket_max": pl.Int64(),
    "concurrency": pl.Int64(),  # closed loop: requests in flight; open loop: the cap (0 = none)
    "request_rate": pl.Float64(),  # open loop target rate, req/s; null for closed loop
    "shard_id": pl.String(),
    "request_id": pl.Int64(),  # 0.. within the shard, in scheduling order
    "prompt_id": pl.String(),
    "attempt": pl.Int64(),  # 1 unless in-shard retries are enabled
    "warmup": pl.Boolean(),  # warm-up requests are recorded but excluded from metrics
    "ok": pl.Boolean(),
    "error_kind": pl.String(),  # one of ERROR_KINDS, null when ok
    "error": pl.String(),  # message, null when ok
    "http_status": pl.Int64(),
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "usage_source": pl.String(),  # "server": the endpoint's usage; "server_output": its output count, our
    # prompt count; "tokenizer": both counted by the experiment's tokenizer
    "t_scheduled": pl.Float64(),  # when the request was due (open loop) or started (closed loop)
    "t_start": pl.Float64(),  # when the client began sending
    "t_first_token": pl.Float64(),
    "t_end": pl.Float64(),
    "send_lag_s": pl.Float64(),  # t_start - t_scheduled
    "ttft_s": pl.Float64(),  # first token - scheduled time
    "latency_s": pl.Float64(),  # end - scheduled time
    "tpot_s": pl.Float64(),  # (latency - ttft) / (output_tokens - 1)
    "itl_s": pl.List(pl.Float64()),  # gaps between chunks carrying output tokens
    "chunks": pl.Int64(),  # streamed chunks that carried output tokens
    "resends": pl.Int64(),  # re-sent on a new connection: the server had closed the pooled one unread
    "note": pl.String(),  # e.g. a stream whose tokens the server counted but whose text never arrived
    # The completion's text, only when the experiment sets store_text (prompts and answers may be
    # private); null otherwise and for failed requests.
    "text": pl.String(),
    # The Dask worker that sent it (a shard run on a Dask cluster, split over client_hosts or not);
    # null when the run used no Dask cluster.
    "client_host": pl.String(),
    # Of the prompt tokens, those the server says it served from its prompt cache (no prefill ran for
    # them); null when it does not say. Where they are many, TTFT is not that of a new prompt.
    "cached_tokens": pl.Int64(),
}


@dataclass(slots=True)
class RequestRecord:
    """One request's outcome; field names and types match `REQUEST_SCHEMA`."""

    experiment: str
    dataset: str
    bucket: str
    bucket_min: int
    bucket_max: int
    concurrency: int
    shard_id: str
    request_id: int
    prompt_id: str
    request_rate: float | None = None
    attempt: int = 1
    warmup: bool = False
    ok: bool = False
    error_kind: str | None = None
    error: str | None = None
    http_status: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage_source: str | None = None
    t_scheduled: float | None = None
    t_start: float | None = None
    t_first_token: float | None = None
    t_end: float | None = None
    send_lag_s: float | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    tpot_s: float | None = None
    itl_s: list[float] | array[float] = field(default_factory=list)  # the engine's: an array("d")
    chunks: int | None = None
    resends: int = 0
    note: str | None = None
    text: str | None = None
    client_host: str | None = None
    cached_tokens: int | None = None

    def as_row(self) -> dict[str, object]:
        row = {name: getattr(self, name) for name in REQUEST_SCHEMA}
        row["itl_s"] = list(self.itl_s)  # the engine's array("d") as the list polars reads
        return row


def empty_requests() -> pl.DataFrame:
    """An empty frame with the request schema."""
    return pl.DataFrame(schema=REQUEST_SCHEMA)


def records_frame(records: list[RequestRecord]) -> pl.DataFrame:
    """Records as a frame with exactly the request schema."""
    return pl.DataFrame([r.as_row() for r in records], schema=REQUEST_SCHEMA)


def final_attempts(records: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Each request once: of a request retried in its shard (one record per attempt) only its final
    attempt, the highest ``attempt`` per shard and request id, which is what the request counts as.
    Records without those columns (older files) are every one its request's only attempt."""
    lf = records.lazy() if isinstance(records, pl.DataFrame) else records
    names = lf.collect_schema().names()
    if "attempt" not in names or "request_id" not in names:
        return lf
    attempt = pl.col("attempt").fill_null(1)
    return lf.filter(attempt == attempt.max().over(["shard_id", "request_id"]))
