"""PNG export runs in a child process with a deadline: a stalled browser cannot hang a report."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import psutil
import pytest

from fmbench.png import export_pngs


def test_export_writes_pngs(tmp_path: Path) -> None:
    out = tmp_path / "a.png"
    export_pngs([go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))], [out], [(300, 200)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_past_its_deadline_is_abandoned_and_leaves_no_process(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(TimeoutError, match="did not finish within"):
        export_pngs([go.Figure()], [tmp_path / "b.png"], [(300, 200)], timeout_s=0.3)
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before
    assert not (tmp_path / "b.png").exists()


def test_an_exporter_started_early_renders_what_it_is_sent_later(tmp_path: Path) -> None:
    from fmbench.png import PngExporter

    with PngExporter() as exporter:  # the browser starts now
        figs = [go.Figure(go.Bar(x=["a", "b"], y=[1, 2])), go.Figure(go.Scatter(x=[1, 2], y=[2, 1]))]
        outs = [tmp_path / "x.png", tmp_path / "y.png"]
        exporter.submit(figs, outs, [(300, 200), (400, 300)])
        exporter.wait(timeout_s=120)
    assert all(o.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for o in outs)


def test_an_unused_exporter_leaves_no_process() -> None:
    from fmbench.png import PngExporter

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with PngExporter():
        pass
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_figures_drawn_one_after_another_in_one_page_match_a_fresh_page(tmp_path: Path) -> None:
    # The child renders every figure in the page it loaded once (no reload between figures): what
    # an earlier figure leaves behind must not change the next one's pixels.
    from fmbench.png import PngExporter

    first = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]), layout={"title": "first", "yaxis": {"type": "log"}})
    second = go.Figure(go.Scatter(x=[1, 2, 3], y=[2, 1, 3], mode="lines+markers"), layout={"title": "second"})
    with PngExporter() as both, PngExporter() as alone:  # two browsers start side by side
        both.submit([first, second], [tmp_path / "1.png", tmp_path / "2.png"], [(300, 200), (400, 300)])
        alone.submit([second], [tmp_path / "fresh.png"], [(400, 300)])
        both.wait(timeout_s=120)
        alone.wait(timeout_s=120)
    assert (tmp_path / "2.png").read_bytes() == (tmp_path / "fresh.png").read_bytes()
    assert (tmp_path / "1.png").read_bytes() != (tmp_path / "2.png").read_bytes()


def test_the_browser_starts_without_the_omnibox_popups() -> None:
    import time

    from fmbench.png import PngExporter

    with PngExporter() as exporter:
        assert exporter._child.proc is not None
        child = psutil.Process(exporter._child.proc.pid)
        deadline = time.monotonic() + 60
        cmdlines: list[list[str]] = []
        while time.monotonic() < deadline and not cmdlines:
            cmdlines = [c for p in child.children(recursive=True) if "chrom" in " ".join(c := _cmdline(p))]
            time.sleep(0.05)
    assert cmdlines, "no browser process started"
    assert any("--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup" in c for c in cmdlines)


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []
