"""What one shard runs (`ShardSpec`) and what it reports back (`ShardResult`).

A shard is one (experiment, dataset, bucket, load level) cell of a benchmark: closed loop when
``request_rate`` is unset (``concurrency`` requests always in flight), open loop otherwise
(arrivals at ``request_rate`` per second, optionally capped by ``max_concurrency``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator


class ShardSpec(BaseModel):
    """One shard of load: which cell it belongs to, how load is offered, how many requests."""

    model_config = ConfigDict(extra="forbid")

    shard_id: str = Field(
        description="Unique id of the shard within the run (used in records and file names)."
    )
    experiment: str = Field(description="Experiment name (records column).")
    dataset: str = Field(description="Dataset name (records column).")
    bucket: str = Field(description="Bucket label, e.g. '1-500' (records column).")
    bucket_min: int = Field(ge=0, description="Bucket lower bound in prompt tokens.")
    bucket_max: int = Field(ge=0, description="Bucket upper bound in prompt tokens.")
    concurrency: int = Field(
        default=1, ge=1, description="Closed loop: requests kept in flight at every moment."
    )
    request_rate: float | None = Field(
        default=None, gt=0, description="Open loop: target arrivals per second; unset means closed loop."
    )
    arrival: Literal["poisson", "gamma", "constant"] = Field(
        default="poisson", description="Open loop: distribution of the gaps between arrivals."
    )
    burstiness: float = Field(
        default=1.0,
        gt=0,
        description="Open loop, gamma arrivals: shape k (1 = Poisson, <1 burstier, >1 smoother).",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Open loop: at most this many in flight; later arrivals wait, and the wait counts "
        "in their latency.",
    )
    requests: int = Field(ge=1, description="Measured requests.")
    warmup: int = Field(
        default=0, ge=0, description="Requests sent first, recorded with warmup=True, not measured."
    )
    seed: int = Field(default=0, description="Seed of the arrival schedule (open loop).")
    max_send_lag_s: float = Field(
        default=0.01,
        gt=0,
        description="Open loop: the shard is invalid when the p99 of the client's lateness in dispatching "
        "a request past its scheduled time exceeds this (seconds).",
    )
    rate_shortfall: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Open loop: the shard is invalid when the achieved send rate is more than this fraction "
        "below the scheduled rate.",
    )
    overload_shortfall: float = Field(
        default=0.10,
        gt=0,
        lt=1,
        description="Open loop: the endpoint is overloaded when its requests completed at a rate more than this "
        "fraction below the arrivals' (by more than 3 standard errors, fmbench.loadgen.overload); such a shard "
        "fails its SLOs and is never recommended.",
    )

    request_retries: int = Field(
        default=0,
        ge=0,
        description="Retries of a failed request (retryable kinds only, bounded backoff); every attempt "
        "is a record, see fmbench.loadgen.retry.",
    )
    throttle_retries: int = Field(
        default=0,
        ge=0,
        description="Retries of a throttled request on top of request_retries (Bedrock's throttle_retries), "
        "backing off from throttle_backoff_s; every attempt is a record.",
    )
    throttle_backoff_s: float = Field(default=0.5, gt=0, description="First backoff after throttling, doubling.")

    store_text: bool = Field(
        default=False, description="Keep each successful completion's text in its record (column 'text')."
    )

    processes: int = Field(
        default=1,
        ge=1,
        description="Client processes sharing the shard (one timeline, one records file); more than 1 "
        "when one event loop cannot offer the load.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ShardSpec:
        if self.bucket_max < self.bucket_min:
            raise ValueError(f"bucket_max {self.bucket_max} < bucket_min {self.bucket_min}")
        if self.request_rate is None and self.max_concurrency is not None:
            raise ValueError("max_concurrency applies to open loop only (set request_rate)")
        if self.processes > 1 and self.max_concurrency is not None:
            raise ValueError("max_concurrency cannot be split over several processes (use processes: 1)")
        if self.processes > 1 and not self.open_loop and self.processes > self.concurrency:
            raise ValueError(f"processes ({self.processes}) cannot exceed concurrency ({self.concurrency})")
        return self

    @property
    def open_loop(self) -> bool:
        """True when requests arrive at a rate rather than at a fixed concurrency."""
        return self.request_rate is not None


class ShardResult(BaseModel):
    """What a finished shard reports; per-request detail lives in ``records_path``."""

    model_config = ConfigDict(extra="forbid")

    shard_id: str = Field(description="The shard's id.")
    records_path: str = Field(description="Parquet file with one RequestRecord per scheduled request.")
    requests: int = Field(description="Measured requests recorded (ok or failed).")
    warmup: int = Field(description="Warm-up requests recorded.")
    errors: int = Field(description="Measured requests that failed.")
    t_first_start: float | None = Field(
        description="First send of a measured request (its first attempt's t_start; monotonic s).")
    t_last_end: float | None = Field(description="Last measured request's t_end (monotonic s).")
    duration_s: float = Field(description="First measured start to last measured end, seconds.")
    achieved_rate: float = Field(
        description="Open loop: measured requests sent per second (first to last t_start); "
        "closed loop: measured requests completed per second over duration_s."
    )
    target_rate: float | None = Field(default=None, description="Open loop: the configured request_rate.")
    scheduled_rate: float | None = Field(
        default=None,
        description="Open loop: the rate of the seeded schedule itself (random gaps deviate "
        "from the target); the achieved rate is judged against it.",
    )
    send_lag_p99_s: float = Field(
        description="p99 of t_start - t_scheduled over measured requests (0 closed loop)."
    )
    dispatch_lag_p99_s: float = Field(
        description="p99 of the pacer's lateness (dispatch - scheduled), excluding max_concurrency waits."
    )
    valid: bool = Field(description="False when the client could not offer the load it was asked to.")
    invalid_reason: str | None = Field(default=None, description="Why the shard is invalid.")
    slot_waits: int = Field(
        default=0, description="Open loop with max_concurrency: measured requests that had to wait for a slot.")
    overloaded: bool = Field(
        default=False, description="Open loop: the endpoint completed requests measurably slower than they "
        "arrived (fmbench.loadgen.overload), so its queue grew for the whole shard.")
    overload_reason: str | None = Field(default=None, description="Why the shard is overloaded.")
    completion_rate: float | None = Field(
        default=None, description="Open loop: the rate requests completed at as a fraction of the rate they "
        "arrived at (1 / the slope of end time on scheduled time); None closed loop, with under 10 ok requests, or "
        "when the client could not keep up with the schedule.")
    client_cpu_s: float = Field(description="Process CPU time used while the shard ran, seconds.")
    receive_stamps: dict[str, int] | None = Field(
        default=None, description="The client's connections by how the arrival of answers was stamped: "
        "'kernel' (the socket's receive stamp) or 'event_loop' (when the client's loop handled the read); for "
        "the AWS SDK's clients 'sdk_thread' (when botocore handed each part to the request's thread), counted per "
        "request sent; None for clients that do not say.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def path(self) -> str:
        """The records file (same as ``records_path``)."""
        return self.records_path
