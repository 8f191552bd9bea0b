"""The static PNG of a request timeline, drawn from the data with Pillow instead of by the browser.

A timeline has a panel per shard; drawn by plotly in headless Chromium, the four 50-panel figures
of a 1M-record run took 4.5-7 s each (1.5 s or more of it for the 50 subplots' axes, even with the
data as one image per panel). Drawn here, each request's spans are filled pixel runs and each
panel keeps its own time axis, ticks and title, in a fraction of a second per figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

#: Segments of one state: x (seconds) and y (request row) lists, one span per [a, b, None] triple.
Segments = tuple[list[float | None], list[float | None]]

WIDTH = 1100
_TEXT, _GRID, _FRAME, _WARM = "#2A3F5F", "#E5ECF6", "#C8D4E3", "#EDEDED"
_WHITE, _GRID_I, _WARM_I, _FRAME_I, _INK, _FIRST_STATE = range(6)  # palette indices
_LEFT, _RIGHT, _GAP = 70, 30, 60  # outer margins and the gap between the two columns
_TITLE_H, _PLOT_H, _AXIS_H = 24, 190, 46  # per panel: title line, plot area, tick labels and spacing


@dataclass
class Panel:
    """One shard's panel: its title, rows drawn (requests), warm-up rows first, and its spans."""

    title: str
    rows: int
    warm: int
    span_s: float
    segments: dict[str, Segments]


def draw_timeline(title: str, panels: list[Panel], states: dict[str, tuple[str, str]], note: str,
                  path: Path) -> None:
    """Write the timeline as a PNG: a title, the legend (``states``: state -> colour, label), a note
    saying what the axes are, and two columns of panels (one for a single panel).

    States are painted in the order of ``states``, so later ones (failures) stay on top.
    """
    from PIL import Image, ImageDraw, ImageFont  # imported here: a report without PNGs does not need it

    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    top = 110
    height = top + rows * (_TITLE_H + _PLOT_H + _AXIS_H) + 20
    # A palette image: a quarter of the bytes of RGB to encode (the PNG encoder took 0.6 s per
    # figure in RGB). Text is drawn without anti-aliasing, which a palette image cannot blend.
    img = Image.new("P", (WIDTH, height), _WHITE)
    img.putpalette(b"".join(bytes.fromhex(c.lstrip("#"))
                            for c in ["#FFFFFF", _GRID, _WARM, _FRAME, _TEXT, *(c for c, _ in states.values())]))
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"
    big, mid, small = (ImageFont.load_default(size=s) for s in (20, 14, 12))
    draw.text((12, 14), title, fill=_INK, font=big)
    x = _LEFT
    for k, (_, label) in enumerate(states.values(), start=_FIRST_STATE):
        draw.line([(x, 63), (x + 28, 63)], fill=k, width=3)
        label = label.replace("→", "to")  # the built-in font has no arrow
        draw.text((x + 34, 56), label, fill=_INK, font=mid)
        x += 34 + int(mid.getlength(label)) + 22
    draw.text((_LEFT, 82), note, fill=_INK, font=small)
    pw = (WIDTH - _LEFT - _RIGHT - _GAP * (cols - 1)) // cols
    index = {state: k for k, state in enumerate(states, start=_FIRST_STATE)}
    for i, p in enumerate(panels):
        left = _LEFT + (i % cols) * (pw + _GAP)
        y0 = top + (i // cols) * (_TITLE_H + _PLOT_H + _AXIS_H) + _TITLE_H
        _draw_panel(img, draw, p, left, y0, pw, _PLOT_H, index, mid, small)
    img.save(path, "PNG", compress_level=1)  # a larger file, faster to write


def _draw_panel(img: Image.Image, draw: ImageDraw.ImageDraw, p: Panel, left: int, top: int, w: int, h: int,
                index: dict[str, int], mid: ImageFont.FreeTypeFont | ImageFont.ImageFont,
                small: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> None:
    draw.text((left + w // 2, top - 4), p.title, fill=_INK, font=mid, anchor="mb")
    band = h / max(p.rows, 1)
    scale = w / (p.span_s if p.span_s > 0 else 1.0)
    # The panel is a palette raster built row by row: one byte row per request, a slice copy per span
    # (cheaper than an ImageDraw call per span: a 1M-record run has 120,000), the grid baked underneath.
    grid, warm = _GRID_I, _WARM_I
    background = bytearray(w)
    x_ticks = _ticks(p.span_s if p.span_s > 0 else 1.0, 6)
    for t in x_ticks:
        background[min(w - 1, int(t * scale))] = grid
    warm_background = bytes(warm if b == 0 else b for b in background)
    pixel_rows: list[bytes | bytearray] = []
    warm_rows = math.ceil(p.warm * band)
    for y in range(h):
        pixel_rows.append(warm_background if y < warm_rows else bytes(background))
    y_ticks = [r for r in _ticks(max(p.rows - 1, 1), 5) if int((r + 0.5) * band) < h]
    for r in y_ticks:
        pixel_rows[int((r + 0.5) * band)] = bytes([grid]) * w
    rows: list[bytearray] = [bytearray(warm_background if r < p.warm else background) for r in range(p.rows)]
    painted = [False] * p.rows
    for state, k in index.items():
        xs, ys = p.segments.get(state, ([], []))
        fill = memoryview(bytes((k,)) * w)
        for j in range(0, len(xs), 3):
            a, b, row = xs[j], xs[j + 1], ys[j]
            if a is None or b is None or row is None:
                continue
            # Every span is at least one pixel wide: a short request or a lone failure stays visible.
            x0, x1 = int(a * scale), int(b * scale) + 1
            x1 = min(x1, w)
            if x1 > x0:
                rows[int(row)][x0:x1] = fill[:x1 - x0]
                painted[int(row)] = True
    thick = 3 if band >= 4 else max(1, math.floor(band))
    for r in range(p.rows):
        if painted[r]:
            y_top = math.floor((r + 0.5) * band - thick / 2)
            for y in range(max(0, y_top), min(h, y_top + thick)):
                pixel_rows[y] = rows[r]
    from PIL import Image as PILImage

    img.paste(PILImage.frombytes("P", (w, h), b"".join(pixel_rows)), (left, top))
    draw.rectangle([left, top, left + w - 1, top + h - 1], outline=_FRAME_I)
    for t in x_ticks:
        _label(img, f"{t:g}", small, left + min(w - 1, int(t * scale)), top + h + 4, "mt")
    for r in y_ticks:
        _label(img, f"{r:g}", small, left - 5, top + int((r + 0.5) * band), "rm")


_LABELS: dict[tuple[str, int, str], tuple[Image.Image, int, int]] = {}


def _label(img: Image.Image, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, x: int, y: int,
           anchor: str) -> None:
    """A tick label: the same few numbers recur in every panel, so each is rendered once (a mask)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw as PILDraw

    key = (text, int(getattr(font, "size", 0)), anchor)
    if key not in _LABELS:
        x0, y0, x1, y1 = (int(v) for v in font.getbbox(text, anchor=anchor))
        mask = PILImage.new("1", (max(1, x1 - x0), max(1, y1 - y0)), 0)
        mask_draw = PILDraw.Draw(mask)
        mask_draw.fontmode = "1"
        mask_draw.text((-x0, -y0), text, fill=1, font=font, anchor=anchor)
        _LABELS[key] = (mask, x0, y0)
    mask, dx, dy = _LABELS[key]
    img.paste(_INK, (x + dx, y + dy, x + dx + mask.width, y + dy + mask.height), mask)


def _ticks(span: float, most: int) -> list[float]:
    """Round tick values from 0 to ``span``, at most ``most`` of them."""
    raw = span / most
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [k * step for k in range(int(span / step) + 1)]
