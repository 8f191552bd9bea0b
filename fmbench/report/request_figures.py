"""Figures drawn from per-request data rather than per-shard metrics: the ITL distribution per
experiment and each shard's request timeline (queued, waiting for the first token, streaming)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from fmbench.report import chart_png as chart
from fmbench.report.figures import _FONT, _PILLOW, Figure, new_figure, report_template
from fmbench.report.run import TIMELINE_SIZE
from fmbench.report.timeline_png import Panel, draw_timeline

#: Segment colours of the timeline: what each span of a request was doing.
_STATES = {
    "queued": ("#BBBBBB", "queued in the client (due → sent)"),
    "waiting": ("#E69F00", "waiting for the first token"),
    "streaming": ("#0072B2", "streaming (first → last token)"),
    "failed": ("#D55E00", "failed (sent → error)"),
}

#: Line shades of successive loads in one ITL panel (light = low load, dark = high load).
_SHADES = ["#9ECAE1", "#6BAED6", "#4292C6", "#2171B5", "#08519C", "#08306B", "#041E42"]


def _load_label(concurrency: Any, rate: Any) -> str:
    if rate is not None and not (isinstance(rate, float) and math.isnan(rate)):
        return f"{rate:g} req/s"
    return f"c={concurrency}"


def itl_figure(dist: pl.DataFrame | None) -> Figure | None:
    """The ITL distribution (a CDF) per experiment, one line per load; None without streamed gaps."""
    if dist is None or dist.is_empty():
        return None
    experiments = sorted(set(dist["experiment"].to_list()))
    cols = 1 if len(experiments) == 1 else 2
    rows = math.ceil(len(experiments) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=experiments, horizontal_spacing=0.08,
                        vertical_spacing=min(0.18, 0.5 / rows), figure=new_figure())
    drawn: list[chart.Panel] = []
    for i, exp in enumerate(experiments):
        r, c = i // cols + 1, i % cols + 1
        part = dist.filter(pl.col("experiment") == exp)
        # The PNG names each panel's loads in the panel (plotly's legend lists every experiment's loads).
        panel = chart.Panel(exp, chart.Axis("inter-token latency (ms)", from_zero=True),
                            chart.Axis("share of gaps ≤ x", percent=True, fixed=(0.0, 1.02)), legend=[])
        drawn.append(panel)
        loads = part.select("concurrency", "request_rate", "gaps").unique().sort(
            ["request_rate", "concurrency"], nulls_last=False)
        for k, load in enumerate(loads.iter_rows(named=True)):
            line = part.filter((pl.col("concurrency") == load["concurrency"])
                               & (pl.col("request_rate").eq_missing(load["request_rate"]))).sort("q")
            label = _load_label(load["concurrency"], load["request_rate"])
            shade = _SHADES[min(k, len(_SHADES) - 1)]
            xs, ys = [v * 1000 for v in line["itl_s"].to_list()], [q / 100 for q in line["q"].to_list()]
            panel.marks.append(chart.Line(shade, xs, list(ys)))
            assert panel.legend is not None
            panel.legend.append((label, shade))
            fig.add_trace(go.Scatter(
                x=xs, y=ys,
                mode="lines", name=f"{exp} {label}", legendgroup=exp,
                line={"color": shade, "width": 2},
                hovertemplate=f"{exp} {label}<br>%{{y:.0%}} of gaps ≤ %{{x:.1f}} ms"
                              f"<br>{load['gaps']:,} gaps<extra></extra>",
            ), row=r, col=c)
        fig.update_xaxes(title_text="inter-token latency (ms)", rangemode="tozero", row=r, col=c)
        fig.update_yaxes(title_text="share of gaps ≤ x", tickformat=".0%", range=[0, 1.02], row=r, col=c)
    title = "Inter-token latency distribution (CDF) per experiment and load"
    fig.update_layout(title={"text": title, "x": 0.01}, font=_FONT,
                      height=140 + 360 * rows, width=1100, legend={"title_text": "experiment, load "},
                      margin={"l": 70, "r": 30, "t": 100, "b": 60})
    caption = ("Each line pools every gap between consecutive streamed chunks of the successful measured "
               "requests at one load (all datasets and buckets); darker lines are higher loads. A chunk that "
               "carries several tokens is one gap (see tokens per chunk in the ITL table). Drawn exactly at "
               "every percentile, not sampled.")
    png = chart.Chart(title, drawn, (1100, 140 + 360 * rows), margins=(70, 100, 30, 60))
    return Figure("itl_distribution", title, caption, fig, png=partial(chart.draw_chart, png), png_note=_PILLOW)


def _segments(rows: list[dict[str, Any]], t0: float) -> dict[str, tuple[list[float | None], list[float | None]]]:
    out: dict[str, tuple[list[float | None], list[float | None]]] = {s: ([], []) for s in _STATES}

    def add(state: str, a: Any, b: Any, y: int) -> None:
        if a is None or b is None or b < a:
            return
        xs, ys = out[state]
        xs += [a - t0, b - t0, None]
        ys += [y, y, None]

    # One row per request: a retried request's attempts share it, each queued from the end of the
    # attempt before it (its backoff), not again from the request's due time.
    y, last_id, last_end = -1, object(), None
    for r in rows:
        if r["request_id"] != last_id:
            y, last_id, due = y + 1, r["request_id"], r["t_scheduled"]
        else:
            due = last_end if last_end is not None else r["t_scheduled"]
        last_end = r["t_end"]
        sent = r["t_start"]
        add("queued", due, sent, y)
        if not r["ok"]:
            add("failed", sent if sent is not None else r["t_scheduled"], r["t_end"], y)
            continue
        first = r["t_first_token"] if r["t_first_token"] is not None else r["t_end"]
        add("waiting", sent, first, y)
        add("streaming", first, r["t_end"], y)
    return out


def timeline_figures(timelines: pl.DataFrame | None) -> list[Figure]:
    """One figure per experiment: a panel per shard, one horizontal line per request over wall time.

    The interactive figure (HTML) draws the requests as plotly lines; its PNG is drawn from the same
    spans by `fmbench.report.timeline_png` (Pillow), not by the browser (seconds per 50-panel figure).
    """
    if timelines is None or timelines.is_empty():
        return []
    template = report_template()
    figs = []
    for exp in sorted(set(timelines["experiment"].to_list())):
        part = timelines.filter(pl.col("experiment") == exp)
        shards = part.select("shard_id", "dataset", "bucket", "bucket_min", "concurrency", "request_rate",
                             "shard_requests", "step").unique(subset="shard_id").sort(
            ["dataset", "bucket_min", "request_rate", "concurrency", "shard_id"], nulls_last=True).to_dicts()
        titles = [f"{s['dataset']} {s['bucket']}, {_load_label(s['concurrency'], s['request_rate'])}"
                  + (f" (1 in {s['step']} of {s['shard_requests']:,} drawn)" if s["step"] > 1 else "")
                  for s in shards]
        grid = _Grid(len(shards))
        title = f"Request timeline: {exp}"
        # Plain dicts, not plotly objects: plotly validates every point and re-scans the figure on each
        # add_trace/update (4.5 s for the four 50-panel figures of a 1M-record run).
        layout: dict[str, Any] = {
            "template": template, "title": {"text": title, "x": 0.01}, "font": _FONT,
            "height": 160 + 320 * grid.rows, "width": 1100, "margin": {"l": 70, "r": 30, "t": 120, "b": 60},
            "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0 + 0.06 / grid.rows, "x": 0},
            "annotations": [{"text": t, "showarrow": False, "font": {"size": 16}, "xref": "paper", "yref": "paper",
                             "x": sum(grid.x(i)) / 2, "y": grid.y(i)[1], "xanchor": "center", "yanchor": "bottom"}
                            for i, t in enumerate(titles)],
        }
        traces: list[dict[str, Any]] = []
        shapes: list[dict[str, Any]] = []
        panels: list[Panel] = []
        shown: set[str] = set()
        sampled = False
        retried = "attempt" in part.columns and bool(part.select((pl.col("attempt") > 1).any()).item())
        order = ["request_id", "attempt"] if "attempt" in part.columns else ["request_id"]
        by_shard = part.sort(order).partition_by("shard_id", as_dict=True)
        for i, (s, panel_title) in enumerate(zip(shards, titles, strict=True)):
            ref = "" if i == 0 else str(i + 1)  # panels are numbered row by row: x, x2, x3, ...
            reqs = by_shard[(s["shard_id"],)].to_dicts()
            sampled |= s["step"] > 1
            t0 = min(x["t_scheduled"] for x in reqs)
            drawn = len({x["request_id"] for x in reqs})  # requests, not attempts
            warm = len({x["request_id"] for x in reqs if x["warmup"]})
            segments = _segments(reqs, t0)
            for state, (xs, ys) in segments.items():
                if not xs:
                    continue
                colour, label = _STATES[state]
                traces.append({"type": "scatter", "x": xs, "y": ys, "mode": "lines", "name": label,
                               "legendgroup": state, "showlegend": state not in shown,
                               "line": {"color": colour, "width": 3}, "hoverinfo": "skip",
                               "xaxis": f"x{ref}", "yaxis": f"y{ref}"})
                shown.add(state)
            if warm:
                shapes.append({"type": "rect", "xref": f"x{ref} domain", "x0": 0, "x1": 1, "yref": f"y{ref}",
                               "y0": -0.5, "y1": warm - 0.5, "fillcolor": "#999999", "opacity": 0.12,
                               "line": {"width": 0}})
            layout[f"xaxis{ref}"] = {"domain": grid.x(i), "anchor": f"y{ref}", "rangemode": "tozero",
                                     "title": {"text": "seconds since the shard's first request was due"}}
            layout[f"yaxis{ref}"] = {"domain": grid.y(i), "anchor": f"x{ref}", "autorange": "reversed",
                                     "title": {"text": "request (in order sent)"}}
            span = max((v for xs, _ in segments.values() for v in xs if v is not None), default=0.0)
            panels.append(Panel(panel_title, drawn, warm, span, segments))
        layout["shapes"] = shapes
        sampling = (f" Shards with more than {TIMELINE_SIZE} requests are sampled: 1 request in k by request id "
                    "(k in the panel title), spread over the whole shard." if sampled else " Every request is drawn.")
        caption = ("One line per request over wall time: grey while queued in the client (due but not yet sent), "
                   "orange while waiting for its first token, blue while streaming, red for a failure. The shaded "
                   "rows at the top are warm-up requests. Warm-up, stalls, queueing and bursts of failures show as "
                   "changes in the pattern." + sampling
                   + (" A retried request's attempts share its line: red for each failed attempt, grey for the "
                      "backoff before the next." if retried else ""))
        png_note = (" The PNG is drawn pixel by pixel from the same spans (a span shorter than a pixel is drawn "
                    "one pixel wide); report.html has the exact lines, with zoom.")
        states = {st: _STATES[st] for st in _STATES if st in shown}
        figs.append(Figure(f"timeline_{_stem(exp)}", title, caption, {"data": traces, "layout": layout},
                           png=partial(draw_timeline, title, panels, states, _AXES_NOTE), png_note=png_note))
    return figs


_AXES_NOTE = ("Each panel: seconds since the shard's first request was due (across) against the requests "
              "in the order sent (down); shaded rows are warm-up requests.")


class _Grid:
    """Panel domains of the interactive timeline: 2 columns (1 for a single shard), row by row, as
    plotly's make_subplots places them."""

    def __init__(self, n: int) -> None:
        self.cols = 1 if n == 1 else 2
        self.rows = math.ceil(n / self.cols)
        self.h_gap, self.v_gap = 0.08, min(0.12, 0.5 / self.rows)
        self.w = (1 - self.h_gap * (self.cols - 1)) / self.cols
        self.h = (1 - self.v_gap * (self.rows - 1)) / self.rows

    def x(self, i: int) -> list[float]:
        left = (i % self.cols) * (self.w + self.h_gap)
        return [left, left + self.w]

    def y(self, i: int) -> list[float]:
        top = 1 - (i // self.cols) * (self.h + self.v_gap)
        return [top - self.h, top]


def _stem(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
