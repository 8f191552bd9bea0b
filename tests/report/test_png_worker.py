"""The child that draws the report's Pillow PNGs (`fmbench.report.png_worker`): jobs in batches, failures as one line."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from PIL import Image

from fmbench.report.chart_png import Axis, Chart, Line, Panel, draw_chart
from fmbench.report.png_worker import PngWorker


def _job(title: str) -> functools.partial[None]:
    panel = Panel("p", Axis("x"), Axis("y", from_zero=True), marks=[Line("#0072B2", [1.0, 2.0], [1.0, 3.0])])
    return functools.partial(draw_chart, Chart(title, [panel], (600, 400)))


def test_worker_draws_every_batch_it_is_sent(tmp_path: Path) -> None:
    with PngWorker() as worker:
        worker.submit([(_job("a"), tmp_path / "a.png")])
        worker.submit([(_job("b"), tmp_path / "b.png"), (_job("c"), tmp_path / "c.png")])
        worker.wait(60)
    for name in "abc":
        with Image.open(tmp_path / f"{name}.png") as img:
            assert img.size == (600, 400)


def test_a_failed_drawing_is_reported_as_one_line(tmp_path: Path) -> None:
    with PngWorker() as worker:
        worker.submit([(_job("a"), tmp_path / "missing" / "a.png")])
        with pytest.raises(RuntimeError, match=r"^FileNotFoundError: .*missing/a\.png"):
            worker.wait(60)
