"""Draw the report's Pillow PNGs (`chart_png`, `timeline_png`) in a child process, beside the report's own work.

Drawing the PNGs of a 1M-record report takes 0.5-0.7 s of one core (most of it the four request
timelines); the report meanwhile builds its HTML on the other. The child imports only Pillow and the
drawing modules; the jobs (a drawing function with its data, and a path) travel pickled in a file of
the child's temporary directory, one batch per line on its stdin.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Self

from fmbench.childproc import JobChild

#: A PNG job: a function that writes the PNG to the path it is given, and that path.
Job = tuple[Callable[[Path], None], Path]


class PngWorker:
    """A child process that draws the PNG jobs it is sent; `wait` returns when all are written.

    Use as a context manager, or call `close`.
    """

    def __init__(self) -> None:
        self._child = JobChild("fmbench.report.png_worker", [], "fmbench-draw-")
        self._batches = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, jobs: list[Job]) -> None:
        """Hand ``jobs`` to the child; it draws them while the caller goes on.

        Raises:
            RuntimeError: the worker was already waited for or closed.
        """
        child = self._child
        if child.proc is None or child.proc.stdin is None:
            raise RuntimeError("PNG worker already used or closed")
        if not jobs:
            return
        self._batches += 1
        batch = child.tmp / f"{self._batches}.pickle"
        batch.write_bytes(pickle.dumps(jobs, protocol=pickle.HIGHEST_PROTOCOL))
        child.send(str(batch))

    def wait(self, timeout_s: float = 120.0) -> None:
        """Wait until every submitted PNG is written.

        Raises:
            TimeoutError: the child did not finish within ``timeout_s`` (it was killed).
            RuntimeError: a drawing failed; the message carries the child's last error line.
        """
        child = self._child
        if child.proc is None:
            raise RuntimeError("PNG worker already used or closed")
        # Waiting closes the child's input: it exits once it has drawn everything.
        child.wait(timeout_s, f"drawing the PNGs did not finish within {timeout_s:g} s")

    def close(self) -> None:
        """Stop the child if it still runs; remove the job files."""
        self._child.close()


def _serve() -> None:
    for line in sys.stdin:
        if line.strip():
            jobs: list[Job] = pickle.loads(Path(line.strip()).read_bytes())
            for draw, path in jobs:
                draw(path)


if __name__ == "__main__":
    try:
        _serve()
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        print(f"{exc.__class__.__name__}: {first}", file=sys.stderr)
        sys.exit(1)
