"""Self-calibration: how much load this host's client can offer before it, not the endpoint, limits.

Before the shards of a run, `calibrate_host` drives the real engine and `OpenAIClient` for a
couple of seconds against a zero-latency server in another process (`fmbench.simulator.zeroserver`)
and measures: the round trip at concurrency 1 (an upper bound on what the client adds to each
request), and the most requests/s and streamed chunks/s one client process sustains, with the
CPU each costs. From those, `Calibration.load_fraction` says how close a shard ran to the
ceiling (shards above `CEILING_WARN` are flagged "results may reflect the client"), and
`plan_processes` spreads a shard whose offered load exceeds one process over several.

The result is stored as ``calibration.json`` in the run directory (`save_calibration`) and
summarised in the manifest and the report. `calibrate_run` reuses the host's last calibration
(kept in fmbench's cache directory) while the host, its CPU count, the versions of Python, aiohttp
and the client's code are unchanged, it is less than `CACHE_MAX_AGE_S` old, and the load average
per CPU is within `CACHE_LOAD_TOLERANCE` of the one it was measured at (relative to the load once
it exceeds one runnable task per CPU); the summary then says it was reused. ``FMBENCH_RECALIBRATE=1`` always measures.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import os
import platform
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fmbench import storage
from fmbench.errors import FMBenchError, StorageError
from fmbench.settings import number

CEILING_WARN = 0.7  # a shard above this fraction of the client's ceiling may measure the client
PLAN_TARGET = 0.5  # shards are spread so each process runs at most this fraction of its ceiling
STREAM_CHUNKS = 256  # chunks per streamed answer in the chunk-rate phase
CACHE_MAX_AGE_S = 24 * 3600.0  # a cached calibration older than this is measured again
#: ... and so is one whose 1-min load average per CPU differed by more than this, or, on a machine
#: with more than one runnable task per CPU, by more than this fraction of the larger load per CPU
#: (FMBENCH_CALIBRATION_LOAD_TOLERANCE overrides it).
CACHE_LOAD_TOLERANCE = 0.25

__all__ = [
    "CEILING_WARN",
    "Calibration",
    "cached_calibration",
    "calibrate_host",
    "calibrate_run",
    "client_versions",
    "expected_shape",
    "load_calibration",
    "plan_processes",
    "save_calibration",
]


class Calibration(BaseModel):
    """What one client process on this host sustains, measured against a zero-latency server."""

    model_config = ConfigDict(extra="forbid")

    created_at: str = Field(description="UTC time of the measurement.")
    host: str = Field(description="Host name.")
    cpu_count: int = Field(description="Logical CPUs of the host.")
    load_avg: list[float] = Field(description="1, 5 and 15 minute load averages before calibrating.")
    python: str = Field(description="Python version.")
    duration_s: float = Field(description="Wall time of the calibration, seconds.")
    rtt_p50_ms: float = Field(
        description="Median round trip at concurrency 1 to a zero-latency server (client + loopback + server): "
        "an upper bound on what the client adds to each request's latency."
    )
    rtt_p99_ms: float = Field(description="p99 of the same round trip.")
    max_request_rate: float = Field(description="Non-streamed requests/s one client process sustains.")
    max_stream_rate: float = Field(description=f"Streamed requests/s ({STREAM_CHUNKS} chunks each) one process sustains.")
    max_chunk_rate: float = Field(description="Streamed chunks/s one client process sustains.")
    request_cost_s: float = Field(description="Seconds of one process per request (excluding its chunks).")
    chunk_cost_s: float = Field(description="Seconds of one process per streamed chunk.")
    cpu_per_request_ms: float = Field(description="Client CPU per non-streamed request, ms.")
    client_cpu_util: float = Field(
        description="Client CPU / wall time during the ceiling phases; well below 1 means something other "
        "than the client (the machine's other load) limited them, so the ceiling is underestimated."
    )
    versions: dict[str, str] = Field(
        default_factory=dict,
        description="Versions the measurement depends on (Python, aiohttp, a hash of fmbench's client code).",
    )
    reused: str | None = Field(
        default=None,
        description="Set when this calibration was not measured for the run but reused from the host's cache: "
        "why it still applies.",
    )

    def cost_s(self, chunks_per_request: float) -> float:
        """Seconds of one client process per request carrying ``chunks_per_request`` streamed chunks."""
        return self.request_cost_s + max(0.0, chunks_per_request) * self.chunk_cost_s

    def load_fraction(self, rate: float, chunks_per_request: float, processes: int = 1) -> float:
        """Fraction of the client's ceiling used by ``rate`` requests/s spread over ``processes``."""
        return rate * self.cost_s(chunks_per_request) / max(1, processes)

    def summary(self) -> str:
        """One line for logs and the report."""
        line = (
            f"one client process sustains {self.max_request_rate:,.0f} req/s (non-streamed) and "
            f"{self.max_chunk_rate:,.0f} streamed chunks/s; round trip to a zero-latency server p50 "
            f"{self.rtt_p50_ms:.2f} ms, p99 {self.rtt_p99_ms:.2f} ms (upper bound of client overhead); "
            f"{self.cpu_count} CPUs, load average {self.load_avg[0]:.2f}"
        )
        return f"{line}; {self.reused}" if self.reused else line


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _run(url: str, stream: bool, concurrency: int, requests: int, workdir: Path, tag: str) -> tuple[Any, Any]:
    """One closed-loop shard with the real engine; returns (ShardResult, latencies list)."""
    import pyarrow.parquet as pq

    from fmbench.config import InferenceConfig
    from fmbench.endpoints.openai import OpenAIClient
    from fmbench.loadgen import ShardSpec, run_shard
    from fmbench.protocol import Prompt

    client = OpenAIClient(url, "m", api="chat", inference=InferenceConfig(stream=stream, max_tokens=16))
    spec = ShardSpec(shard_id=f"calibration-{tag}", experiment="calibration", dataset="calibration",
                     bucket="0-1", bucket_min=0, bucket_max=1, concurrency=concurrency,
                     requests=requests, warmup=min(concurrency, 20))
    prompts = [Prompt(f"p{i}", f"calibration prompt {i} " * 8, 40) for i in range(16)]
    path = workdir / f"{tag}.parquet"
    result = run_shard(client, prompts, spec, path, lambda text: len(text.split()))
    table = pq.read_table(path, columns=["warmup", "ok", "latency_s"]).to_pydict()
    lat = [x for w, ok, x in zip(table["warmup"], table["ok"], table["latency_s"], strict=True) if ok and not w]
    path.unlink(missing_ok=True)
    if result.errors:
        raise FMBenchError(f"calibration: {result.errors} of {result.requests} requests to the zero-latency "
                           "server failed")
    return result, lat


def _sized(url: str, stream: bool, concurrency: int, seconds: float, workdir: Path, tag: str) -> Any:
    """A short probe, then a run sized to last about ``seconds``."""
    probe, _ = _run(url, stream, concurrency, 100, workdir, tag + "-probe")
    rate = probe.requests / probe.duration_s if probe.duration_s > 0 else 1000.0
    n = int(max(100, min(rate * seconds, 50_000)))
    result, _ = _run(url, stream, concurrency, n, workdir, tag)
    return result


def client_versions() -> dict[str, str]:
    """What a calibration depends on besides the host: Python, aiohttp and fmbench's client code."""
    from importlib.metadata import version

    root = Path(__file__).parent
    code = hashlib.sha256()
    for path in sorted([*root.glob("loadgen/*.py"), root / "endpoints" / "openai.py", root / "protocol.py",
                        root / "simulator" / "zeroserver.py", Path(__file__)]):
        code.update(path.read_bytes())
    return {"python": platform.python_version(), "aiohttp": version("aiohttp"), "client_code": code.hexdigest()[:16]}


def _cache_file() -> Path:
    from fmbench.cachedir import cache_dir

    return cache_dir() / "calibration.json"


def _load_tolerance() -> float:
    return number("FMBENCH_CALIBRATION_LOAD_TOLERANCE", CACHE_LOAD_TOLERANCE)


def _similar_load(then: float, now: float, cpus: int) -> bool:
    """Whether the client gets about the same share of a CPU now as when it was calibrated.

    Up to one runnable task per CPU, the tolerance is absolute (per CPU); above it, a process gets
    about ``cpus / load`` of a CPU, so the same tolerance applies to the relative change: 9.4 -> 8.0
    on 2 CPUs (15 %) reuses, 6.0 -> 3.6 (40 %) or 0.2 -> 1.0 measures again.
    """
    busiest = max(then, now) / cpus
    return abs(now - then) / cpus <= _load_tolerance() * max(1.0, busiest)


def cached_calibration(load_now: float | None = None) -> Calibration | None:
    """The host's cached calibration when it still applies (see the module docstring), else None.

    The returned copy has ``reused`` set to a sentence saying when it was measured and why it applies.
    """
    try:
        cal = Calibration.model_validate_json(_cache_file().read_text())
    except (OSError, ValueError):
        return None
    if load_now is None:
        load_now = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cpus = os.cpu_count() or 1
    try:
        age = time.time() - calendar.timegm(time.strptime(cal.created_at, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None
    if (cal.host != socket.gethostname() or cal.cpu_count != cpus or cal.versions != client_versions()
            or not 0 <= age <= CACHE_MAX_AGE_S or not _similar_load(cal.load_avg[0], load_now, cpus)):
        return None
    return cal.model_copy(update={"reused": (
        f"reused from this host's calibration of {cal.created_at} (same CPUs and versions, load average then "
        f"{cal.load_avg[0]:.2f}, now {load_now:.2f})")})


def _store_cache(cal: Calibration) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(cal.model_dump_json(indent=2))
        tmp.replace(path)
    except OSError:
        pass  # no cache: the next run measures again


def calibrate_host(duration_s: float = 2.0, concurrency: int = 32) -> Calibration:
    """Measure this host's client overhead and ceiling against a zero-latency server.

    Args:
        duration_s: rough wall time of the measurement (plus ~1 s to start the server process).
        concurrency: requests in flight in the ceiling phases (enough to keep one process busy).

    Returns:
        The calibration.

    Raises:
        FMBenchError: the zero-latency server failed to start or answer.
    """
    from fmbench.simulator.zeroserver import ZeroServer

    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else [0.0, 0.0, 0.0]
    t0 = time.monotonic()
    with ZeroServer() as srv, tempfile.TemporaryDirectory(prefix="fmbench-calibration-") as tmp:
        workdir = Path(tmp)
        n_rtt = int(max(100, min(400, 200 * duration_s / 2.5)))
        _, lat = _run(srv.base_url(None), False, 1, n_rtt, workdir, "rtt")
        json_res = _sized(srv.base_url(None), False, concurrency, 0.35 * duration_s, workdir, "requests")
        sse_res = _sized(srv.base_url(STREAM_CHUNKS), True, concurrency, 0.35 * duration_s, workdir, "chunks")
    req_rate = json_res.requests / json_res.duration_s
    stream_rate = sse_res.requests / sse_res.duration_s
    request_cost = 1.0 / req_rate
    chunk_cost = max(0.0, (1.0 / stream_rate - request_cost) / STREAM_CHUNKS)
    busy = json_res.duration_s + sse_res.duration_s
    util = (json_res.client_cpu_s + sse_res.client_cpu_s) / busy if busy > 0 else 0.0
    return Calibration(
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        host=socket.gethostname(),
        cpu_count=os.cpu_count() or 1,
        load_avg=[round(x, 2) for x in load],
        python=platform.python_version(),
        duration_s=time.monotonic() - t0,
        rtt_p50_ms=_pct(lat, 0.5) * 1e3,
        rtt_p99_ms=_pct(lat, 0.99) * 1e3,
        max_request_rate=req_rate,
        max_stream_rate=stream_rate,
        max_chunk_rate=stream_rate * STREAM_CHUNKS,
        request_cost_s=request_cost,
        chunk_cost_s=chunk_cost,
        cpu_per_request_ms=json_res.client_cpu_s / max(1, json_res.requests + json_res.warmup) * 1e3,
        client_cpu_util=min(util, 1.0),
        versions=client_versions(),
    )


def save_calibration(run_url: str, cal: Calibration) -> str:
    """Write ``calibration.json`` into a run directory (local or s3://); returns its URL.

    Raises:
        StorageError: it cannot be written.
    """
    url = storage.join(run_url, "calibration.json")
    storage.write_text(url, cal.model_dump_json(indent=2))
    return url


def load_calibration(run_url: str) -> Calibration | None:
    """The run's calibration, or None when the run was not calibrated (or its file is unreadable)."""
    url = storage.join(run_url, "calibration.json")
    try:
        if not storage.exists(url):
            return None
        return Calibration.model_validate_json(storage.read_text(url))
    except (StorageError, ValueError):
        return None


def plan_processes(spec: Any, cal: Calibration | None, chunks_per_request: float,
                   expected_latency_s: float | None = None, max_processes: int | None = None) -> int:
    """How many client processes a shard needs so none runs above `PLAN_TARGET` of its ceiling.

    Open loop uses the shard's rate; closed loop its concurrency over ``expected_latency_s``
    (unknown latency: one process, and the report flags the shard afterwards if it ran hot).
    A shard with ``max_concurrency`` stays in one process (the cap cannot be split).

    Args:
        spec: the `fmbench.loadgen.ShardSpec`.
        cal: the host's calibration (None: one process).
        chunks_per_request: streamed chunks expected per answer (0 when not streaming).
        expected_latency_s: closed loop: expected latency of one request.
        max_processes: upper bound (default: the host's CPU count).
    """
    if cal is None or getattr(spec, "max_concurrency", None) is not None:
        return 1
    if spec.request_rate is not None:
        rate = float(spec.request_rate)
    elif expected_latency_s is not None:
        # No request completes faster than the client's own round trip to a zero-latency server.
        rate = spec.concurrency / max(expected_latency_s, cal.rtt_p50_ms / 1e3, 1e-4)
    else:
        return 1
    need = math.ceil(cal.load_fraction(rate, chunks_per_request) / PLAN_TARGET)
    cap = max_processes or cal.cpu_count
    if spec.request_rate is None:
        cap = min(cap, spec.concurrency)
    return max(1, min(need, cap))


def calibrate_run(run_url: str, duration_s: float = 2.0) -> Calibration:
    """Calibrate this host, store ``calibration.json`` in the run and its summary in the manifest.

    The host's cached calibration is used instead of a measurement while it applies
    (`cached_calibration`; never with ``FMBENCH_RECALIBRATE=1``); a measurement refreshes the cache.

    Raises:
        FMBenchError: the measurement failed.
        StorageError: the run directory cannot be written.
    """
    from fmbench.rundir import has_manifest, load_manifest, save_manifest

    cal = None if os.environ.get("FMBENCH_RECALIBRATE", "") not in ("", "0") else cached_calibration()
    if cal is None:
        cal = calibrate_host(duration_s)
        _store_cache(cal)
    save_calibration(run_url, cal)
    if has_manifest(run_url):
        manifest = load_manifest(run_url)
        manifest.calibration = cal.model_dump(mode="json") | {"summary": cal.summary()}
        save_manifest(run_url, manifest)
    return cal


def expected_shape(experiment: Any) -> tuple[float, float | None]:
    """Streamed chunks per answer and expected latency (s, None if unknown) of an experiment's requests.

    Known exactly only for the simulated endpoint; elsewhere ``max_tokens`` bounds the chunks.
    """
    inf = experiment.inference
    ep = experiment.endpoint
    if getattr(ep, "provider", None) == "simulated":
        tokens = min(int(ep.output_tokens), int(inf.max_tokens))
        latency = (float(ep.ttft_ms) + float(ep.tpot_ms) * tokens) / 1e3
        return (math.ceil(tokens / max(1, int(ep.chunk_tokens))) if inf.stream else 0.0), latency
    return (float(inf.max_tokens) if inf.stream else 0.0), None
