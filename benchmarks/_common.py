"""Helpers shared by the benchmark scripts: percentiles, load average, result files."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (nan when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages (the machine is shared: every result records them)."""
    return [round(x, 2) for x in os.getloadavg()]


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the common --quick and --out flags."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="A smoke run of a minute or less.")
    p.add_argument("--out", type=Path, default=RESULTS, help="Directory for the JSON result.")
    return p


def write_result(out: Path, name: str, data: dict[str, Any]) -> Path:
    """Write ``name.json`` with host facts around ``data``; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        **data,
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def ms(x: float) -> float:
    """Seconds to milliseconds, rounded for the tables."""
    return round(x * 1e3, 3) if math.isfinite(x) else float("nan")


def pin(pid: int, cpus: set[int]) -> bool:
    """Keep every thread of process ``pid`` on ``cpus`` (Linux); False where that cannot be done.

    `os.sched_setaffinity` on a pid moves one thread only; threads started later inherit it from
    the thread that starts them, so the ones already running are moved one by one.
    """
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    try:
        for tid in tids:
            os.sched_setaffinity(tid, cpus)
    except OSError:
        return False
    return True
