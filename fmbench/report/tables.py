"""Formatted tables and short summaries of metrics, shared by the Markdown and HTML reports.

`metrics_table_rows` and `summary_markdown` are also meant for orchestration artifacts (plain
strings, no plotting).
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from fmbench.metrics import Recommendation, recommend
from fmbench.metrics.cost import hours, significant_decimals, usd


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or math.isinf(x) else x


def fmt_seconds(x: Any) -> str:
    """Seconds with two decimals, or as many more as show a short time's first two digits (a 2.3-ms
    latency is 0.0023, not 0.00); ``–`` when unknown."""
    v = _num(x)
    if v is None:
        return "–"
    return f"{v:.{_decimals(v, 2)}f}"


def _decimals(v: float, least: int) -> int:
    """``least`` decimals, or for a value they would show as 0.0… (below one unit of the last of
    them), as many as show its first two significant digits (at most 6)."""
    if v == 0 or abs(v) >= 10 ** -least:
        return least
    return max(least, significant_decimals(v))


def fmt_ms(x: Any) -> str:
    """Seconds shown as milliseconds."""
    v = _num(x)
    if v is None:
        return "–"
    ms = v * 1000
    return f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def fmt_int(x: Any) -> str:
    """A count or rate with thousands separators and no decimals."""
    v = _num(x)
    return "–" if v is None else f"{v:,.0f}"


def fmt_tokens(x: Any) -> str:
    """A mean token count: one decimal below 100, none above."""
    v = _num(x)
    if v is None:
        return "–"
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def fmt_pct(x: Any) -> str:
    """A fraction as a percentage, with one decimal, or as many more as a small one needs not to read
    as 0.0 % (an error rate of 0.04 % fails a zero-error SLO)."""
    v = _num(x)
    if v is None:
        return "–"
    return f"{v * 100:.{_decimals(v * 100, 1)}f}%"


def fmt_usd(x: Any) -> str:
    """A dollar amount: cents for normal amounts, more digits for tiny ones."""
    v = _num(x)
    return "unknown" if v is None else usd(v)


#: Per cost column of a shard: the count it divides the shard's cost by, and what it says when
#: that count is zero (a failed request buys no transaction and, here, no tokens).
_COST_UNITS = {
    "cost_per_10k_txn": ("successes", "no successful request"),
    "cost_per_10k_good": ("good_requests", "no request met every per-request SLO"),
    "cost_per_1m_input_tokens": ("input_tokens", "no input tokens counted"),
    "cost_per_1m_output_tokens": ("output_tokens", "no output tokens counted"),
    "cost_per_1m_total_tokens": ("total_tokens", "no tokens counted"),
}


def cost_cell(row: dict[str, Any], column: str) -> str:
    """A priced shard's cost per unit (a ``cost_per_*`` column of `fmbench.metrics.attach_costs`):
    ``unknown`` only when the shard's cost is; when the cost is known but bought none of the unit,
    ``– (no successful request)`` or the like, since dividing by zero is not missing pricing."""
    value = _num(row.get(column))
    if value is not None:
        return usd(value)
    if _num(row.get("shard_cost_usd")) is None or column not in _COST_UNITS:
        return "unknown"
    if row.get("successes") == 0:
        return "– (no successful request)"
    count, why = _COST_UNITS[column]
    bought = ((row.get("input_tokens") or 0) + (row.get("output_tokens") or 0) if count == "total_tokens"
              else row.get(count))
    return f"– ({why})" if bought == 0 else "unknown"


def fmt_load(row: dict[str, Any]) -> str:
    """``c=8`` for closed loop, ``2.5 req/s`` for open loop."""
    rate = _num(row.get("request_rate"))
    if rate is not None:
        cap = row.get("concurrency")
        return f"{rate:g} req/s" + (f" (≤{cap} in flight)" if cap else "")
    return f"c={row.get('concurrency')}"


def invalid_reason(row: dict[str, Any]) -> str | None:
    """Why a shard's numbers are invalid, or None when they are valid or its failure already says it all.

    A failed shard is said to have failed; it is listed as invalid too only for a reason of its own.
    """
    if row.get("valid") is not False:
        return None
    if row.get("status") == "failed" and not row.get("invalid_reason"):
        return None
    return row.get("invalid_reason") or "no reason given"


def overload_reason(row: dict[str, Any]) -> str | None:
    """Why an open-loop shard's endpoint counts as overloaded (its queue grew for the whole shard), or
    None when it kept up, was closed loop, or had too few requests to tell."""
    if not row.get("overloaded"):
        return None
    if reason := row.get("overload_reason"):
        return str(reason)
    rate = _num(row.get("completion_rate"))
    return "completed requests slower than they arrived" + (
        f" ({rate:.0%} of the offered rate)" if rate is not None else "")


def slo_cell(row: dict[str, Any]) -> str:
    """Pass/fail text of a shard, with the failed objectives and the invalid/failed status."""
    parts = []
    if row.get("status") == "failed":
        parts.append("✖ shard failed")
    if (reason := invalid_reason(row)) is not None:
        parts.append(f"⚠ invalid: {reason}")
    if row.get("meets_slo"):
        parts.insert(0, "✔ pass")
    else:
        parts.insert(0, "✘ fail" + (f": {row['slo_failures']}" if row.get("slo_failures") else ""))
    return "; ".join(parts)


#: Column headers of `metrics_table_rows` (without dataset/bucket when per bucket).
TABLE_HEADERS = ["Experiment", "Load", "Requests", "Failed", "p50 latency (s)", "p95 latency (s)", "p99 latency (s)",
                 "p95 TTFT (ms)", "p95 TPOT (ms)", "p95 ITL (ms)", "Transactions/min", "Output tokens/req",
                 "Output tokens/s", "Error rate", "Cost per 10k txn", "SLO"]


def metrics_table_rows(metrics: pl.DataFrame, *, with_bucket: bool = True) -> list[dict[str, str]]:
    """One formatted row (header -> text) per shard, e.g. for a table artifact.

    Args:
        metrics: per-shard metrics as from `fmbench.metrics.summarize`.
        with_bucket: include Dataset and Bucket columns.
    """
    out = []
    for r in metrics.iter_rows(named=True):
        row: dict[str, str] = {}
        if with_bucket:
            row["Dataset"] = str(r.get("dataset"))
            row["Bucket"] = str(r.get("bucket"))
        row.update({
            "Experiment": str(r.get("experiment")),
            "Load": fmt_load(r),
            "Requests": fmt_int(r.get("requests")),
            # Latency percentiles are over successes: the failures stand beside them, never hidden.
            "Failed": fmt_int(r.get("errors")),
            "p50 latency (s)": fmt_seconds(r.get("latency_p50_s")),
            "p95 latency (s)": fmt_seconds(r.get("latency_p95_s")),
            "p99 latency (s)": fmt_seconds(r.get("latency_p99_s")),
            "p95 TTFT (ms)": fmt_ms(r.get("ttft_p95_s")),
            "p95 TPOT (ms)": fmt_ms(r.get("tpot_p95_s")),
            "p95 ITL (ms)": fmt_ms(r.get("itl_p95_s")),
            "Transactions/min": fmt_int(r.get("transactions_per_min")),
            # (what a transaction is: throughput in requests compares only answers of like length)
            "Output tokens/req": fmt_tokens(r.get("output_tokens_mean")),
            "Output tokens/s": fmt_int(r.get("output_tokens_per_s")),
            "Error rate": fmt_pct(r.get("error_rate")),
            "Cost per 10k txn": cost_cell(r, "cost_per_10k_txn") if r.get("price_model") else "no pricing",
            "SLO": slo_cell(r),
        })
        out.append(row)
    return out


def md_escape(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(rows: list[dict[str, str]], headers: list[str] | None = None) -> str:
    """A GitHub Markdown table."""
    if not rows:
        return "_(none)_"
    headers = headers or list(rows[0])
    lines = ["| " + " | ".join(md_escape(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(md_escape(r.get(h, "")) for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(metrics: pl.DataFrame, slo: Any = None, recommendations: list[Recommendation] | None = None,
                     title: str | None = None) -> str:
    """A short Markdown summary: one recommendation sentence per dataset bucket, and pass counts.

    Args:
        metrics: per-shard metrics.
        slo: the `SLOConfig` the metrics were judged against (for the sentences' limits).
        recommendations: precomputed recommendations (default: computed here).
        title: optional heading.
    """
    recs = recommendations if recommendations is not None else recommend(metrics, slo)
    lines = [f"## {title}", ""] if title else []
    measured = metrics.filter(pl.col("requests") > 0) if "requests" in metrics.columns else metrics
    meets = measured["meets_slo"].fill_null(False) if "meets_slo" in measured.columns else None
    passing = int(meets.sum()) if meets is not None else 0
    invalid = (int((meets & measured["valid"].eq(False)).fill_null(False).sum())
               if meets is not None and "valid" in measured.columns else 0)
    lines.append(f"{measured.height} measured shard(s), {passing} meet every SLO"
                 + (f" ({invalid} of them not valid measurements, so not recommended)." if invalid else "."))
    lines.append("")
    lines += [f"- {r.reasoning}" for r in recs] or ["- No measurements: nothing to recommend."]
    return "\n".join(lines) + "\n"


def _clock(value: str | None) -> str:
    return "–" if not value else str(value).replace("T", " ")[:19]


def timeline_rows(timelines: dict[str, Any], run_end: str | None) -> list[dict[str, str]]:
    """The endpoint timeline as table rows: when each endpoint was created, InService, measured, deleted."""
    from fmbench.metrics.cost import billed_time

    rows = []
    lives = [(life, i < len(tl.earlier)) for tl in timelines.values() for i, life in enumerate(tl.lives())]
    for t, earlier in lives:  # an earlier attempt's endpoints first, then the one the run ended with
        b = billed_time(t, run_end)
        alive = "–" if b is None else f"{hours(b.billed_s / 3600.0)} h"
        if t.gone_by:  # deleted outside fmbench, at a time known only to lie in between
            deleted = f"between {_clock(t.deleted_at)} and {_clock(t.gone_by)} ({t.deleted_by or 'outside fmbench'})"
            alive = f"{alive} or more"
        elif t.deleted_at:
            deleted = _clock(t.deleted_at) + (f" (by {t.deleted_by})" if t.deleted_by else "")
        else:
            deleted = ("NOT deleted (still billing)" if b is not None
                       else "never created: its deploy ended before CreateEndpoint" if t.never_created
                       else "not created by the run")
        rows.append({
            "Experiment": t.label + (" (earlier attempt)" if earlier else ""), "Endpoint": t.endpoint_name or "–",
            "Instances": f"{t.instance_count} x {t.instance_type}" if t.instance_type else "–",
            "Created (UTC)": _clock(t.created_at) + (" (adopted)" if t.adopted else ""),
            "InService": _clock(t.in_service_at), "First shard": _clock(t.first_shard_at),
            "Last shard": _clock(t.last_shard_at), "Deleted": deleted, "Billed": alive,
        })
    return rows


def itl_goodput_rows(metrics: pl.DataFrame, goodput: bool) -> list[dict[str, str]]:
    """Per shard: ITL percentiles, tokens per chunk and, when ``goodput``, the goodput columns."""
    out = []
    for r in metrics.filter(pl.col("requests") > 0).iter_rows(named=True):
        row = {"Experiment": str(r.get("experiment")), "Dataset": str(r.get("dataset")),
               "Bucket": str(r.get("bucket")), "Load": fmt_load(r)}
        for p in (50, 90, 95, 99):
            row[f"ITL p{p} (ms)"] = fmt_ms(r.get(f"itl_p{p}_s"))
        row["ITL max (ms)"] = fmt_ms(r.get("itl_max_s"))
        tpc = _num(r.get("tokens_per_chunk"))
        row["Tokens per chunk"] = "–" if tpc is None else f"{tpc:.2f}"
        if goodput:
            row["Good requests"] = f"{fmt_int(r.get('good_requests'))} of {fmt_int(r.get('requests'))}"
            row["Goodput share"] = fmt_pct(r.get("goodput_share"))
            gps = _num(r.get("goodput_per_s"))
            row["Goodput (req/s)"] = "–" if gps is None else f"{gps:,.2f}"
        out.append(row)
    return out


def token_cost_rows(metrics: pl.DataFrame, goodput: bool) -> list[dict[str, str]]:
    """Per priced shard: cost per 1M input, output and total tokens (and per 10k good requests)."""
    out = []
    for r in metrics.filter(pl.col("requests") > 0).iter_rows(named=True):
        if not r.get("price_model"):
            continue
        row = {"Experiment": str(r.get("experiment")), "Dataset": str(r.get("dataset")),
               "Bucket": str(r.get("bucket")), "Load": fmt_load(r), "Pricing": str(r.get("price_model")),
               "Per 1M input tokens": cost_cell(r, "cost_per_1m_input_tokens"),
               "Per 1M output tokens": cost_cell(r, "cost_per_1m_output_tokens"),
               "Per 1M tokens (in + out)": cost_cell(r, "cost_per_1m_total_tokens"),
               "Per 10k transactions": cost_cell(r, "cost_per_10k_txn")}
        if goodput:
            row["Per 10k good requests"] = cost_cell(r, "cost_per_10k_good")
        out.append(row)
    return out
