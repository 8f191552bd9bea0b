"""Static PNGs of the report's charts, drawn from their numbers with Pillow instead of by the browser.

The report's charts are simple (panels of lines, points, bubbles or bars over linear, log or
category axes, an SLO line or band); plotly.js in headless Chromium took about 0.25 s of CPU for
each on the 2-core VM, and Chromium's start 2-3 s more, beside the report's own work. Drawn here
each keeps the plotly figure's size, panels, titles, axes, ticks, legend and reference lines, in a
few hundredths of a second. report.html keeps the interactive plotly figures.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL import Image, ImageDraw, ImageFont

    Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

_TEXT, _GRID, _ZERO, _WHITE = "#2A3F5F", "#EBF0F8", "#C8D4E3", "#FFFFFF"
_H_GAP = 0.08
_FONTS = ("LiberationSans-Regular.ttf", "DejaVuSans.ttf")  # Arial's metrics first, as plotly asks for
_ASCII = {"≤": "<=", "≥": ">=", "–": "-", "→": "to"}  # for Pillow's built-in font, which lacks them


@dataclass
class Line:
    """A line through points (a missing y breaks it); ``symbols`` per point: circle (filled),
    circle-open, x; None draws no markers."""

    colour: str
    xs: list[float]
    ys: list[float | None]
    symbols: list[str] | None = None


@dataclass
class Points:
    """Markers of ``sizes`` (diameters in pixels) at ``opacity`` over white, each with an optional label above."""

    colour: str
    xs: list[float]
    ys: list[float]
    sizes: list[float]
    opacity: float = 1.0
    labels: list[str] | None = None
    outline: str | None = None


@dataclass
class Bars:
    """Bars at category positions ``xs`` (0, 1, ...), each with a text above and an opacity over white."""

    colour: str
    xs: list[float]
    ys: list[float]
    texts: list[str]
    opacities: list[float]


@dataclass
class Axis:
    """An axis: title, log or linear, tick values (None: round ones) and their texts, range.

    ``groups`` (category axes): (first, last position, label) drawn as a second row of tick labels.
    """

    title: str
    log: bool = False
    ticks: list[float] | None = None
    tick_text: list[str] | None = None
    from_zero: bool = False
    percent: bool = False
    prefix: str = ""
    fixed: tuple[float, float] | None = None
    groups: list[tuple[float, float, str]] | None = None


@dataclass
class Panel:
    """One panel: its title, axes, marks, an optional horizontal line (value, label, colour) and band
    (y0, y1, colour, label), and a legend of its own (label, colour) for lines that differ by panel,
    drawn in the panel's bottom right corner."""

    title: str
    x: Axis
    y: Axis
    marks: list[Line | Points | Bars] = field(default_factory=list)
    hline: tuple[float, str, str] | None = None
    band: tuple[float, float, str, str] | None = None
    legend: list[tuple[str, str]] | None = None


@dataclass
class Chart:
    """A whole figure: ``size`` (width, height) and ``margins`` (left, top, right, bottom) as in its
    plotly layout, the legend (label, colour, symbol: a line with a circle, line, dot or square) at the top right."""

    title: str
    panels: list[Panel]
    size: tuple[int, int]
    margins: tuple[int, int, int, int] = (70, 110, 30, 60)
    legend: list[tuple[str, str, str]] = field(default_factory=list)
    legend_title: str = "experiment"
    v_gap: float = 0.18


def draw_chart(chart: Chart, path: Path) -> None:
    """Write ``chart`` as a PNG: the title, the legend and the panels on a grid of two columns (one for
    a single panel), row by row, as plotly's make_subplots places them."""
    from PIL import Image, ImageDraw

    width, height = chart.size
    img = Image.new("RGB", chart.size, _WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((10, 46), _fit(chart.title), fill=_TEXT, font=_font(18), anchor="ls")
    if chart.legend:
        _draw_legend(draw, chart.legend, chart.legend_title, width - chart.margins[2], chart.margins[1] - 36)
    left, top, right, bottom = chart.margins
    cols = 1 if len(chart.panels) == 1 else 2
    rows = max(1, math.ceil(len(chart.panels) / cols))
    area_w, area_h = width - left - right, height - top - bottom
    v_gap = min(chart.v_gap, 0.5 / rows) if rows > 1 else 0.0
    pw, ph = area_w * (1 - _H_GAP * (cols - 1)) / cols, area_h * (1 - v_gap * (rows - 1)) / rows
    for i, p in enumerate(chart.panels):
        x0 = left + (i % cols) * (pw + _H_GAP * area_w)
        y0 = top + (i // cols) * (ph + v_gap * area_h)
        _draw_panel(img, draw, p, (int(x0), int(y0), int(pw), int(ph)))
    img.save(path, "PNG", compress_level=1)


def _draw_legend(draw: ImageDraw.ImageDraw, items: list[tuple[str, str, str]], head: str, right: int, y: int) -> None:
    font, head_font = _font(13), _font(16)
    widths = [int(font.getlength(_fit(label))) for label, _, _ in items]
    x = right - sum(44 + w for w in widths) - int(head_font.getlength(head)) - 12
    draw.text((x, y), head, fill=_TEXT, font=head_font, anchor="lm")
    x += int(head_font.getlength(head)) + 12
    for (label, colour, symbol), w in zip(items, widths, strict=True):
        _legend_key(draw, x, y, colour, symbol)
        draw.text((x + 36, y), _fit(label), fill=_TEXT, font=font, anchor="lm")
        x += 44 + w


def _legend_key(draw: ImageDraw.ImageDraw, x: float, y: float, colour: str, symbol: str) -> None:
    if symbol == "square":
        draw.rectangle([x + 8, y - 7, x + 22, y + 7], fill=colour)
        return
    if symbol != "dot":
        draw.line([(x, y), (x + 30, y)], fill=colour, width=2)
    if symbol != "line":
        _marker(draw, x + 15, y, "circle" if symbol == "dot" else symbol, colour, 12 if symbol == "dot" else 9)


def _draw_panel(img: Image.Image, draw: ImageDraw.ImageDraw, p: Panel, box: tuple[int, int, int, int]) -> None:
    left, top, w, h = box
    small = _font(13)
    draw.text((left + w // 2, top - 6), _fit(p.title), fill=_TEXT, font=_font(16), anchor="ms")
    xs = [x for m in p.marks for x in m.xs if x is not None and math.isfinite(x)]
    ys = [y for m in p.marks for y in m.ys if y is not None and math.isfinite(y)]
    hline = p.hline if p.hline is not None and _finite(p.hline[0]) else None
    band = p.band if p.band is not None and _finite(p.band[0]) and _finite(p.band[1]) else None
    if hline is not None:
        ys.append(hline[0])
    radius = max((size / 2 for m in p.marks if isinstance(m, Points) for size in m.sizes), default=4.5)
    texts = any(isinstance(m, Bars) or (isinstance(m, Points) and m.labels) for m in p.marks)
    # About one tick per 80 px across (the labels are wider) and one per 50 px up, as plotly spaces them.
    fx, x_ticks = _scale(p.x, xs, left, left + w, radius, 80)
    fy_up, y_ticks = _scale(p.y, ys, 0, h, radius + (18 if texts else 0), 50)

    def fy(y: float) -> float:
        v = fy_up(y)
        return top + h - (v if v is not None else 0.0)

    if band is not None:
        y0, y1, colour, label = band
        draw.rectangle([left, fy(y1), left + w, fy(y0)], fill=colour)
        draw.text((left + w - 4, fy(y0) - 4), _fit(label), fill=_TEXT, font=_font(11), anchor="rs")
    x_labels = p.x.tick_text or [_tick_text(t, p.x) for t in x_ticks]
    for t, text in zip(x_ticks, x_labels, strict=True):
        tx = fx(t)
        if tx is None or not left <= tx <= left + w:
            continue
        if not p.x.groups:
            draw.line([(tx, top), (tx, top + h)], fill=_GRID)
        draw.text((tx, top + h + 8), _fit(text), fill=_TEXT, font=small, anchor="mt")
    for first, last, label in p.x.groups or []:
        a, b = fx(first - 0.5), fx(last + 0.5)
        if a is not None and b is not None:
            draw.text(((a + b) / 2, top + h + 24), _fit(label), fill=_TEXT, font=small, anchor="mt")
            for edge in (a, b):  # the group's dividers, as plotly draws a two-level axis
                draw.line([(edge, top + h), (edge, top + h + 36)], fill=_TEXT)
    label_w = 0.0
    for t in y_ticks:
        ty = fy(t)
        if top - 1 <= ty <= top + h + 1:
            draw.line([(left, ty), (left + w, ty)], fill=_ZERO if t == 0 else _GRID, width=2 if t == 0 else 1)
            draw.text((left - 8, ty), _tick_text(t, p.y), fill=_TEXT, font=small, anchor="rm")
            label_w = max(label_w, small.getlength(_tick_text(t, p.y)))
    draw.text((left + w // 2, top + h + (54 if p.x.groups else 42)), _fit(p.x.title), fill=_TEXT, font=_font(16),
              anchor="ms")
    _vertical_text(img, _fit(p.y.title), left - 20 - int(label_w), top + h // 2)
    if hline is not None:
        value, label, colour = hline
        y = fy(value)
        for x in range(left, left + w, 12):
            draw.line([(x, y), (min(x + 6, left + w), y)], fill=colour, width=2)
        draw.text((left + 2, y - 3), _fit(label), fill=colour, font=_font(11), anchor="ls")
    for mark in p.marks:
        _draw_mark(draw, mark, fx, fy)
    if p.legend:
        # Bottom right, on white: the panel legend is the ITL CDF's, whose lines climb at the left and
        # run along the top; the bottom right is where they never are.
        font = _font(12)
        entries = [_fit(label) for label, _ in p.legend]
        box_w = 48 + max(int(font.getlength(t)) for t in entries)
        box_h = 8 + 16 * len(entries)
        x0, y0 = left + w - box_w - 8, top + h - box_h - 8
        draw.rectangle([(x0, y0), (x0 + box_w, y0 + box_h)], fill="#FFFFFF", outline="#E5ECF6")
        ly = y0 + 12
        for text, (_, colour) in zip(entries, p.legend, strict=True):
            draw.line([(x0 + 8, ly), (x0 + 32, ly)], fill=colour, width=3)
            draw.text((x0 + 38, ly), text, fill=_TEXT, font=font, anchor="lm")
            ly += 16


def _draw_mark(draw: ImageDraw.ImageDraw, mark: Line | Points | Bars, fx: Callable[[float], float | None],
               fy: Callable[[float], float]) -> None:
    if isinstance(mark, Line):
        points = [None if y is None or not (_finite(x) and _finite(y)) or (px := fx(x)) is None else (px, fy(y))
                  for x, y in zip(mark.xs, mark.ys, strict=True)]
        for a, b in itertools.pairwise(points):  # a missing value breaks the line, as in plotly
            if a is not None and b is not None:
                draw.line([a, b], fill=mark.colour, width=2)
        for pt, symbol in zip(points, mark.symbols or [], strict=False):
            if pt is not None:
                _marker(draw, pt[0], pt[1], symbol, mark.colour, 9)
    elif isinstance(mark, Points):
        fill = over_white(mark.colour, mark.opacity)
        for k, (x, y, size) in enumerate(zip(mark.xs, mark.ys, mark.sizes, strict=True)):
            px = fx(x) if _finite(x) and _finite(y) and _finite(size) else None
            if px is None:
                continue
            r = size / 2
            draw.ellipse([px - r, fy(y) - r, px + r, fy(y) + r], fill=fill, outline=mark.outline)
            if mark.labels:
                draw.text((px, fy(y) - r - 2), _fit(mark.labels[k]), fill=_TEXT, font=_font(12), anchor="ms")
    else:
        for x, y, text, opacity in zip(mark.xs, mark.ys, mark.texts, mark.opacities, strict=True):
            px, x_next = (fx(x), fx(x + 1)) if _finite(x) and _finite(y) else (None, None)
            if px is None or x_next is None:
                continue
            half = (x_next - px) * 0.4
            draw.rectangle([px - half, fy(y), px + half, fy(0)], fill=over_white(mark.colour, opacity))
            draw.text((px, fy(y) - 3), _fit(text), fill=_TEXT, font=_font(12), anchor="ms")


def _scale(axis: Axis, values: list[float], lo_px: float, hi_px: float,
           pad_px: float, tick_px: float) -> tuple[Callable[[float], float | None], list[float]]:
    """value -> pixel along an axis, and its ticks. The range covers the values (and 0 when
    ``from_zero``) and ``pad_px`` more (a marker's radius, text above bars); category axes span half
    a category either side. About one round tick per ``tick_px``."""
    if axis.log:
        pos = [math.log10(v) for v in values if v > 0]
    else:
        pos = list(values) + ([0.0] if axis.from_zero else [])
    lo, hi = (min(pos), max(pos)) if pos else (0.0, 1.0)
    length = max(hi_px - lo_px, 1.0)
    if axis.fixed is not None:
        lo, hi = axis.fixed
    elif axis.groups is not None:
        lo, hi = -0.5, hi + 0.5
    elif hi > lo:
        share = min(0.4, max(pad_px / length, 0.05 if axis.from_zero else 0.0))
        pad = (hi - lo) * share / (1 - 2 * share)
        lo, hi = (lo if axis.from_zero and lo >= 0 else lo - pad), hi + pad
    else:
        lo, hi = (0.0, 1.0) if hi == 0 else (hi - abs(hi) * 0.5, hi + abs(hi) * 0.5)
    ticks = axis.ticks if axis.ticks is not None else _ticks(lo, hi, max(3, int(length / tick_px)))
    if axis.log and axis.ticks is None:
        ticks = [10 ** t for t in ticks]

    def f(v: float) -> float | None:
        if axis.log:
            if v <= 0:
                return None
            v = math.log10(v)
        return lo_px + (v - lo) / (hi - lo) * (hi_px - lo_px)

    return f, [t for t in ticks if lo - 1e-9 <= (math.log10(t) if axis.log and t > 0 else t) <= hi + 1e-9]


def _finite(v: float | None) -> bool:
    """A value drawn: missing, NaN and infinite values are gaps, as in plotly."""
    return v is not None and math.isfinite(v)


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, symbol: str, colour: str, size: float) -> None:
    r = size / 2
    if symbol == "x":
        draw.line([(x - r, y - r), (x + r, y + r)], fill=colour, width=3)
        draw.line([(x - r, y + r), (x + r, y - r)], fill=colour, width=3)
    elif symbol == "circle-open":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_WHITE, outline=colour, width=1)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def over_white(colour: str, opacity: float) -> str:
    """``colour`` drawn at ``opacity`` over white, as an opaque colour."""
    rgb = bytes.fromhex(colour.lstrip("#")[:6])
    return "#" + "".join(f"{round(c * opacity + 255 * (1 - opacity)):02X}" for c in rgb)


def _vertical_text(img: Image.Image, text: str, x: int, y: int) -> None:
    """``text`` read bottom to top, ending left of x and centred on y: the y axis' title."""
    from PIL import Image, ImageDraw

    font = _font(16)
    x0, y0, x1, y1 = (int(v) for v in font.getbbox(text))
    mask = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
    ImageDraw.Draw(mask).text((-x0 + 1, -y0 + 1), text, fill=255, font=font)
    mask = mask.rotate(90, expand=True)
    img.paste(_TEXT, (max(0, x - mask.width), y - mask.height // 2), mask)


@functools.cache
def _font(size: int) -> Font:
    from PIL import ImageFont

    for name in _FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


@functools.cache
def _system_font() -> bool:
    from PIL import ImageFont

    font = _font(12)
    return isinstance(font, ImageFont.FreeTypeFont) and isinstance(font.path, str) and font.path.endswith(_FONTS)


def _fit(text: str) -> str:
    """``text`` in characters the font has: Pillow's built-in font (no system font found) lacks ≤, – and →."""
    if not _system_font():
        for char, plain in _ASCII.items():
            text = text.replace(char, plain)
    return text


def _tick_text(v: float, axis: Axis) -> str:
    v = round(v, 10)
    if axis.percent:
        text = f"{v:.0%}" if round(v * 100, 6) == round(v * 100) else f"{v:.1%}"
    elif v == int(v) and abs(v) >= 1000:
        text = f"{int(v):,}"
    else:
        text = f"{v:g}"
    return axis.prefix + text


def _ticks(lo: float, hi: float, most: int) -> list[float]:
    """Round tick values covering [lo, hi], at most about ``most`` of them."""
    span = hi - lo if hi > lo else abs(hi) or 1.0
    raw = span / most
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [round(k * step, 12) for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]
