"""The report's PNGs drawn with Pillow (`fmbench.report.chart_png`): each chart's data lands where its axes say."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from PIL import Image

from fmbench.report.chart_png import Axis, Bars, Chart, Line, Panel, Points, draw_chart
from fmbench.report.figures import _series_figure


def _metrics() -> pl.DataFrame:
    rows = [{"dataset": "d", "bucket": b, "bucket_min": lo, "experiment": "exp", "concurrency": c,
             "request_rate": None, "latency_p95_s": lat, "valid": c != 16, "meets_slo": lat <= 3.0,
             "slo_failures": None, "invalid_reason": None}
            for b, lo in (("1-500", 1), ("500-1000", 500)) for c, lat in ((1, 1.0), (4, 2.0), (16, 4.0))]
    return pl.DataFrame(rows, schema_overrides={"request_rate": pl.Float64})


def _pixels(img: Image.Image, colour: tuple[int, int, int]) -> list[tuple[int, int]]:
    rgb = img.convert("RGB")
    return [(x, y) for y in range(rgb.height) for x in range(rgb.width) if rgb.getpixel((x, y)) == colour]


def test_series_png_draws_each_point_at_its_value_with_the_slo_line(tmp_path: Path) -> None:
    fig = _series_figure(_metrics(), {"exp": "#0072B2"}, stem="lat", title="p95 latency vs load", caption="c.",
                         y="latency_p95_s", y_title="p95 latency (s)", slo_value=3.0, slo_label="SLO p95 ≤ 3 s")
    assert fig.png is not None and "drawn from the same numbers with Pillow" in fig.png_note
    fig.png(tmp_path / "lat.png")
    with Image.open(tmp_path / "lat.png") as img:
        assert img.size == fig.size() == (1100, 500)
        line = _pixels(img, (0x00, 0x72, 0xB2))
        slo = _pixels(img, (0xB2, 0x22, 0x22))
    left = [(x, y) for x, y in line if x < 550]  # the first panel
    assert left and slo
    # Latency rises with load: the rightmost point is drawn highest, the leftmost lowest, and the dashed
    # SLO line (3 s) lies between the 2-s and the 4-s points.
    low = max(y for x, y in left if x < min(x for x, _ in left) + 10)
    high = min(y for x, y in left if x > max(x for x, _ in left) - 10)
    slo_y = sorted(y for _, y in slo)[len(slo) // 2]
    assert high < slo_y < low
    # The panel's y axis spans 0 to about the top value: 1 s sits near a quarter of 4 s above the axis.
    assert (low - high) > 150


def test_bars_and_points_are_drawn_to_scale_with_their_labels(tmp_path: Path) -> None:
    bars = Panel("bars", Axis("experiment / load", ticks=[0.0, 1.0], tick_text=["c=1", "c=2"], groups=[(0, 1, "a")]),
                 Axis("cost (USD)", from_zero=True, prefix="$"),
                 marks=[Bars("#0072B2", [0.0, 1.0], [1.0, 2.0], ["$1.00", "$2.00"], [1.0, 1.0])])
    points = Panel("points", Axis("x", from_zero=True), Axis("y", from_zero=True),
                   marks=[Points("#E69F00", [1.0, 2.0], [2.0, 1.0], [10.0, 30.0])])
    chart = Chart("two panels", [bars, points], (1100, 500), legend=[("a", "#0072B2", "square")])
    draw_chart(chart, tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as img:
        assert img.size == (1100, 500)
        blue = _pixels(img, (0x00, 0x72, 0xB2))
        orange = _pixels(img, (0xE6, 0x9F, 0x00))
    in_panel = [(x, y) for x, y in blue if x < 550 and y > 100]  # the bars, not the legend's key
    first = [y for x, y in in_panel if x < 300]
    second = [y for x, y in in_panel if x >= 300]
    base = max(y for _, y in in_panel)
    assert abs((base - min(second)) - 2 * (base - min(first))) <= 3  # a bar twice as tall for twice the cost
    big = [x for x, _ in orange if x > 940]  # x = 2 of 0..2 in the right panel (610..1070 px)
    small = [x for x, _ in orange if x <= 940]
    assert len(big) > 4 * len(small) > 0  # the 30-px marker right of the 10-px one, with 9 times its area


def test_missing_and_non_finite_values_are_gaps_not_failures(tmp_path: Path) -> None:
    # A NaN or infinite metric (or a missing one) must not cost the report its PNGs: plotly leaves a gap.
    nan, inf = float("nan"), float("inf")
    panel = Panel("p", Axis("x"), Axis("y", from_zero=True),
                  marks=[Line("#0072B2", [1.0, 2.0, 3.0, 4.0], [1.0, nan, None, inf], ["circle"] * 4),
                         Points("#E69F00", [nan, 2.0], [1.0, 2.0], [10.0, 10.0]),
                         Bars("#009E73", [0.0], [nan], ["$nan"], [1.0])],
                  hline=(nan, "SLO", "#B22222"))
    draw_chart(Chart("gaps", [panel], (600, 400)), tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as img:
        assert img.size == (600, 400)
        assert _pixels(img, (0x00, 0x72, 0xB2)) and _pixels(img, (0xE6, 0x9F, 0x00))  # the finite points
        assert not _pixels(img, (0xB2, 0x22, 0x22))  # no SLO line at NaN
