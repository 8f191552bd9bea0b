"""Write a report (report.md, report.html, plots/*.png) for one run, from its run directory.

The Markdown renders on GitHub (relative ``plots/x.png`` images); the HTML is self-contained
(plotly.js inlined, no network access) with interactive figures. Most PNGs are drawn with Pillow
in a child process (`png_worker`); the endpoint timeline, the answer-quality plot and the trend
plots are exported with kaleido, which drives Chromium. When either fails the report still renders
and says why the plots are missing.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as _dt
import json
import pickle
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
import polars as pl
import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from fmbench import storage
from fmbench.deploy import EndpointTimeline
from fmbench.errors import FMBenchError
from fmbench.metrics import Recommendation, benchmark_cost, error_counts, experiment_pricing, recommend
from fmbench.metrics.cost import hours as fmt_hours
from fmbench.png import PngExporter, export_timeout_s
from fmbench.regression import pending_trend_plots, record_trend_plots, store_trend_pngs
from fmbench.report.figures import Figure, build_figures, colour_map, endpoint_timeline_figure
from fmbench.report.png_worker import PngWorker
from fmbench.report.quality import QualityView, quality_figure, quality_view, with_accuracy
from fmbench.report.request_figures import itl_figure, timeline_figures
from fmbench.report.run import (
    RunData,
    itl_distribution,
    load_run,
    request_sample,
    request_timelines,
    sent_requests,
)
from fmbench.report.tables import (
    TABLE_HEADERS,
    fmt_int,
    fmt_load,
    fmt_pct,
    fmt_seconds,
    fmt_usd,
    invalid_reason,
    itl_goodput_rows,
    md_table,
    metrics_table_rows,
    overload_reason,
    timeline_rows,
    token_cost_rows,
)
from fmbench.rundir import Manifest


@dataclass
class ReportPaths:
    """Where a report was written (URLs or local paths)."""

    markdown: str
    html: str
    metrics_csv: str
    metrics_parquet: str
    plots: list[str] = field(default_factory=list)
    plots_missing_reason: str | None = None


@dataclass
class ReportInput:
    """Everything a report shows; one run's or several runs' data merged."""

    title: str
    description: str | None
    runs: list[RunData]
    metrics: pl.DataFrame
    slo: Any
    sample: pl.DataFrame | None
    errors: pl.DataFrame | None
    bench_cost: pl.DataFrame | None
    pricing: list[dict[str, str]]
    compare: bool = False
    changes_md: str | None = None  # the run's regression.md ("Changes since <previous run>")
    endpoint_rows: list[dict[str, str]] | None = None  # CloudWatch metrics per shard (SageMaker)
    timelines: dict[str, EndpointTimeline] | None = None  # experiment -> when its endpoint was alive
    run_end: str | None = None  # what an endpoint never deleted is billed up to
    itl_dist: pl.DataFrame | None = None  # ITL quantiles per (experiment, load), `run.itl_distribution`
    request_spans: pl.DataFrame | None = None  # per-shard request spans, `run.request_timelines`
    delta_rows: list[dict[str, str]] | None = None  # compare: changes between runs, `compare.delta_rows`
    delta_note: str | None = None  # compare: how the changes were judged
    quality: QualityView | None = None  # answer quality (evaluation), `fmbench.report.quality`
    # The run's regression check and its trend plots still to render (`regression.pending_trend_plots`):
    # exported with the report's figures by the same browser, then recorded in regression.json/.md.
    trend: tuple[Any, list[tuple[str, go.Figure]]] | None = None
    # Fields that only the tables and the request timelines need, computed once the browser has its
    # figures (while it draws them): a mapping of field name to value, as `dataclasses.replace` takes.
    later: Callable[[], dict[str, Any]] | None = None


def _env() -> Environment:
    return Environment(
        loader=PackageLoader("fmbench.report", "templates"),
        autoescape=lambda name: bool(name and name.endswith(".html.j2")),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )


def _store_pngs(figs: list[Figure], tmp: Path, plots_url: str) -> list[str]:
    urls = []
    for f in figs:
        url = storage.join(plots_url, f"{f.stem}.png")
        storage.write_bytes(url, Path(tmp, f"{f.stem}.png").read_bytes())
        urls.append(url)
    return urls


def _png_failure(exc: BaseException) -> str:
    return f"PNG export failed ({exc.__class__.__name__}: {str(exc).strip()[:300]})"


def _figure_div(fig: go.Figure | dict[str, Any], div_id: str) -> str:
    # The figure as a plain dict, not a second go.Figure: plotly would validate every point again
    # (seconds for the request timelines of a large run).
    live = fig.to_dict() if isinstance(fig, go.Figure) else {**fig, "layout": dict(fig["layout"])}
    height = live["layout"].get("height") or 600
    live["layout"].pop("width", None)
    live["layout"]["autosize"] = True
    return pio.to_html(
        live, validate=False, full_html=False, include_plotlyjs=False, include_mathjax=False, div_id=div_id,
        default_width="100%", default_height=f"{int(height)}px",
        config={"displaylogo": False, "responsive": True},
    )


def _duration(start: Any, end: Any) -> str:
    try:
        a = _dt.datetime.fromisoformat(str(start))
        b = _dt.datetime.fromisoformat(str(end))
    except ValueError:
        return "–"
    secs = (b - a).total_seconds()
    return f"{secs / 60:.1f} min" if secs >= 60 else f"{secs:.0f} s"


def _run_rows(run: RunData) -> list[tuple[str, str]]:
    m = run.manifest
    return [
        ("Config name", run.name),
        ("Run id", run.run_id),
        ("Started", str(m.started_at or "unknown")),
        ("Ended", str(m.ended_at or "unknown (run unfinished or manifest incomplete)")),
        ("Duration", _duration(m.started_at, m.ended_at)),
        ("fmbench version", str(m.tool_version or "unknown")),
        ("Config hash", str(m.config_hash or (run.cfg.config_hash() if run.cfg else "unknown"))),
        ("Stored at", str(m.storage or run.url)),
        *_client_rows(m),
    ]


def _client_rows(m: Manifest) -> list[tuple[str, str]]:
    """The client calibration and the shards that ran near its ceiling (see fmbench.calibration)."""
    from fmbench.calibration import CEILING_WARN

    cal = m.calibration
    if not isinstance(cal, dict):
        # a run without calibration (older runs, or it failed)
        return _stamp_rows(m) + _simulator_rows(m) + _machine_rows(m)
    rows = [("Client calibration", str(cal.get("summary") or "measured (no summary)"))]
    hot = []
    for sh in m.shards:
        load = sh.get("client_load") if isinstance(sh, dict) else None
        if isinstance(load, (int, float)) and load > CEILING_WARN:
            procs = sh.get("processes") or 1
            hot.append(f"{sh.get('shard_id')} ({load:.0%} of the ceiling, {procs} process(es))")
    if hot:
        rows.append((f"⚠ Shards above {CEILING_WARN:.0%} of the client ceiling",
                     "results may reflect the client: " + "; ".join(hot)))
    return rows + _stamp_rows(m) + _simulator_rows(m) + _machine_rows(m)


def _stamp_rows(m: Manifest) -> list[tuple[str, str]]:
    """How the client stamped the arrival of answers, per shard (`fmbench.rxstamp`); a warning where
    it was the event loop's time on any connection."""
    from fmbench.rxstamp import EVENT_LOOP, KERNEL, SDK_THREAD

    kernel, sdk, loop_timed = 0, [], []  # sdk: the AWS shards' experiments
    for sh in m.shards:
        counts = sh.get("receive_stamps") if isinstance(sh, dict) else None
        if not isinstance(counts, dict):
            continue  # an older run, or a client that does not say
        if counts.get(SDK_THREAD):
            sdk.append(str(sh.get("experiment") or sh.get("shard_id")))
            continue
        late = counts.get(EVENT_LOOP) or 0
        if late:
            total = late + (counts.get(KERNEL) or 0)
            loop_timed.append(f"{sh.get('shard_id')} ({late} of {total} connections)")
        elif counts.get(KERNEL):
            kernel += 1
    rows = []
    if loop_timed:
        rows.append(("⚠ Shards whose answer times are the client's event loop's",
                     "the kernel gave no receive stamp on these connections (not Linux, or a transport without a "
                     "plain socket inside): an answer's bytes that arrived while the client was busy are timed when "
                     "its loop got to them, so TTFT and latency include that wait: " + "; ".join(loop_timed)))
    elif kernel:
        rows.append(("Answer arrival times", f"the kernel's receive stamps, on every connection of {kernel} shard(s)"))
    if sdk:
        rows.append(("Answer arrival times (AWS SDK)",
                     "when botocore handed each part of an answer to the request's own thread, not the kernel's "
                     "receive stamp: a part that arrived while that thread waited for the CPU (other requests' "
                     f"threads, the interpreter lock) is timed when it ran: {len(sdk)} shard(s) of "
                     + ", ".join(dict.fromkeys(sdk))))
    return rows


def _simulator_rows(m: Manifest) -> list[tuple[str, str]]:
    """Shards whose simulated endpoint was late or saturated, by its own stamps (fmbench.pipeline.SimulatorWatch)."""
    late = []
    for sh in m.shards:
        sim = sh.get("simulator") if isinstance(sh, dict) else None
        if isinstance(sim, dict) and sim.get("verdict"):
            cpu = sim.get("cpu_util")
            late.append(f"{sh.get('shard_id')} (chunk lateness p99 {sim.get('lateness_p99_ms') or 0:.1f} ms, "
                        f"max {sim.get('lateness_max_ms') or 0:.1f} ms"
                        + (f", simulator CPU {cpu:.0%}" if isinstance(cpu, (int, float)) else "") + ")")
    if not late:
        return []
    return [("⚠ Shards where the simulator was late or saturated",
             "results may reflect the simulator, not the modelled server: " + "; ".join(late))]


def _machine_rows(m: Manifest) -> list[tuple[str, str]]:
    """Shards during which this machine itself often ran slow (fmbench.machine)."""
    from fmbench.machine import SLOW_SHARE_WARN

    slow = []
    for sh in m.shards:
        share = (sh.get("machine") or {}).get("slow_share") if isinstance(sh, dict) else None
        if isinstance(share, (int, float)) and share >= SLOW_SHARE_WARN:
            slow.append(f"{sh.get('shard_id')} ({share:.0%} of its 10-ms windows)")
    if not slow:
        return []
    return [("⚠ Shards during which this machine ran slow",
             "a fixed piece of Python ran at least 4x slower than usual on the machine that sent the load (on a "
             "shared VM, the host's doing); latency tails measured then are partly the machine's: " + "; ".join(slow))]


def _repro(run: RunData) -> dict[str, Any]:
    m = run.manifest.model_dump(mode="json", exclude_none=True)
    shards = m.pop("shards", None)
    raw_packages = m.get("packages")
    packages: dict[str, Any] = raw_packages if isinstance(raw_packages, dict) else {}
    return {
        "label": f"{run.name} / {run.run_id}",
        "command": str(m.get("command") or "unknown (not recorded in the manifest)"),
        "config_yaml": (run.config_text or "(config.yml missing)").rstrip(),
        "manifest_json": json.dumps(m, indent=2, sort_keys=False, default=str),
        "packages": [{"name": k, "version": str(v)} for k, v in sorted(packages.items())],
        "python": str(m.get("python") or "unknown"),
        "tokenizer": _tokenizers_line(run),
        "seeds": yaml.safe_dump(m.get("seeds"), sort_keys=True).strip() if m.get("seeds") else "unknown",
        "host": json.dumps(m.get("host"), default=str) if m.get("host") else "unknown",
        "shards": len(shards) if isinstance(shards, list) else 0,
        "problems": run.problems,
    }


def _tokenizers_line(run: RunData) -> str:
    default = run.manifest.tokenizer or (run.cfg.tokenizer if run.cfg else "unknown")
    own = {e: t for e, t in run.manifest.tokenizers.items() if t != default}
    if not own:
        return default
    return f"{default} (default); " + ", ".join(f"{e}: {t}" for e, t in own.items())


def _slo_rows(slo: Any) -> list[dict[str, str]]:
    if slo is None:
        return [{"Objective": "none configured", "Limit": "no failed requests allowed"}]
    rows = []
    for attr, label in (("latency_p95_s", "p95 end-to-end latency"), ("ttft_p95_s", "p95 time to first token"),
                        ("tpot_p95_s", "p95 time per output token")):
        v = getattr(slo, attr, None)
        if v is not None:
            rows.append({"Objective": label, "Limit": f"≤ {v:g} s"})
    rows.append({"Objective": "error rate", "Limit": f"≤ {float(getattr(slo, 'max_error_rate', 0.0)):.1%}"})
    rows += [{"Objective": f"each request's {r['Per-request objective']} (goodput, ranks the recommendation)",
              "Limit": r["Limit"]} for r in _goodput_slo_rows(slo)]
    if getattr(slo, "min_accuracy", None) is not None:
        rows.append({"Objective": "answer accuracy (see Answer quality)", "Limit": f"≥ {slo.min_accuracy:.0%}"})
    return rows


def _bucket_sections(metrics: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    keys = metrics.select("dataset", "bucket", "bucket_min", "bucket_max").unique().sort(
        ["dataset", "bucket_min", "bucket"], nulls_last=True)
    for k in keys.iter_rows(named=True):
        part = metrics.filter((pl.col("dataset") == k["dataset"]) & (pl.col("bucket") == k["bucket"])).sort(
            ["experiment", "concurrency", "request_rate"], nulls_last=True)
        failed = [f"{r['experiment']} {fmt_load(r)}: {r.get('shard_error') or 'failed (no error recorded)'}"
                  for r in part.iter_rows(named=True) if r.get("status") == "failed"]
        invalid = [f"{r['experiment']} {fmt_load(r)}: {reason}"
                   for r in part.iter_rows(named=True) if (reason := invalid_reason(r)) is not None]
        overloaded = [f"{r['experiment']} {fmt_load(r)}: {reason}"
                      for r in part.iter_rows(named=True) if (reason := overload_reason(r)) is not None]
        lo, hi = k["bucket_min"], k["bucket_max"]
        size = f"{lo:,}–{hi:,} prompt tokens" if lo is not None and hi is not None else f"bucket {k['bucket']}"
        out.append({
            "title": f"{k['dataset']}: {size}",
            "anchor": f"bucket-{k['dataset']}-{k['bucket']}".replace(".", "-"),
            "headers": TABLE_HEADERS,
            "rows": metrics_table_rows(part, with_bucket=False),
            "failed": failed,
            "invalid": invalid,
            "overloaded": overloaded,
        })
    return out


def _error_rows(errors: pl.DataFrame | None) -> list[dict[str, str]]:
    if errors is None:
        return []
    retries = "retried" in errors.columns and bool(errors["retried"].sum())
    rows = []
    for r in errors.iter_rows(named=True):
        row = {"Experiment": r["experiment"], "Dataset": r["dataset"], "Bucket": r["bucket"], "Load": fmt_load(r),
               "Error kind": r["error_kind"], "Failed requests": fmt_int(r["count"])}
        if retries:  # attempts that failed and were sent again (throttling absorbed by retries shows here)
            row["Retried attempts"] = fmt_int(r["retried"])
        row["Example"] = (r.get("example") or "")[:160]
        rows.append(row)
    return rows


def _resend_rows(metrics: pl.DataFrame) -> list[dict[str, str]]:
    if "resends" not in metrics.columns:
        return []
    return [{"Experiment": r["experiment"], "Dataset": r["dataset"], "Bucket": r["bucket"], "Load": fmt_load(r),
             "Requests": fmt_int(r["requests"]), "Resent on a new connection": fmt_int(r["resends"])}
            for r in metrics.filter(pl.col("resends").fill_null(0) > 0).iter_rows(named=True)]


#: A shard whose server served at least this share of its prompt tokens from its prompt cache is warned of.
CACHED_PROMPT_WARN_SHARE = 0.5


def _cache_rows(metrics: pl.DataFrame) -> list[dict[str, str]]:
    """The shards whose server said it served prompt tokens from its prompt cache."""
    if "cached_prompt_tokens" not in metrics.columns:
        return []
    return [{"Experiment": r["experiment"], "Dataset": r["dataset"], "Bucket": r["bucket"], "Load": fmt_load(r),
             "Prompt tokens": fmt_int(r["input_tokens"]), "From the cache": fmt_int(r["cached_prompt_tokens"]),
             "Share": fmt_pct(r["cached_prompt_share"]), "TTFT p50 (s)": fmt_seconds(r["ttft_p50_s"])}
            for r in metrics.filter(pl.col("cached_prompt_tokens").fill_null(0) > 0).iter_rows(named=True)]


def _cache_warning(metrics: pl.DataFrame) -> str | None:
    """One line when a shard's TTFT is mostly that of cached prompts, else None."""
    if "cached_prompt_share" not in metrics.columns:
        return None
    hit = metrics.filter(pl.col("cached_prompt_share").fill_null(0) >= CACHED_PROMPT_WARN_SHARE)
    if hit.is_empty():
        return None
    top = max(float(v) for v in hit["cached_prompt_share"].to_list())
    return (f"{hit.height} shard{'s' if hit.height != 1 else ''} had at least {CACHED_PROMPT_WARN_SHARE:.0%} of "
            f"their prompt tokens served from the server's prompt cache (up to {top:.0%}): no prefill ran for "
            "those tokens, so their TTFT and throughput are those of prompts the server had seen, not of new "
            "ones. Every concurrency level sends the same prompts, and a bucket with fewer prompts than "
            "requests sends some again. To measure prefill, turn the cache off (llama.cpp: `extra_body: "
            "{cache_prompt: false}`; vLLM: `--no-enable-prefix-caching`; SGLang: `--disable-radix-cache`) "
            "or give each bucket more prompts. See \"Prompt cache\".")


def _count_warning(metrics: pl.DataFrame, column: str, text: str) -> str | None:
    """``text`` with ``{shards}`` (``N shard(s) (their ids)``) and ``{counts}`` (``(K of their M answers``)
    filled in for the shards whose count ``column`` of answers (`fmbench.metrics`, per shard) is above
    zero; None when there is none (or the run predates the column)."""
    if column not in metrics.columns:
        return None
    hit = metrics.filter(pl.col(column).fill_null(0) > 0)
    if hit.is_empty():
        return None
    counted, answered = int(hit[column].sum()), int(hit["successes"].fill_null(0).sum())
    names = ", ".join(str(v) for v in hit["shard_id"].head(3).to_list()) + (" ..." if hit.height > 3 else "")
    return text.format(shards=f"{hit.height} shard{'s' if hit.height != 1 else ''} ({names})",
                       counts=f"({counted} of their {answered} answers")


#: What the report says of shards with answers that arrived whole to streamed requests (`_count_warning`).
_UNSTREAMED = (
    "{shards} asked to stream and got answers that arrived whole {counts}; Content-Type application/json): "
    "the server, or a proxy before it, does not stream, so each of those answers' first token arrived with its "
    "last. Their TTFT is the whole answer's time, and they have no TPOT or inter-token times. Stream through to "
    "the server, or measure it as what it is with inference.stream: false.")

#: What the report says of shards with answers the server cut short before max_tokens (`_count_warning`).
_CUT = (
    "{shards} had answers the server cut short before max_tokens {counts}; finish_reason length): the prompt "
    "and max_tokens exceed the server's context, so those requests generated fewer tokens than asked for and "
    "their transactions per minute and latency are of shorter answers. Compare \"Output tokens/req\" across "
    "shards, raise the server's context (llama.cpp: `--ctx-size` per slot) or lower max_tokens or the "
    "bucket's prompt lengths.")


def _unstreamed_warning(metrics: pl.DataFrame) -> str | None:
    """One line when a shard asked to stream got answers that arrived whole, else None."""
    return _count_warning(metrics, "unstreamed_answers", _UNSTREAMED)


def _cut_warning(metrics: pl.DataFrame) -> str | None:
    """One line when a shard had answers the server cut short before max_tokens, else None."""
    return _count_warning(metrics, "cut_answers", _CUT)


def _cost_rows(cost: pl.DataFrame | None) -> tuple[list[dict[str, str]], str | None]:
    if cost is None or cost.is_empty():
        return [], None
    rows = []
    for r in cost.iter_rows(named=True):
        row = {"Experiment": r["experiment"], "Requests sent": fmt_int(r["requests"])}
        for phase in ("deploying", "measuring", "idle"):  # instance-hours and their cost
            hours = r.get(f"{phase}_hours")
            row[phase.capitalize()] = "–" if hours is None else f"{fmt_hours(hours)} h ({fmt_usd(r[f'{phase}_cost_usd'])})"
        row["Billed instance-hours"] = "–" if r.get("instance_hours") is None else fmt_hours(r["instance_hours"])
        row.update({"Cost": fmt_usd(r["cost_usd"]), "Basis": r["basis"]})
        rows.append(row)
    known = cost["cost_usd"].drop_nulls()
    total = None if known.is_empty() else fmt_usd(float(known.sum()))
    if total and known.len() < cost.height:
        total += " (experiments without pricing not included)"
    return rows, total


def _with_judge_costs(cost: pl.DataFrame | None, quality: QualityView | None) -> pl.DataFrame | None:
    # Judging is part of what the benchmark cost: one row per judge, in the same table and total. A judge
    # endpoint the run deployed already has its create-to-delete row; it gets its call count, not a second bill.
    if quality is None or not quality.judge_cost_rows:
        return cost
    judges = pl.DataFrame(quality.judge_cost_rows, schema_overrides={"cost_usd": pl.Float64, "requests": pl.Int64})
    if cost is None or cost.is_empty():
        return judges
    calls = dict(zip(judges["experiment"].to_list(), judges["requests"].to_list(), strict=True))
    billed = set(cost["experiment"].to_list()) & set(calls)
    cost = cost.with_columns(pl.col("experiment").replace_strict(calls, default=None, return_dtype=pl.Int64)
                             .fill_null(pl.col("requests")).alias("requests"))
    return pl.concat([cost, judges.filter(~pl.col("experiment").is_in(billed))], how="diagonal_relaxed")


def pricing_rows(runs: list[RunData]) -> list[dict[str, str]]:
    """Each experiment's tokenizer and how it was priced, with the source of the price."""
    rows = []
    for run in runs:
        if run.cfg is None:
            continue
        cfg = run.cfg
        # What the run recorded it used; runs made before per-experiment tokenizers: the config's.
        tokenizers = {e.name: run.manifest.tokenizers.get(e.name) or cfg.tokenizer_for(e) for e in cfg.experiments}
        for name, p in experiment_pricing(cfg).items():
            if p.model == "instance":
                count = f"{p.instance_count} x " if p.instance_count > 1 else ""
                price = f"{count}{p.instance_type or 'instance'} at {fmt_usd(p.hourly_usd_per_instance)}/h"
            elif p.model == "token":
                price = (f"${p.input_per_1k_usd:g} per 1k input + ${p.output_per_1k_usd:g} per 1k output tokens")
            else:
                price = "not priced"
            rows.append({"Experiment": name, "Tokenizer": tokenizers.get(name, cfg.tokenizer), "Price": price,
                         "Source": p.source})
    return rows


def _recommendation_items(recs: list[Recommendation]) -> list[dict[str, str]]:
    items = []
    for r in recs:
        lo, hi = r.bucket_min, r.bucket_max
        size = f"{lo:,}–{hi:,} prompt tokens" if lo is not None and hi is not None else f"bucket {r.bucket}"
        items.append({"heading": f"{r.dataset}: {size}", "status": r.status, "reasoning": r.reasoning})
    return items


def render(inp: ReportInput, output: str, exporter: PngExporter | None = None, png: bool = True) -> ReportPaths:
    """Write report.md, report.html and plots/ for ``inp`` under ``output`` (local path or s3://).

    Most PNGs are drawn here with Pillow; the figures that are not (and the regression check's trend
    plots) go to a browser: ``exporter``, a `PngExporter` started earlier (its browser starts while
    the caller loads the data), else one started here when such a figure exists. Either way it is
    closed before this returns. ``png=False`` writes no PNGs (and starts no browser); the report says
    they were not asked for.
    """
    with contextlib.ExitStack() as stack:
        if exporter is not None:
            stack.enter_context(exporter)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fmbench-plots-")))

        def browser() -> PngExporter:
            return exporter if exporter is not None else stack.enter_context(PngExporter())

        # The Pillow PNGs are drawn in a child (the other core) while this process builds the report.
        worker = stack.enter_context(PngWorker()) if png else None
        return _render(inp, output, browser if png else None, worker, tmp)


def _render(inp: ReportInput, output: str, browser: Callable[[], PngExporter] | None, worker: PngWorker | None,
            tmp: Path) -> ReportPaths:
    recs = recommend(inp.metrics, inp.slo)
    colours = colour_map(inp.metrics["experiment"].to_list())
    # Figures only a browser draws are built first, so that it has them at once; then the request
    # timelines, the longest PNGs to draw, go to the worker before the other figures are built.
    extra: list[Figure] = []
    extra_notes: list[str] = []
    if inp.quality is not None:
        qfig = quality_figure(inp.metrics, inp.quality, colours)
        if qfig is not None:
            extra.append(qfig)
        else:
            extra_notes.append("answer quality vs cost: no evaluated experiment has both an accuracy and a cost")
    timeline_fig = endpoint_timeline_figure(inp.timelines or {}, inp.run_end, colours)
    if timeline_fig is not None:
        extra.append(timeline_fig)
    png_error: str | None = None if browser is not None else "PNG export skipped (--no-png)"
    trend = inp.trend[1] if inp.trend is not None and browser is not None else []
    trend_local = [tmp / "trend" / Path(rel).name for rel, _ in trend]
    exporter: PngExporter | None = None
    if browser is not None:  # the child renders its PNGs while the HTML's figures are built
        try:
            (tmp / "trend").mkdir()
            drawn_by_browser = [f for f in extra if f.png is None]
            if drawn_by_browser or trend:
                exporter = browser()
                exporter.submit([f.figure for f in drawn_by_browser] + [fig for _, fig in trend],
                                [tmp / f"{f.stem}.png" for f in drawn_by_browser] + trend_local,
                                [f.size() for f in drawn_by_browser]
                                + [(int(fig.layout.width or 900), int(fig.layout.height or 450)) for _, fig in trend])
        except (RuntimeError, OSError) as exc:
            png_error = _png_failure(exc)
    if inp.later is not None:
        inp = dataclasses.replace(inp, later=None, **inp.later())
    timelines = timeline_figures(inp.request_spans)
    png_error = png_error or _draw(worker, timelines, tmp)
    figs, fig_notes = build_figures(inp.metrics, inp.sample, inp.slo, colours)
    figs, fig_notes = _request_figures(inp, figs, fig_notes)
    png_error = png_error or _draw(worker, figs + extra, tmp)
    figs += timelines + extra
    fig_notes += extra_notes
    if not timelines:
        fig_notes.append("request timelines: no per-request records (requests.parquet) to draw")
    html_parts: dict[str, Any] = {"plotlyjs": _plotlyjs(), "figure_divs": [_figure_div(f.figure, f"fig-{f.stem}") for f in figs]}

    def finish_pngs() -> tuple[list[str], list[str], str | None]:
        """Wait for the PNGs and store them: (report plots, trend plots, why they are missing)."""
        if not (figs or trend) or png_error is not None or browser is None:
            return [], [], png_error
        try:
            if worker is not None:
                worker.wait(export_timeout_s())
            if exporter is not None:
                exporter.wait()
            return (_store_pngs(figs, tmp, storage.join(output, "plots")),
                    store_trend_pngs(output, [(rel, p) for (rel, _), p in zip(trend, trend_local, strict=True)]), None)
        except (TimeoutError, RuntimeError, OSError) as exc:
            return [], [], _png_failure(exc)

    changes_md = inp.changes_md
    if trend and inp.trend is not None:  # the trend plots, or why they are missing, into regression.json/.md
        plots, trend_plots, reason = finish_pngs()
        changes_md = record_trend_plots(output, inp.trend[0], trend_plots, reason)
    html_parts["changes_html"] = _changes_html(changes_md, output)
    ctx = _context(inp, recs, colours, figs, fig_notes, changes_md)
    if trend:
        markdown, html = _documents(ctx, html_parts, figs, plots, reason)
    else:
        # Written as if every PNG arrives, while the child still draws them; again if one does not.
        markdown, html = _documents(ctx, html_parts, figs, figs if png_error is None else [], png_error)
        plots, _, reason = finish_pngs()
        if reason != png_error:
            markdown, html = _documents(ctx, html_parts, figs, plots, reason)
    md_url = storage.join(output, "report.md")
    html_url = storage.join(output, "report.html")
    storage.write_text(md_url, markdown)
    storage.write_text(html_url, html)
    return ReportPaths(markdown=md_url, html=html_url, metrics_csv=storage.join(output, "metrics.csv"),
                       metrics_parquet=storage.join(output, "metrics.parquet"), plots=plots,
                       plots_missing_reason=reason)


def _draw(worker: PngWorker | None, figs: list[Figure], tmp: Path) -> str | None:
    """Send the figures Pillow draws to ``worker``; why the PNGs will be missing, or None."""
    if worker is None:
        return None
    try:
        worker.submit([(f.png, tmp / f"{f.stem}.png") for f in figs if f.png is not None])
    except (RuntimeError, OSError, TypeError, AttributeError, pickle.PicklingError) as exc:
        return _png_failure(exc)
    return None


def _documents(ctx: dict[str, Any], html_parts: dict[str, Any], figs: list[Figure], plots: list[Any],
               reason: str | None) -> tuple[str, str]:
    """report.md and report.html, with the PNGs when ``plots`` is not empty, else ``reason`` they are missing."""
    ctx = dict(ctx, plots_missing_reason=reason,
               figures=[{"stem": f.stem, "title": f.title, "caption": f.caption + (f.png_note if plots else ""),
                         "png": f"plots/{f.stem}.png" if plots else None} for f in figs])
    env = _env()
    return (env.get_template("report.md.j2").render(**ctx),
            env.get_template("report.html.j2").render(**dict(ctx, **html_parts)))


def _context(inp: ReportInput, recs: list[Recommendation], colours: dict[str, str], figs: list[Figure],
             fig_notes: list[str], changes_md: str | None) -> dict[str, Any]:
    cost_rows, cost_total = _cost_rows(_with_judge_costs(inp.bench_cost, inp.quality))
    return {
        "title": inp.title,
        "description": inp.description,
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "compare": inp.compare,
        # What is wrong with the report's inputs, then what the run itself warned of (an endpoint left
        # running, buckets a dataset skipped): under the run's table.
        "runs": [{"label": f"{r.name} / {r.run_id}", "rows": _run_rows(r), "problems": [*r.problems, *r.manifest.warnings]}
                 for r in inp.runs],
        "recommendations": _recommendation_items(recs),
        "slo_rows": _slo_rows(inp.slo),
        "pricing_rows": inp.pricing,
        "cost_rows": cost_rows,
        "cost_title": "What these runs cost (whole runs, all buckets)" if inp.compare else "What this benchmark cost",
        "cost_total": cost_total,
        "timeline_rows": timeline_rows(inp.timelines or {}, inp.run_end),
        "buckets": _bucket_sections(inp.metrics),
        "figure_notes": fig_notes,
        "error_rows": _error_rows(inp.errors),
        "resend_rows": _resend_rows(inp.metrics),
        "cache_rows": _cache_rows(inp.metrics),
        "cache_warning": _cache_warning(inp.metrics),
        "cut_warning": _cut_warning(inp.metrics),
        "unstreamed_warning": _unstreamed_warning(inp.metrics),
        "repro": [_repro(r) for r in inp.runs],
        "md_table": md_table,
        "colours": colours,
        "changes_md": changes_md,
        "endpoint_rows": inp.endpoint_rows,
        "quality": inp.quality,
        **_detail_context(inp),
    }


def _request_figures(inp: ReportInput, figs: list[Figure], notes: list[str]) -> tuple[list[Figure], list[str]]:
    """The ITL distribution, drawn from per-request data (the request timelines are added later)."""
    itl = itl_figure(inp.itl_dist)
    if itl is None:
        why = ("no per-request records (requests.parquet) to draw" if inp.sample is None
               else "no request succeeded, so no answer was streamed" if not _any_success(inp.metrics)
               else "no streamed request had two or more chunks")
        return figs, [*notes, f"inter-token latency distribution: {why}"]
    return [*figs, itl], notes


def _any_success(metrics: pl.DataFrame) -> bool:
    return "successes" not in metrics.columns or bool(metrics["successes"].fill_null(0).sum())


def _detail_context(inp: ReportInput) -> dict[str, Any]:
    goodput = bool(getattr(inp.slo, "per_request", False))
    return {
        "itl_rows": itl_goodput_rows(inp.metrics, goodput),
        "goodput": goodput,
        "goodput_rows": _goodput_slo_rows(inp.slo),
        "token_cost_rows": token_cost_rows(inp.metrics, goodput),
        "delta_rows": inp.delta_rows,
        "delta_note": inp.delta_note or "",
    }


def _goodput_slo_rows(slo: Any) -> list[dict[str, str]]:
    rows = []
    for attr, label in (("ttft_s", "time to first token"), ("tpot_s", "time per output token"),
                        ("latency_s", "end-to-end latency")):
        v = getattr(slo, attr, None)
        if v is not None:
            rows.append({"Per-request objective": label, "Limit": f"≤ {v:g} s"})
    return rows


def _changes_html(changes_md: str | None, output: str) -> str | None:
    # The HTML report stays self-contained: the trend plots' PNGs are inlined as data URIs.
    if not changes_md:
        return None
    from markdown_it import MarkdownIt

    def inline(match: re.Match[str]) -> str:
        url = storage.join(output, match.group(2))
        try:
            data = base64.b64encode(storage.read_bytes(url)).decode()
        except FMBenchError:
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    body = re.sub(r"!\[([^\]]*)\]\((plots/[^)\s]+\.png)\)", inline, changes_md)
    return MarkdownIt("commonmark").enable("table").render(body)


def _plotlyjs() -> str:
    from plotly.offline import get_plotlyjs

    # A literal "</script>" inside the bundle would end the inline script early.
    return get_plotlyjs().replace("</script>", "<\\/script>")


def render_run_report(run_url: str, exporter: PngExporter | None, png: bool | None = None) -> ReportPaths:
    """The report of one run directory (`fmbench.report.render_report`): PNGs when ``png`` (by default
    when ``exporter`` is given), those Pillow does not draw by ``exporter`` (started earlier; closed
    before this returns) or by a browser started when one is needed."""
    png = exporter is not None if png is None else png
    run = load_run(run_url)
    slo = run.cfg.slo if run.cfg else None

    def later() -> dict[str, Any]:
        if run.requests is None:
            return {}
        return {"errors": error_counts(run.requests), "request_spans": request_timelines(run.requests),
                "bench_cost": benchmark_cost(sent_requests(run, run.requests), run.cfg, run.shards, run.endpoints, run.ended_at)}

    quality = quality_view(run.url, run.cfg) if run.cfg is not None else None
    metrics = with_accuracy(run.metrics, quality) if quality is not None else run.metrics
    if quality is not None and slo is not None:
        slo = slo.model_copy(update={"min_accuracy": quality.min_accuracy})
    # Before regression.md is read: when the trend plots cannot even be drawn, it is rewritten to say so.
    trend = pending_trend_plots(run.url) if png else None
    inp = ReportInput(
        title=f"fmbench report: {run.name}",
        description=run.cfg.description if run.cfg else None,
        quality=quality,
        runs=[run], metrics=metrics, slo=slo, sample=request_sample(run.requests), errors=None,
        bench_cost=None, pricing=pricing_rows([run]), changes_md=_read_optional(storage.join(run.url, "regression.md")),
        endpoint_rows=_endpoint_rows(run.url, run.metrics), timelines=run.endpoints, run_end=run.ended_at,
        itl_dist=itl_distribution(run.requests), trend=trend, later=later,
    )
    return render(inp, run.url, exporter, png=png)


#: CloudWatch metric -> (column, statistic, scale, format) for the endpoint metrics table.
_CW_COLUMNS = {
    "Invocations": ("Invocations", "sum", 1.0, "{:,.0f}"),
    "ModelLatency": ("Model latency avg (ms)", "average", 1e-3, "{:,.1f}"),
    "OverheadLatency": ("Overhead avg (ms)", "average", 1e-3, "{:,.1f}"),
    "Invocation4XXErrors": ("4XX", "sum", 1.0, "{:,.0f}"),
    "Invocation5XXErrors": ("5XX", "sum", 1.0, "{:,.0f}"),
    "CPUUtilization": ("CPU avg %", "average", 1.0, "{:,.0f}"),
    "MemoryUtilization": ("Memory avg %", "average", 1.0, "{:,.0f}"),
    "GPUUtilization": ("GPU avg %", "average", 1.0, "{:,.0f}"),
    "GPUMemoryUtilization": ("GPU memory avg %", "average", 1.0, "{:,.0f}"),
}


def _endpoint_rows(run_url: str, metrics: pl.DataFrame) -> list[dict[str, str]] | None:
    # Server-side numbers next to the client's: one row per shard; a metric CloudWatch did not
    # publish is shown as absent, never as zero.
    url = storage.join(run_url, "cloudwatch.parquet")
    if not storage.exists(url):
        return None
    cw = storage.read_parquet(url)
    client = {r["shard_id"]: r for r in metrics.iter_rows(named=True)} if "shard_id" in metrics.columns else {}
    rows = []
    for (shard_id,), part in cw.group_by(["shard_id"], maintain_order=True):
        first = part.row(0, named=True)
        m = client.get(shard_id, {})
        row = {"Experiment": str(first["experiment"]), "Bucket": str(first.get("bucket")),
               "Load": f"c={first.get('concurrency')}",
               "Client p50 latency (ms)": "" if m.get("latency_p50_s") is None else f"{m['latency_p50_s'] * 1e3:,.0f}",
               "Client requests": "" if m.get("requests") is None else f"{m['requests']:,}"}
        values = {r["metric"]: r for r in part.iter_rows(named=True)}
        for metric, (column, stat, scale, fmt) in _CW_COLUMNS.items():
            value = values.get(metric, {}).get(stat)
            row[column] = "absent" if value is None else fmt.format(value * scale)
        rows.append(row)
    return rows


def _read_optional(url: str) -> str | None:
    return storage.read_text(url) if storage.exists(url) else None
