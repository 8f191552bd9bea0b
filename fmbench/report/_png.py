"""Static PNG export of plotly figures in a child process with a deadline.

kaleido drives a headless Chromium; when that browser stalls, kaleido's synchronous API waits
forever. Running the export in its own process group lets the report give up after a bounded
time, kill the browser with it, and still be written (saying the PNGs are missing and why).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import plotly.graph_objects as go

#: Seconds the whole export may take before it is abandoned.
EXPORT_TIMEOUT_S = float(os.environ.get("FMBENCH_PNG_TIMEOUT_S", "180"))


def export_pngs(figures: list[go.Figure], paths: list[Path], sizes: list[tuple[int, int]],
                timeout_s: float = EXPORT_TIMEOUT_S) -> None:
    """Write each figure to its path as PNG.

    Raises:
        TimeoutError: the export did not finish within ``timeout_s`` (the browser was killed).
        RuntimeError: the export failed; the message carries the child's last error line.
    """
    with tempfile.TemporaryDirectory(prefix="fmbench-png-") as tmp:
        jobs = []
        for i, (fig, path, (width, height)) in enumerate(zip(figures, paths, sizes)):
            spec = Path(tmp, f"{i}.json")
            spec.write_text(fig.to_json())
            jobs.append({"figure": str(spec), "path": str(path), "width": width, "height": height})
        manifest = Path(tmp, "jobs.json")
        manifest.write_text(json.dumps(jobs))
        proc = subprocess.Popen([sys.executable, "-m", "fmbench.report._png", str(manifest)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimeoutError(f"PNG export did not finish within {timeout_s:g} s (browser stalled)") from None
        finally:
            if proc.poll() is None:  # interrupted while waiting: take the browser down too
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:
            last = [ln for ln in stderr.strip().splitlines() if ln.strip()][-1:] or [f"exit {proc.returncode}"]
            raise RuntimeError(last[0][:300])


def _main(manifest: str) -> None:
    import plotly.io as pio

    jobs = json.loads(Path(manifest).read_text())
    figures = [pio.from_json(Path(j["figure"]).read_text()) for j in jobs]
    pio.write_images(figures, [j["path"] for j in jobs], format="png",
                     width=[j["width"] for j in jobs], height=[j["height"] for j in jobs])


if __name__ == "__main__":
    try:
        _main(sys.argv[1])
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        print(f"{exc.__class__.__name__}: {first}", file=sys.stderr)
        sys.exit(1)
