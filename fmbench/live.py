"""Showing a run's progress (`fmbench.progress`): a rich live table on a terminal, one plain line
every few seconds elsewhere (CI, Prefect worker logs, a pipe).

`show_progress` wraps a run; on a terminal the table redraws in place and, when the run ends, the
final table is printed once, so the last screen shows how every shard ended.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from fmbench import progress
from fmbench.interrupts import say
from fmbench.progress import Snapshot

#: Without a terminal, one summary line this often.
PLAIN_EVERY_S = 10.0
#: The live table redraws this often.
LIVE_REFRESH_PER_S = 2.0
#: Beyond this many shards the live table lists only the running and failed ones (the final table all).
LIVE_MAX_ROWS = 30

_STATE_STYLE = {"pending": "dim", "running": "bold cyan", "done": "green", "cached": "green", "failed": "bold red"}


def fmt_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def summary_line(snap: Snapshot) -> str:
    """One line about the whole run: shards finished, running, failed, elapsed and ETA."""
    running = [s for s in snap.shards if s.state == "running"]
    failed = sum(s.state == "failed" for s in snap.shards)
    parts = [f"{snap.finished}/{len(snap.shards)} shards finished"]
    if running:
        parts.append(", ".join(f"{s.shard_id} {s.done}/{s.total}" for s in running) + " running")
    if failed:
        parts.append(f"{failed} failed")
    parts.append(f"elapsed {fmt_duration(snap.now - snap.started)}")
    if snap.finished < len(snap.shards):
        parts.append(f"ETA {fmt_duration(snap.eta_s())}")
    return "progress: " + "; ".join(parts)


def deploy_lines(snap: Snapshot) -> list[str]:
    """One line per deploy still waiting: experiment, provider, its status and time waited."""
    return [f"deploy {d.experiment} ({d.provider}): {d.status}, waiting {fmt_duration(d.elapsed_s(snap.now))}"
            for d in snap.deploys if d.ended is None]


def render_table(snap: Snapshot, all_rows: bool = True) -> Any:
    """The rich renderable of a snapshot: a header line, waiting deploys, and a table of shards."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(expand=False, header_style="bold")
    for name, justify in (("shard", "left"), ("state", "left"), ("requests", "right"), ("errors", "right"),
                          ("req/s", "right"), ("TTFT p50", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    rows = snap.shards
    if not all_rows and len(rows) > LIVE_MAX_ROWS:
        rows = [s for s in rows if s.state in ("running", "failed")][:LIVE_MAX_ROWS]
    for s in rows:
        rate = s.rate
        table.add_row(s.shard_id, Text(s.state, style=_STATE_STYLE.get(s.state, "")),
                      f"{s.done}/{s.total}", str(s.errors), f"{rate:.1f}" if rate is not None else "",
                      f"{s.ttft_p50_s * 1000:.0f} ms" if s.ttft_p50_s is not None else "")
    header = f"run {snap.run_id or '(starting)'}: " + summary_line(snap).removeprefix("progress: ")
    parts: list[Any] = [Text(header, style="bold")]
    parts += [Text(line, style="yellow") for line in deploy_lines(snap)]
    if snap.shards:
        parts.append(table)
    return Group(*parts)


class _NoProgressLines(logging.Filter):
    # The live table shows what the per-shard "n/m requests done" lines say.
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "progress", False)


@contextmanager
def show_progress(stream: IO[str] | None = None, live: bool | None = None,
                  logger: str = "fmbench") -> Iterator[progress.RunProgress]:
    """Show the progress of what runs in this process while the block runs.

    Args:
        stream: where to draw (default stderr).
        live: a live table (default: when ``stream`` is a terminal), else plain periodic lines.
        logger: the logger whose stream handlers are routed above the live table.
    """
    stream = stream or sys.stderr
    if live is None:
        live = bool(getattr(stream, "isatty", lambda: False)())
    with progress.watch() as tracker:
        if live:
            with _live(tracker, stream, logging.getLogger(logger)):
                yield tracker
        else:
            with _plain(tracker, stream):
                yield tracker


@contextmanager
def _live(tracker: progress.RunProgress, stream: IO[str], logger: logging.Logger) -> Iterator[None]:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=stream, force_terminal=True)
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    quiet = _NoProgressLines()

    class _Above(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                console.print(self.format(record), markup=False, highlight=False)
            except Exception:  # noqa: BLE001 - as logging handlers do: a terminal gone (EIO) must not fail the code that logs
                self.handleError(record)

    above = _Above()
    if handlers:
        above.setFormatter(handlers[0].formatter)
    above.addFilter(quiet)
    live = Live(console=console, refresh_per_second=LIVE_REFRESH_PER_S, transient=True,
                get_renderable=lambda: render_table(tracker.snapshot(), all_rows=False))
    live.start()
    for h in handlers:
        logger.removeHandler(h)
    logger.addHandler(above)
    try:
        yield
    finally:
        logger.removeHandler(above)
        for h in handlers:
            logger.addHandler(h)
        # The table's last drawing: on a terminal that hung up it fails (EIO), which must neither
        # replace the exception the block ends with nor turn a finished run into an error.
        with contextlib.suppress(OSError):
            live.stop()
    with contextlib.suppress(OSError):
        console.print(render_table(tracker.snapshot(), all_rows=True))


@contextmanager
def _plain(tracker: progress.RunProgress, stream: IO[str]) -> Iterator[None]:
    stop = threading.Event()

    def lines() -> None:
        while not stop.wait(PLAIN_EVERY_S):
            snap = tracker.snapshot()
            if not snap.shards and not snap.deploys:
                continue
            for line in [summary_line(snap), *deploy_lines(snap)]:
                say(line, stream)  # a reader gone (a hung-up terminal, a closed pipe) costs no run

    thread = threading.Thread(target=lines, name="fmbench-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
