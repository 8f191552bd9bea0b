"""Static PNG export of plotly figures in a child process with a deadline (the report's figures
that Pillow does not draw, and the regression check's trend plots).

kaleido drives a headless Chromium; when that browser stalls, kaleido's synchronous API waits
forever. Running the export in its own process group lets the report give up after a bounded
time, kill the browser with it, and still be written (saying the PNGs are missing and why).

Starting the browser takes about as long as rendering the figures (1.5 s each on the 2-core
development VM), so `PngExporter` can be started before the report's data is even loaded: the
child starts Chromium while the parent computes metrics and builds figures, then renders the jobs
it is sent. The figures travel as plotly JSON and go to kaleido as plain dicts (no second
validation by plotly in the child). One tab renders them one after another: a second tab
(``kaleido.Kaleido(n=2)``) took the figures of a 200-shard report from 34 s to 29 s on the 2-core
VM, but made the default run's report (10 report and 4 trend PNGs) slower, 12.1 s against 10.0 s
(medians of 3, load 6-9): its start costs more than the overlap gains on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

import orjson

from fmbench.childproc import JobChild
from fmbench.settings import number

if TYPE_CHECKING:
    import plotly.graph_objects as go

#: Seconds the whole export may take before it is abandoned (``FMBENCH_PNG_TIMEOUT_S`` overrides).
EXPORT_TIMEOUT_S = 180.0
_CHROMIUM = "/usr/bin/chromium"


def export_timeout_s() -> float:
    """The export's deadline: ``FMBENCH_PNG_TIMEOUT_S`` when set (read at each export), else 180 s."""
    return number("FMBENCH_PNG_TIMEOUT_S", EXPORT_TIMEOUT_S)


class PngExporter:
    """A child process that starts a headless browser at once and renders the figures sent later.

    Use as a context manager, or call `close`; `export` may be called once.
    """

    def __init__(self) -> None:
        if not os.environ.get("BROWSER_PATH") and Path(_CHROMIUM).exists():
            os.environ["BROWSER_PATH"] = _CHROMIUM  # kaleido/choreographer look for Chrome here first
        # choreographer starts the browser in a session of its own: killed as a descendant.
        self._child = JobChild("fmbench.png", ["--serve"], "fmbench-png-", descendants=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def export(self, figures: list[go.Figure | dict[str, Any]], paths: list[Path], sizes: list[tuple[int, int]],
               timeout_s: float | None = None) -> None:
        """Write each figure to its path as PNG (`submit`, then `wait`)."""
        self.submit(figures, paths, sizes)
        self.wait(timeout_s)

    def submit(self, figures: list[go.Figure | dict[str, Any]], paths: list[Path],
               sizes: list[tuple[int, int]]) -> None:
        """Hand the figures (plotly figures or plain plotly dicts) to the child; it renders them while
        the caller goes on."""
        import plotly.graph_objects as go  # here, not at import: the exporter starts before plotly is loaded

        child = self._child
        if child.proc is None or child.proc.stdin is None:
            raise RuntimeError("PNG exporter already used or closed")
        jobs = []
        for i, (fig, path, (width, height)) in enumerate(zip(figures, paths, sizes, strict=True)):
            spec = child.tmp / f"{i}.json"
            if isinstance(fig, go.Figure):
                spec.write_text(fig.to_json())
            else:
                spec.write_bytes(orjson.dumps(fig))
            jobs.append({"figure": str(spec), "path": str(path), "width": width, "height": height})
        manifest = child.tmp / "jobs.json"
        manifest.write_text(json.dumps(jobs))
        child.send(str(manifest), last=True)

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait until the submitted figures are written (by default within `export_timeout_s`).

        Raises:
            TimeoutError: the export did not finish within ``timeout_s`` (the browser was killed).
            RuntimeError: the export failed (or the browser did not start); the message carries
                the child's last error line.
        """
        if self._child.proc is None:
            raise RuntimeError("PNG exporter already used or closed")
        timeout_s = export_timeout_s() if timeout_s is None else timeout_s
        self._child.wait(timeout_s, f"PNG export did not finish within {timeout_s:g} s (browser stalled)")

    def close(self) -> None:
        """Stop the child (and its browser) if it is still running; remove the job files."""
        self._child.close()


def export_pngs(figures: list[go.Figure], paths: list[Path], sizes: list[tuple[int, int]],
                timeout_s: float | None = None) -> None:
    """Start a browser, write each figure to its path as PNG, stop it (see `PngExporter.export`)."""
    with PngExporter() as exporter:
        exporter.export(figures, paths, sizes, timeout_s)


#: Chromium features the export does without: headless Chromium 156 loads two omnibox popups
#: (WebUI pages, a renderer of their own) at start, 0.7-0.9 s of CPU on the 2-core VM.
_CHROMIUM_FLAGS = ["--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup"]


def _with_chromium_flags() -> None:
    """Add `_CHROMIUM_FLAGS` to the command line choreographer starts Chromium with (it takes no
    flags of its own); Chromium ignores names it does not know, so older versions start as before."""
    from choreographer.browsers import chromium

    get_cli = chromium.Chromium.get_cli
    if getattr(get_cli, "_fmbench", False):
        return

    def with_flags(self: Any) -> list[str]:
        return [*get_cli(self), *_CHROMIUM_FLAGS]

    with_flags._fmbench = True  # type: ignore[attr-defined]
    chromium.Chromium.get_cli = with_flags  # type: ignore[method-assign]


def _keep_page(k: Any) -> None:
    """Render every figure in the page kaleido loaded once, instead of reloading it after each.

    kaleido reloads its page after every figure, so Chromium parses plotly.js again each time:
    0.3-0.5 s of CPU per figure on the 2-core VM, about half of what the eight figures of a
    200-shard report cost. plotly.js draws each figure into a fresh element it removes afterwards,
    so the PNGs are byte-identical either way (``tests/report/test_png.py``). When a kaleido
    version lacks the hook, its reloads are kept.
    """
    tabs = getattr(k, "tabs_ready", None)
    if tabs is None or not hasattr(k, "_return_kaleido_tab"):
        return

    async def put_back(tab: Any) -> None:
        await tabs.put(tab)

    setattr(k, "_return_kaleido_tab", put_back)  # noqa: B010 - an instance attribute over kaleido's method


async def _serve(stdin: IO[str]) -> None:
    import asyncio

    import kaleido

    _with_chromium_flags()
    # No MathJax: the HTML report has none either (``include_mathjax=False``), and kaleido would
    # otherwise fetch it from a CDN each time its page loads.
    async with kaleido.Kaleido(mathjax=False) as k:  # starts the browser now, before the jobs arrive
        _keep_page(k)
        line = await asyncio.to_thread(stdin.readline)
        if not line.strip():
            return  # the parent had nothing to export
        jobs = json.loads(Path(line.strip()).read_text())
        if not jobs:
            return
        errors = await k.write_fig_from_object([
            {"fig": json.loads(Path(j["figure"]).read_text()), "path": j["path"],
             "opts": {"format": "png", "width": j["width"], "height": j["height"]}}
            for j in jobs
        ])
        if errors:  # kaleido returns a figure's failure instead of raising it
            raise errors[0]


if __name__ == "__main__":
    import asyncio

    try:
        asyncio.run(_serve(sys.stdin))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        print(f"{exc.__class__.__name__}: {first}", file=sys.stderr)
        sys.exit(1)
