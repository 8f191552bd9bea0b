"""The report's plotly figures, built from per-shard metrics and a sample of per-request records.

Each figure has one panel per (dataset, bucket), units on its axes, and one colour per experiment
that is the same in every figure. Figures are returned as (file stem, title, caption, figure).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from fmbench.report.chart_png import Axis, Bars, Chart, Line, Panel, Points, draw_chart, over_white
from fmbench.report.tables import invalid_reason

#: Colour-blind-friendly first, then the usual D3 colours.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
           "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F"]

_FONT = {"family": "Helvetica, Arial, sans-serif", "size": 13}


def new_figure() -> go.Figure:
    """An empty figure to build a report figure in; `Figure` adds the report's template (plotly_white).

    It carries an empty template: plotly copies and validates a template given to a figure (0.03-0.07 s
    per figure on the 2-core VM, about 0.3 s of a report's eight, more with the first figure's
    imports), yet the template plays no part until the figure is drawn; `plain_figure` puts it into
    the plain dict the report keeps.
    """
    return go.Figure(layout={"template": {}})


@functools.cache
def report_template() -> dict[str, Any]:
    """The report's plotly template (plotly_white) as a plain dict, shared by every figure."""
    import plotly.io as pio

    return pio.templates["plotly_white"].to_plotly_json()


def plain_figure(fig: go.Figure) -> dict[str, Any]:
    """``fig`` as a plain plotly dict; a figure without a template layout (`new_figure`) gets the report's."""
    out = fig.to_dict()
    template = out["layout"].get("template") or {}
    if not template.get("layout"):
        out["layout"]["template"] = report_template()
    return out


@dataclass(frozen=True, slots=True)
class Figure:
    """A report figure: file stem (plots/STEM.png), title, one-line caption and the plotly figure.

    ``figure`` is kept as a plain plotly dict (``data``/``layout``): a plotly figure given is converted
    (`plain_figure`), and figures where building plotly objects would cost seconds are built as dicts.
    ``png``, when given, writes the figure's PNG to a path itself (no browser); ``png_note`` ends the
    caption of a report that has the PNG (how it was drawn), and is left out of one that has none.
    """

    stem: str
    title: str
    caption: str
    figure: go.Figure | dict[str, Any]
    png: Callable[[Path], None] | None = None
    png_note: str = ""  # what the caption says of the PNG: only when the report has the PNG

    def __post_init__(self) -> None:
        # Kept as a plain dict from here on: the HTML and the PNG child read it as one, and plotly
        # would not validate it again.
        if isinstance(self.figure, go.Figure):
            object.__setattr__(self, "figure", plain_figure(self.figure))

    def size(self) -> tuple[int, int]:
        """The figure's (width, height) in pixels, 1100 x 600 where unset."""
        layout = self.figure["layout"]  # a dict since __post_init__
        return int(layout.get("width") or 1100), int(layout.get("height") or 600)


def colour_map(experiments: list[str]) -> dict[str, str]:
    """One colour per experiment, stable for a given set of names."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(experiments)))}


def _panels(metrics: pl.DataFrame) -> list[tuple[str, str]]:
    keys = metrics.select("dataset", "bucket", "bucket_min").unique().sort(["dataset", "bucket_min", "bucket"],
                                                                           nulls_last=True)
    return [(r["dataset"], r["bucket"]) for r in keys.iter_rows(named=True)]


def _panel_title(dataset: str, bucket: str, many_datasets: bool) -> str:
    text = f"prompts {bucket.replace('-', '–')} tokens"
    return f"{dataset}: {text}" if many_datasets else text


def _grid(panels: list[tuple[str, str]], title: str) -> tuple[go.Figure, int]:
    cols = 1 if len(panels) == 1 else 2  # three narrow panels side by side are unreadable in a PNG
    rows = max(1, math.ceil(len(panels) / cols))
    many = len({d for d, _ in panels}) > 1
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[_panel_title(d, b, many) for d, b in panels] or None,
        horizontal_spacing=0.08, vertical_spacing=min(0.18, 0.5 / rows), figure=new_figure(),
    )
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"}, font=_FONT,
        height=140 + 360 * rows, width=1100,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02 + 0.04 / rows, "xanchor": "right", "x": 1,
                    "title_text": "experiment "},
        margin={"l": 70, "r": 30, "t": 110, "b": 60},
    )
    return fig, cols


def _rc(i: int, cols: int) -> tuple[int, int]:
    return i // cols + 1, i % cols + 1


def _load_axis(part: pl.DataFrame) -> tuple[str, str]:
    """Which column is the load on the x axis, and its axis title."""
    if part.height and part["request_rate"].null_count() == 0:
        return "request_rate", "request rate (requests/s)"
    return "concurrency", "concurrency (requests in flight)"


def _log_axis(values: list[float]) -> dict[str, Any]:
    vals = sorted({v for v in values if v is not None and v > 0})
    if len(vals) >= 3 and vals[-1] / vals[0] >= 8:
        return {"type": "log", "tickvals": vals, "ticktext": [f"{v:g}" for v in vals]}
    return {"type": "linear", "tickvals": vals, "ticktext": [f"{v:g}" for v in vals]} if len(vals) <= 12 else {}


def _hover(row: dict[str, Any]) -> str:
    slo = "meets SLOs" if row.get("meets_slo") else f"SLO failed: {row.get('slo_failures') or '-'}"
    failed = "<br>SHARD FAILED" if row.get("status") == "failed" else ""
    valid = "" if (reason := invalid_reason(row)) is None else f"<br>INVALID: {reason}"
    return f"{row['experiment']}<br>{slo}{failed}{valid}"


_SLO_RED = "#B22222"
_PILLOW = " The PNG is drawn from the same numbers with Pillow, not by the browser; report.html has the interactive figure."


def _size(fig: go.Figure) -> tuple[int, int]:
    return int(fig.layout.width), int(fig.layout.height)


def _series_figure(metrics: pl.DataFrame, colours: dict[str, str], *, stem: str, title: str, caption: str,
                   y: str, y_title: str, scale: float = 1.0, slo_value: float | None = None,
                   slo_label: str = "", y_percent: bool = False) -> Figure:
    panels = _panels(metrics)
    fig, cols = _grid(panels, title)
    shown: set[str] = set()
    many = len({d for d, _ in panels}) > 1
    drawn: list[Panel] = []  # the same points for the PNG, drawn with Pillow (`chart_png`)
    for i, (dataset, bucket) in enumerate(panels):
        row, col = _rc(i, cols)
        part = metrics.filter((pl.col("dataset") == dataset) & (pl.col("bucket") == bucket))
        xcol, xtitle = _load_axis(part)
        x_axis = _log_axis([float(v) for v in part[xcol].drop_nulls()])
        panel = Panel(_panel_title(dataset, bucket, many),
                      Axis(xtitle, log=x_axis.get("type") == "log", ticks=x_axis.get("tickvals")),
                      Axis(y_title, from_zero=True, percent=y_percent),
                      hline=None if slo_value is None else (slo_value * scale, slo_label, _SLO_RED))
        drawn.append(panel)
        for exp in sorted(set(part["experiment"].to_list())):
            rows = part.filter(pl.col("experiment") == exp).sort(xcol).to_dicts()
            xs = [r[xcol] for r in rows]
            ys = [None if r.get(y) is None else r[y] * scale for r in rows]
            symbols = ["x" if r.get("valid") is False else "circle" if r.get("meets_slo") else "circle-open"
                       for r in rows]
            panel.marks.append(Line(colours[exp], xs, ys, symbols))
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=exp, legendgroup=exp, showlegend=exp not in shown,
                line={"color": colours[exp], "width": 2}, marker={"size": 9, "symbol": symbols, "color": colours[exp]},
                hovertext=[_hover(r) for r in rows], hoverinfo="text+x+y",
            ), row=row, col=col)
            shown.add(exp)
        if slo_value is not None:
            fig.add_hline(y=slo_value * scale, line={"color": "#B22222", "dash": "dash", "width": 1.5},
                          annotation_text=slo_label, annotation_position="top left",
                          annotation_font={"color": "#B22222", "size": 11}, row=row, col=col)
        fig.update_xaxes(title_text=xtitle, row=row, col=col, **x_axis)
        fig.update_yaxes(title_text=y_title, row=row, col=col, rangemode="tozero",
                         tickformat=".0%" if y_percent else None)
    chart = Chart(title, drawn, _size(fig), legend=[(exp, colours[exp], "circle") for exp in sorted(shown)])
    return Figure(stem, title, caption, fig, png=functools.partial(draw_chart, chart), png_note=_PILLOW)


def build_figures(metrics: pl.DataFrame, sample: pl.DataFrame | None, slo: Any,
                  colours: dict[str, str] | None = None) -> tuple[list[Figure], list[str]]:
    """Every report figure, plus notes on figures that could not be drawn (and why).

    Args:
        metrics: per-shard metrics (`fmbench.metrics.summarize`).
        sample: per-request rows (experiment, input_tokens, latency_s, ok) for the scatter, or None.
        slo: the `SLOConfig` whose limits are drawn, or None.
        colours: experiment -> colour (default: `colour_map` of the metrics' experiments).
    """
    notes: list[str] = []
    data = metrics.filter(pl.col("requests") > 0)
    if data.is_empty():
        return [], ["no shard produced measurements, so there is nothing to plot"]
    colours = colours or colour_map(metrics["experiment"].to_list())
    lat_slo = getattr(slo, "latency_p95_s", None)
    ttft_slo = getattr(slo, "ttft_p95_s", None)
    err_slo = getattr(slo, "max_error_rate", None)
    figs = [
        _series_figure(data, colours, stem="latency_p95_vs_load", title="p95 end-to-end latency vs load",
                       caption="Filled markers meet every SLO, open markers miss at least one, x marks an "
                               "invalid shard. Dashed line: the p95 latency SLO.",
                       y="latency_p95_s", y_title="p95 latency (s)", slo_value=lat_slo,
                       slo_label=f"SLO p95 ≤ {lat_slo:g} s" if lat_slo else ""),
        _series_figure(data, colours, stem="ttft_p95_vs_load", title="p95 time to first token vs load",
                       caption="Time from when a request was due to its first token; dashed line: the TTFT SLO.",
                       y="ttft_p95_s", y_title="p95 TTFT (ms)", scale=1000.0, slo_value=ttft_slo,
                       slo_label=f"SLO p95 ≤ {ttft_slo * 1000:g} ms" if ttft_slo else ""),
        _series_figure(data, colours, stem="throughput_vs_load", title="Throughput vs load",
                       caption="Successful requests completed per minute over the shard's measured duration.",
                       y="transactions_per_min", y_title="transactions per minute"),
        _series_figure(data, colours, stem="error_rate_vs_load", title="Error rate vs load",
                       caption="Failed requests / all measured requests; dashed line: the allowed error rate.",
                       y="error_rate", y_title="error rate", y_percent=True,
                       slo_value=err_slo if err_slo else None,
                       slo_label=f"SLO ≤ {err_slo:.1%}" if err_slo else ""),
    ]
    scatter = _scatter_figure(sample, colours)
    if isinstance(scatter, str):
        notes.append(f"prompt tokens vs latency: {scatter}")
    else:
        figs.insert(3, scatter)
    if (no_cost := _why_no_cost(data)) is not None:
        notes.append(f"price-performance and cost plots: {no_cost}")
    else:
        figs.append(_price_performance(data, colours, lat_slo))
        figs.append(_cost_bars(data, colours))
    return figs, notes


def _why_no_cost(data: pl.DataFrame) -> str | None:
    """Why no shard has a cost per transaction to plot; None when one has."""
    if not data["cost_per_10k_txn"].drop_nulls().is_empty():
        return None
    priced = data.filter(pl.col("price_model").is_not_null()) if "price_model" in data.columns else data.clear()
    if priced.is_empty():
        return "cost is unknown (no pricing configured for any experiment)"
    if not priced["successes"].fill_null(0).sum():  # the shards cost money but bought no transaction
        which = "of a priced experiment " if priced.height < data.height else ""
        return f"no request {which}succeeded, so there is no cost per successful transaction (pricing is configured)"
    return "cost is unknown (no priced shard's cost could be computed)"


def _scatter_figure(sample: pl.DataFrame | None, colours: dict[str, str]) -> Figure | str:
    """The prompt tokens vs latency scatter, or why it cannot be drawn."""
    if sample is None:
        return "no per-request records (requests.parquet) to plot"
    if sample.is_empty():
        return "the per-request records (requests.parquet) hold no measured request"
    ok = sample.filter(pl.col("ok").fill_null(False) & pl.col("latency_s").is_not_null()
                       & pl.col("input_tokens").is_not_null())
    if ok.is_empty():
        return ("no request succeeded, so no request has a latency to plot" if not sample["ok"].fill_null(False).any()
                else "no successful request has both its prompt tokens and its latency recorded")
    fig = new_figure()
    panel = Panel("", Axis("prompt tokens"), Axis("latency (s)", from_zero=True))
    for exp in sorted(set(ok["experiment"].to_list())):
        part = ok.filter(pl.col("experiment") == exp)
        xs, ys = part["input_tokens"].to_list(), part["latency_s"].to_list()
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", name=exp,
            marker={"color": colours.get(exp, "#333333"), "size": 5, "opacity": 0.55}, legendgroup=exp,
        ))
        panel.marks.append(Points(colours.get(exp, "#333333"), xs, ys, [5.0] * len(xs), opacity=0.55))
    title = "Prompt length vs end-to-end latency (successful requests)"
    fig.update_layout(
        title={"text": title, "x": 0.01}, font=_FONT, height=520, width=1100,
        xaxis_title="prompt tokens", yaxis_title="latency (s)", legend={"title_text": "experiment "},
        margin={"l": 70, "r": 30, "t": 80, "b": 60},
    )
    fig.update_yaxes(rangemode="tozero")
    chart = Chart(title, [panel], _size(fig), margins=(70, 80, 30, 60),
                  legend=[(exp, colours.get(exp, "#333333"), "dot") for exp in sorted(set(ok["experiment"].to_list()))])
    return Figure("prompt_tokens_vs_latency", title,
                  f"One point per request (a deterministic sample of at most {len(ok):,} points); all loads.",
                  fig, png=functools.partial(draw_chart, chart), png_note=_PILLOW)


def _price_performance(data: pl.DataFrame, colours: dict[str, str], lat_slo: float | None) -> Figure:
    priced = data.filter(pl.col("cost_per_10k_txn").is_not_null() & pl.col("latency_p95_s").is_not_null())
    panels = _panels(priced)
    title = "Price-performance: p95 latency vs cost per 10k transactions"
    fig, cols = _grid(panels, title)
    tpm_max = max([v for v in priced["transactions_per_min"].to_list() if v] or [1.0])
    shown: set[str] = set()
    many = len({d for d, _ in panels}) > 1
    drawn: list[Panel] = []
    for i, (dataset, bucket) in enumerate(panels):
        row, col = _rc(i, cols)
        part = priced.filter((pl.col("dataset") == dataset) & (pl.col("bucket") == bucket))
        panel = Panel(_panel_title(dataset, bucket, many),
                      Axis("cost per 10k transactions (USD)", from_zero=True, prefix="$"),
                      Axis("p95 latency (s)", from_zero=True),
                      band=(0.0, lat_slo, over_white("#2E8B57", 0.10), "meets p95 latency SLO") if lat_slo else None)
        drawn.append(panel)
        for exp in sorted(set(part["experiment"].to_list())):
            rows = part.filter(pl.col("experiment") == exp).sort("concurrency").to_dicts()
            sizes = [10 + 40 * math.sqrt((r.get("transactions_per_min") or 0.0) / tpm_max) for r in rows]
            labels = [f"{r['request_rate']:g}/s" if r.get("request_rate") is not None else f"c={r['concurrency']}"
                      for r in rows]
            panel.marks.append(Points(colours[exp], [r["cost_per_10k_txn"] for r in rows],
                                      [r["latency_p95_s"] for r in rows], sizes, 0.7, labels, outline="#FFFFFF"))
            fig.add_trace(go.Scatter(
                x=[r["cost_per_10k_txn"] for r in rows], y=[r["latency_p95_s"] for r in rows],
                mode="markers+text", text=labels, textposition="top center", name=exp, legendgroup=exp,
                showlegend=exp not in shown,
                marker={"size": sizes, "color": colours[exp], "opacity": 0.7, "line": {"color": "white", "width": 1}},
                hovertext=[f"{_hover(r)}<br>{(r.get('transactions_per_min') or 0):,.0f} transactions/min"
                           for r in rows], hoverinfo="text+x+y",
            ), row=row, col=col)
            shown.add(exp)
        if lat_slo:
            fig.add_hrect(y0=0, y1=lat_slo, fillcolor="#2E8B57", opacity=0.10, line_width=0, row=row, col=col,
                          annotation_text="meets p95 latency SLO", annotation_position="bottom right",
                          annotation_font={"color": "#2E8B57", "size": 11})
        fig.update_xaxes(title_text="cost per 10k transactions (USD)", tickprefix="$", rangemode="tozero",
                         row=row, col=col)
        fig.update_yaxes(title_text="p95 latency (s)", rangemode="tozero", row=row, col=col)
    caption = ("Bottom-left is better. Bubble area grows with transactions/min; labels give the load. "
               "The green band is where p95 latency meets its SLO (other SLOs are in the tables).")
    chart = Chart(title, drawn, _size(fig), legend=[(exp, colours[exp], "dot") for exp in sorted(shown)])
    return Figure("price_performance", title, caption, fig, png=functools.partial(draw_chart, chart), png_note=_PILLOW)


def _cost_bars(data: pl.DataFrame, colours: dict[str, str]) -> Figure:
    priced = data.filter(pl.col("cost_per_10k_txn").is_not_null())
    panels = _panels(priced)
    title = "Cost per 10k transactions by experiment and load"
    fig, cols = _grid(panels, title)
    shown: set[str] = set()
    many = len({d for d, _ in panels}) > 1
    drawn: list[Panel] = []
    for i, (dataset, bucket) in enumerate(panels):
        row, col = _rc(i, cols)
        part = priced.filter((pl.col("dataset") == dataset) & (pl.col("bucket") == bucket))
        # Categories as plotly's two-level axis places them: each experiment's loads side by side.
        ticks: list[float] = []
        tick_text: list[str] = []
        groups: list[tuple[float, float, str]] = []
        bars: list[Bars | Line | Points] = []
        for exp in sorted(set(part["experiment"].to_list())):
            rows = part.filter(pl.col("experiment") == exp).sort(["concurrency", "request_rate"]).to_dicts()
            labels = [f"{r['request_rate']:g}/s" if r.get("request_rate") is not None else f"c={r['concurrency']}"
                      for r in rows]
            at = [float(len(ticks) + k) for k in range(len(rows))]
            if rows:
                ticks += at
                tick_text += labels
                groups.append((at[0], at[-1], exp))
            bars.append(Bars(colours[exp], at, [r["cost_per_10k_txn"] for r in rows],
                                    [f"${r['cost_per_10k_txn']:,.2f}" for r in rows],
                                    [1.0 if r.get("meets_slo") else 0.35 for r in rows]))
            fig.add_trace(go.Bar(
                x=[[exp] * len(rows), labels], y=[r["cost_per_10k_txn"] for r in rows], name=exp,
                legendgroup=exp, showlegend=exp not in shown, marker_color=colours[exp],
                marker_opacity=[1.0 if r.get("meets_slo") else 0.35 for r in rows],
                text=[f"${r['cost_per_10k_txn']:,.2f}" for r in rows], textposition="outside",
                hovertext=[_hover(r) for r in rows], hoverinfo="text+y",
            ), row=row, col=col)
            shown.add(exp)
        fig.update_yaxes(title_text="cost per 10k transactions (USD)", tickprefix="$", rangemode="tozero",
                         row=row, col=col)
        fig.update_xaxes(title_text="experiment / load", row=row, col=col)
        drawn.append(Panel(_panel_title(dataset, bucket, many),
                           Axis("experiment / load", ticks=ticks, tick_text=tick_text, groups=groups),
                           Axis("cost per 10k transactions (USD)", from_zero=True, prefix="$"), marks=bars))
    caption = "Solid bars meet every SLO; faded bars miss at least one."
    chart = Chart(title, drawn, _size(fig), legend=[(exp, colours[exp], "square") for exp in sorted(shown)])
    return Figure("cost_per_10k_by_experiment", title, caption, fig, png=functools.partial(draw_chart, chart),
                  png_note=_PILLOW)


_PHASE_COLOURS = {"deploying": "#9E9E9E", "idle": "#D55E00"}


def endpoint_timeline_figure(timelines: dict[str, Any], run_end: str | None,
                             colours: dict[str, str]) -> Figure | None:
    """Which endpoint was alive when: one bar per endpoint from create to delete, by phase.

    ``timelines``: experiment -> `EndpointTimeline`; endpoints the run did not create are left out.
    """
    from fmbench.metrics.cost import billed_time

    spans = []  # (row, billed time, how and by when an endpoint that ended at an unknown time ended)
    for t in (life for timeline in timelines.values() for life in timeline.lives()):  # an experiment's on one row
        billed = billed_time(t, run_end)
        if billed is not None:
            spans.append((t.label, billed, f"{t.gone_how} by {t.gone_by[11:19]} UTC" if t.gone_by else None))
    if not spans:
        return None
    fig = new_figure()
    shown: set[str] = set()
    for name, b, gone_by in sorted(spans, key=lambda s: s[1].billed_from, reverse=True):
        in_service = b.in_service or b.billed_to
        pieces = [("deploying", b.billed_from, in_service)]
        if b.measuring_from is not None and b.measuring_to is not None:
            pieces += [("idle", in_service, b.measuring_from), ("measuring", b.measuring_from, b.measuring_to),
                       ("idle", b.measuring_to, b.billed_to)]
        else:
            pieces.append(("idle", in_service, b.billed_to))
        for phase, start, stop in pieces:
            seconds = (stop - start).total_seconds()
            if seconds <= 0:
                continue
            colour = colours.get(name, "#0072B2") if phase == "measuring" else _PHASE_COLOURS[phase]
            legend = phase if phase != "measuring" else "measuring (experiment colour)"
            fig.add_trace(go.Bar(
                y=[name], x=[seconds * 1000.0], base=[start.isoformat()], orientation="h", name=legend,
                marker={"color": colour}, legendgroup=phase, showlegend=legend not in shown,
                hovertemplate=f"{name}: {phase} {seconds / 60:,.1f} min<extra></extra>",
            ))
            shown.add(legend)
        if not b.deleted:
            fig.add_annotation(x=b.billed_to.isoformat(), y=name, text="  still running", showarrow=False,
                               xanchor="left", font={"color": "#D55E00"})
        elif gone_by:
            fig.add_annotation(x=b.billed_to.isoformat(), y=name, showarrow=False, xanchor="left",
                               text=f"  {gone_by}",
                               font={"color": "#D55E00"})
    title = "Endpoint timeline: what was billed when"
    fig.update_layout(
        title={"text": title, "x": 0.01}, font=_FONT, barmode="overlay",
        height=160 + 60 * len({name for name, _, _ in spans}), width=1100, margin={"l": 160, "r": 30, "t": 80, "b": 60},
        xaxis={"type": "date", "title_text": "time (UTC)"}, legend={"orientation": "h", "y": -0.25},
    )
    caption = ("Each bar runs from CreateEndpoint to its deletion (the billed time): grey while deploying, the "
               "experiment's colour from its first to its last shard, orange while idle.")
    return Figure("endpoint_timeline", title, caption, fig)
