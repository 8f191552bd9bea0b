"""The data of a regression check: the rules per metric, thresholds, changes and the report.

`RegressionReport` is what ``regression.json`` holds; the other modules of `fmbench.regression`
produce it (`compare`, `check`) or read it (`render`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REGRESSION_JSON = "regression.json"
REGRESSION_MD = "regression.md"
TREND_PLOTS: dict[str, str] = {
    "latency_p95_s": "plots/trend_latency_p95.png",
    "ttft_p95_s": "plots/trend_ttft_p95.png",
    "transactions_per_min": "plots/trend_throughput.png",
    "cost_per_10k_txn": "plots/trend_cost.png",
}

#: The columns that identify a shard in metrics.parquet and requests.parquet.
SHARD_KEYS = ["experiment", "dataset", "bucket", "concurrency", "request_rate"]
ShardKey = tuple[str, str, str, int, float | None]


class MetricRule(BaseModel):
    """How one metric is compared: which way is worse and what per-request data measures its noise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(description="Column of metrics.parquet.")
    label: str = Field(description="Name shown in the report.")
    worse: Literal["up", "down"] = Field(description="The direction that is a regression.")
    column: str | None = Field(default=None, description="requests.parquet column bootstrapped for noise.")
    statistic: Literal["p95", "mean", "rate"] | None = Field(
        default=None, description="Statistic of `column`; rate: a closed-loop rate, resampled from every request's "
        "time in flight and outcome (`column` unused; see `noise.rate_samples`).")


#: The metrics compared, in report order.
RULES: tuple[MetricRule, ...] = (
    MetricRule(metric="latency_p95_s", label="p95 latency", worse="up", column="latency_s", statistic="p95"),
    MetricRule(metric="ttft_p95_s", label="p95 TTFT", worse="up", column="ttft_s", statistic="p95"),
    MetricRule(metric="transactions_per_min", label="throughput (txn/min)", worse="down", column="latency_s",
               statistic="rate"),
    MetricRule(metric="output_tokens_per_s", label="output tokens/s", worse="down", column="latency_s",
               statistic="rate"),
    MetricRule(metric="error_rate", label="error rate", worse="up", column="failed", statistic="mean"),
    MetricRule(metric="cost_per_10k_txn", label="cost per 10k txn", worse="up"),
)

#: The metrics that are latencies, in seconds (output_tokens_per_s is a rate).
LATENCY_METRICS = frozenset({"latency_p95_s", "ttft_p95_s"})


class Thresholds(BaseModel):
    """Relative change (0.10 = 10%) beyond which a metric moving the wrong way is flagged."""

    model_config = ConfigDict(extra="forbid")

    latency_p95_s: float = Field(default=0.10, ge=0, description="p95 latency increase.")
    ttft_p95_s: float = Field(default=0.10, ge=0, description="p95 time-to-first-token increase.")
    transactions_per_min: float = Field(default=0.10, ge=0, description="Throughput decrease.")
    output_tokens_per_s: float = Field(default=0.10, ge=0, description="Output token rate decrease.")
    error_rate: float = Field(default=0.10, ge=0, description="Error rate increase (relative).")
    cost_per_10k_txn: float = Field(default=0.10, ge=0, description="Cost per 10k transactions increase.")
    error_rate_min_abs: float = Field(
        default=0.01, ge=0,
        description="The error rate must also rise by at least this much in absolute terms (0.01 = one "
        "point): from 0 any error is an infinite relative rise.",
    )

    @classmethod
    def uniform(cls, threshold: float) -> Thresholds:
        """The same relative threshold for every metric."""
        return cls(**{r.metric: threshold for r in RULES})


class MetricChange(BaseModel):
    """One metric of one shard, previous run vs this run."""

    model_config = ConfigDict(extra="forbid")

    experiment: str
    dataset: str
    bucket: str
    concurrency: int
    request_rate: float | None = None
    metric: str
    label: str
    previous: float | None
    current: float | None
    change: float | None = Field(description="Relative change (current/previous - 1); None when undefined.")
    threshold: float
    worse: Literal["up", "down"]
    beyond_threshold: bool = Field(description="Moved the wrong way by more than the threshold.")
    ci_low: float | None = Field(default=None, description="Bootstrap CI of current - previous, low end.")
    ci_high: float | None = Field(default=None, description="Bootstrap CI of current - previous, high end.")
    significant: bool | None = Field(
        default=None, description="The CI excludes zero on the worse side; None without per-request data.")
    caveat: str | None = Field(
        default=None, description="Why this shard's measurement in either run may account for the change (the "
        "shard was invalid, e.g. a saturated client; the simulated endpoint was saturated, or late by at least "
        "as much as the change, which delays answers but fails none, so never an error rate's change); a "
        "change with a caveat is never a regression or an improvement.")
    regression: bool = Field(description="Beyond the threshold and not within run-to-run noise.")
    improvement: bool = Field(description="Moved the good way by more than the threshold, beyond noise.")

    @property
    def shard(self) -> str:
        """A short shard label, e.g. ``sim / synthetic / 1-300 / c4``."""
        level = f"r{self.request_rate:g}" if self.request_rate is not None else f"c{self.concurrency}"
        return f"{self.experiment} / {self.dataset} / {self.bucket} / {level}"


class RegressionReport(BaseModel):
    """Everything `check_regressions` found; written as regression.json."""

    model_config = ConfigDict(extra="forbid")

    name: str
    run_id: str
    run_url: str
    previous_run_id: str | None = None
    previous_run_url: str | None = None
    status: Literal["no-previous", "ok", "regressed"]
    config_changed: bool = Field(default=False, description="The config hash differs from the previous run's.")
    thresholds: Thresholds
    confidence: float
    n_resamples: int
    compared_shards: int = 0
    changes: list[MetricChange] = Field(default_factory=list)
    newly_failed: list[str] = Field(default_factory=list, description="Shards ok before, failed now.")
    new_shards: list[str] = Field(default_factory=list)
    missing_shards: list[str] = Field(default_factory=list)
    trend_runs: list[str] = Field(default_factory=list, description="Run ids plotted in the trend plots.")
    plots: list[str] = Field(default_factory=list, description="Trend plot URLs.")
    plot_error: str | None = None

    @property
    def regressions(self) -> list[MetricChange]:
        """Changes flagged as regressions."""
        return [c for c in self.changes if c.regression]

    @property
    def within_noise(self) -> list[MetricChange]:
        """Changes beyond the threshold that the bootstrap cannot tell from noise."""
        return [c for c in self.changes if c.beyond_threshold and c.significant is False and not c.caveat]

    @property
    def untrusted(self) -> list[MetricChange]:
        """Changes beyond the threshold (either way) on shards whose measurement has a caveat: not counted."""
        return [c for c in self.changes if c.caveat and (c.beyond_threshold or c.change is not None
                                                          and abs(c.change) > c.threshold)]

    @property
    def improvements(self) -> list[MetricChange]:
        """Changes the good way beyond the threshold and beyond noise."""
        return [c for c in self.changes if c.improvement]

    def summary(self) -> str:
        """One line for logs and flow run messages."""
        if self.status == "no-previous":
            return f"{self.name}: no previous successful run to compare with"
        n = len(self.regressions) + len(self.newly_failed)
        untrusted = (f"; {len(self.untrusted)} change(s) on shards measured under a late simulator or a "
                     "saturated client not counted" if self.untrusted else "")
        if not n:
            return f"{self.name}: no regression since {self.previous_run_id}{untrusted}"
        first = self.regressions[0] if self.regressions else None
        what = (f"{first.label} {format_change(first)} on {first.shard}" if first
                else f"shard {self.newly_failed[0]} failed")
        return f"{self.name}: {n} regression(s) since {self.previous_run_id}, e.g. {what}{untrusted}"



def shard_key(row: dict[str, Any]) -> ShardKey:
    """The shard a metrics or requests row belongs to."""
    rate = row.get("request_rate")
    return (str(row["experiment"]), str(row["dataset"]), str(row["bucket"]), int(row["concurrency"] or 0),
            None if rate is None else float(rate))


def shard_label(key: ShardKey) -> str:
    """A short shard label, e.g. ``sim / synthetic / 1-300 / c4``."""
    level = f"r{key[4]:g}" if key[4] is not None else f"c{key[3]}"
    return f"{key[0]} / {key[1]} / {key[2]} / {level}"


def format_change(c: MetricChange) -> str:
    """The relative change as the report prints it (``+12.3%``, ``from 0``)."""
    if c.change is None:
        return "from 0" if c.previous == 0 else "n/a"
    return f"{c.change * 100:+.1f}%"
