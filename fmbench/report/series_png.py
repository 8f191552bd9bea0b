"""The static PNG of a metric-vs-load figure, drawn from its numbers with Pillow instead of by the browser.

Latency, TTFT, throughput and error rate against load are simple charts (a panel per bucket, a line
with markers per experiment, an SLO line); plotly.js in headless Chromium took about 0.25 s of CPU
for each on the 2-core VM, beside the report's own work. Drawn here they keep the same panels, axes,
ticks, legend, marker meanings and SLO line, in a few hundredths of a second each.
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

_TEXT, _GRID, _ZERO, _SLO = "#2A3F5F", "#EBF0F8", "#C8D4E3", "#B22222"
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 30, 110, 60  # the plotly figure's margins
_H_GAP, _PANEL_TITLE = 0.08, 22
_FONTS = ("LiberationSans-Regular.ttf", "DejaVuSans.ttf")  # Arial's metrics first, as plotly asks for
_ASCII = {"≤": "<=", "≥": ">=", "–": "-", "→": "to"}  # for Pillow's built-in font, which lacks them


@dataclass
class Line:
    """One experiment's points in a panel; ``symbols``: circle (meets every SLO), circle-open, x (invalid)."""

    name: str
    colour: str
    xs: list[float]
    ys: list[float | None]
    symbols: list[str]


@dataclass
class SeriesPanel:
    """One (dataset, bucket) panel: its title, x axis (``x_ticks``: the loads, or None for round ticks),
    lines and the SLO line (value in the y axis' unit, or None)."""

    title: str
    x_title: str
    log_x: bool
    x_ticks: list[float] | None
    lines: list[Line] = field(default_factory=list)
    slo: float | None = None
    slo_label: str = ""


def draw_series(title: str, panels: list[SeriesPanel], y_title: str, y_percent: bool,
                legend: dict[str, str], size: tuple[int, int], path: Path) -> None:
    """Write the figure as a PNG of ``size`` (width, height): the title, the legend (experiment ->
    colour) and the panels on a grid of two columns (one for a single panel), row by row."""
    from PIL import Image, ImageDraw

    width, height = size
    img = Image.new("RGB", size, "#FFFFFF")
    draw = ImageDraw.Draw(img)
    draw.text((10, 54), _fit(title), fill=_TEXT, font=_font(18), anchor="ls")
    _draw_legend(draw, legend, width)
    cols = 1 if len(panels) == 1 else 2
    rows = max(1, math.ceil(len(panels) / cols))
    area_w, area_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    v_gap = min(0.18, 0.5 / rows)
    pw, ph = area_w * (1 - _H_GAP * (cols - 1)) / cols, area_h * (1 - v_gap * (rows - 1)) / rows
    for i, p in enumerate(panels):
        left = _LEFT + (i % cols) * (pw + _H_GAP * area_w)
        top = _TOP + (i // cols) * (ph + v_gap * area_h)
        _draw_panel(img, draw, p, (int(left), int(top), int(pw), int(ph)), y_title, y_percent)
    img.save(path, "PNG", compress_level=1)


def _draw_legend(draw: ImageDraw.ImageDraw, legend: dict[str, str], width: int) -> None:
    font = _font(13)
    items = [(name, colour, int(font.getlength(name))) for name, colour in legend.items()]
    head = "experiment"
    x = width - _RIGHT - sum(44 + w for _, _, w in items) - int(_font(16).getlength(head)) - 12
    y = 74
    draw.text((x, y), head, fill=_TEXT, font=_font(16), anchor="lm")
    x += int(_font(16).getlength(head)) + 12
    for name, colour, w in items:
        draw.line([(x, y), (x + 30, y)], fill=colour, width=2)
        _marker(draw, x + 15, y, "circle", colour)
        draw.text((x + 36, y), name, fill=_TEXT, font=font, anchor="lm")
        x += 44 + w


def _draw_panel(img: Image.Image, draw: ImageDraw.ImageDraw, p: SeriesPanel, box: tuple[int, int, int, int],
                y_title: str, y_percent: bool) -> None:
    left, top, w, h = box
    small = _font(13)
    draw.text((left + w // 2, top - 6), _fit(p.title), fill=_TEXT, font=_font(16), anchor="ms")
    xs = [x for line in p.lines for x in line.xs if x is not None and (x > 0 or not p.log_x)]
    ys = [y for line in p.lines for y in line.ys if y is not None]
    if p.slo is not None:
        ys.append(p.slo)
    y_top = max(ys, default=0.0)
    y_ticks = _ticks(0.0, y_top if y_top > 0 else 1.0, 8)
    y_max = max(y_top * 1.05, y_ticks[-1]) if y_top > 0 else 1.0
    fx = _x_scale(xs, p.log_x, left, w)
    x_ticks = p.x_ticks if p.x_ticks is not None else _ticks(min(xs, default=0.0), max(xs, default=1.0), 6)

    def fy(y: float) -> float:
        return top + h - y / y_max * h

    for t in x_ticks:
        tx = fx(t)
        if tx is not None:
            draw.line([(tx, top), (tx, top + h)], fill=_GRID)
            draw.text((tx, top + h + 8), _tick_text(t, False), fill=_TEXT, font=small, anchor="mt")
    for t in y_ticks:
        if t <= y_max:
            draw.line([(left, fy(t)), (left + w, fy(t))], fill=_ZERO if t == 0 else _GRID, width=2 if t == 0 else 1)
            draw.text((left - 8, fy(t)), _tick_text(t, y_percent), fill=_TEXT, font=small, anchor="rm")
    draw.text((left + w // 2, top + h + 42), _fit(p.x_title), fill=_TEXT, font=_font(16), anchor="ms")
    _vertical_text(img, _fit(y_title), left - 52, top + h // 2)
    if p.slo is not None:
        y = fy(p.slo)
        for x in range(left, left + w, 12):
            draw.line([(x, y), (min(x + 6, left + w), y)], fill=_SLO, width=2)
        draw.text((left + 2, y - 3), _fit(p.slo_label), fill=_SLO, font=_font(11), anchor="ls")
    for line in p.lines:
        points = [None if y is None or (px := fx(x)) is None else (px, fy(y))
                  for x, y in zip(line.xs, line.ys, strict=True)]
        for a, b in itertools.pairwise(points):  # a missing value breaks the line, as in plotly
            if a is not None and b is not None:
                draw.line([a, b], fill=line.colour, width=2)
        for pt, symbol in zip(points, line.symbols, strict=True):
            if pt is not None:
                _marker(draw, pt[0], pt[1], symbol, line.colour)


def _x_scale(xs: list[float], log: bool, left: int, w: int) -> Callable[[float], float | None]:
    """x value -> pixel column (None off a log axis); the range padded by a point's width, as plotly does."""
    pos = [math.log10(x) for x in xs if x > 0] if log else xs
    lo, hi = (min(pos), max(pos)) if pos else (0.0, 1.0)
    pad = (hi - lo) * 0.06 if hi > lo else 1.0
    lo, hi = lo - pad, hi + pad

    def fx(x: float) -> float | None:
        if log and x <= 0:
            return None
        v = math.log10(x) if log else x
        return left + (v - lo) / (hi - lo) * w

    return fx


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, symbol: str, colour: str) -> None:
    r = 4.5
    if symbol == "x":
        draw.line([(x - r, y - r), (x + r, y + r)], fill=colour, width=3)
        draw.line([(x - r, y + r), (x + r, y - r)], fill=colour, width=3)
    elif symbol == "circle-open":
        draw.ellipse([x - r, y - r, x + r, y + r], fill="#FFFFFF", outline=colour, width=1)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _vertical_text(img: Image.Image, text: str, x: int, y: int) -> None:
    """``text`` read bottom to top, centred on (x, y): the y axis' title."""
    from PIL import Image, ImageDraw

    font = _font(16)
    x0, y0, x1, y1 = (int(v) for v in font.getbbox(text))
    mask = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
    ImageDraw.Draw(mask).text((-x0 + 1, -y0 + 1), text, fill=255, font=font)
    mask = mask.rotate(90, expand=True)
    img.paste(_TEXT, (x - mask.width // 2, y - mask.height // 2), mask)


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


def _tick_text(v: float, percent: bool) -> str:
    v = round(v, 10)
    if percent:
        return f"{v:.0%}" if round(v * 100, 6) == round(v * 100) else f"{v:.1%}"
    if v == int(v) and abs(v) >= 1000:
        return f"{int(v):,}"
    return f"{v:g}"


def _ticks(lo: float, hi: float, most: int) -> list[float]:
    """Round tick values covering [lo, hi] (from a multiple of the step at or below ``lo``), at most ``most``+1."""
    span = hi - lo if hi > lo else abs(hi) or 1.0
    raw = span / most
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step)
    return [round(k * step, 12) for k in range(first, math.ceil(hi / step) + 1)]
