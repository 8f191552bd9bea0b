"""What a run reuses from the runs before it (the host's calibration), what it skips (PNGs with
``png=False``) and what it never loads (AWS SDKs for a config without AWS)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fmbench.calibration import Calibration, cached_calibration, client_versions
from fmbench.config import load_config_text
from fmbench.pipeline import run_benchmark

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
name: again
tokenizer: cl100k_base
buckets: [[1, 500]]
datasets:
  - {name: synthetic, source: synthetic, prompts_per_bucket: 4, seed: 0}
experiments:
  - name: sim
    endpoint: {provider: simulated, ttft_ms: 5, tpot_ms: 1, output_tokens: 4, max_batch: 8}
    inference: {max_tokens: 4, stream: true}
    concurrency_levels: [2]
    requests_per_level: 8
    warmup_requests: 0
"""


def _manifest(run_dir: Path) -> dict[str, object]:
    return dict(json.loads((run_dir / "manifest.json").read_text()))


def test_a_second_run_reuses_the_host_calibration_and_its_report_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    # The load average moves between two runs on a shared machine; here only reuse itself is tested
    # (the refusal on a changed load is tested below with explicit loads).
    monkeypatch.setenv("FMBENCH_CALIBRATION_LOAD_TOLERANCE", "1000")
    monkeypatch.delenv("FMBENCH_RECALIBRATE", raising=False)
    cfg = load_config_text(CONFIG)
    run_benchmark(cfg, output=str(tmp_path), run_id="r1", png=False)
    first = Calibration.model_validate_json((tmp_path / "again" / "r1" / "calibration.json").read_text())
    assert first.reused is None and (tmp_path / "cache" / "calibration.json").exists()
    report = Path(run_benchmark(cfg, output=str(tmp_path), run_id="r2", png=False)).read_text()
    second = Calibration.model_validate_json((tmp_path / "again" / "r2" / "calibration.json").read_text())
    assert second.reused and f"reused from this host's calibration of {first.created_at}" in second.reused
    assert second.model_dump(exclude={"reused"}) == first.model_dump(exclude={"reused"})
    assert "reused from this host's calibration" in report
    assert "reused from this host's calibration" in str(_manifest(tmp_path / "again" / "r2")["calibration"])
    # png=False: no browser, no PNGs, and the report says why they are missing
    assert not list((tmp_path / "again" / "r2").glob("plots/*.png"))
    assert "PNG export skipped (--no-png)" in report
    # FMBENCH_RECALIBRATE=1 measures again (and refreshes the cache)
    monkeypatch.setenv("FMBENCH_RECALIBRATE", "1")
    run_benchmark(cfg, output=str(tmp_path), run_id="r3", png=False)
    third = Calibration.model_validate_json((tmp_path / "again" / "r3" / "calibration.json").read_text())
    assert third.reused is None and third.created_at >= first.created_at


def test_a_cached_calibration_is_refused_when_load_cpus_versions_or_age_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FMBENCH_CALIBRATION_LOAD_TOLERANCE", raising=False)
    cpus = os.cpu_count() or 1

    def store(**kw: object) -> None:
        base: dict[str, object] = {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(),
            "cpu_count": cpus, "load_avg": [1.0, 1.0, 1.0], "python": "3.11", "duration_s": 2.0,
            "rtt_p50_ms": 0.2, "rtt_p99_ms": 0.5, "max_request_rate": 2000.0, "max_stream_rate": 1000.0,
            "max_chunk_rate": 256_000.0, "request_cost_s": 1 / 2000, "chunk_cost_s": 2e-6, "cpu_per_request_ms": 0.4,
            "client_cpu_util": 1.0, "versions": client_versions(),
        }
        (tmp_path / "calibration.json").write_text(Calibration.model_validate(base | kw).model_dump_json())

    assert cached_calibration(load_now=1.0) is None  # nothing cached yet
    store()
    reused = cached_calibration(load_now=1.0 + 0.2 * cpus)
    assert reused is not None and reused.reused and "load average then 1.00" in reused.reused
    assert cached_calibration(load_now=1.0 + 0.3 * cpus) is None  # the machine got busier
    store(load_avg=[4.0 * cpus, 4.0 * cpus, 4.0 * cpus])  # oversubscribed: the relative change counts
    assert cached_calibration(load_now=4.8 * cpus) is not None  # 20 % busier
    assert cached_calibration(load_now=3.4 * cpus) is not None  # 15 % less busy
    assert cached_calibration(load_now=6.0 * cpus) is None  # a third busier
    assert cached_calibration(load_now=2.5 * cpus) is None
    store()
    store(cpu_count=cpus + 1)
    assert cached_calibration(load_now=1.0) is None
    store(versions=client_versions() | {"client_code": "changed"})
    assert cached_calibration(load_now=1.0) is None
    store(host="another-host")
    assert cached_calibration(load_now=1.0) is None
    store(created_at="2020-01-01T00:00:00Z")
    assert cached_calibration(load_now=1.0) is None


_NO_AWS = """
import sys
from fmbench.config import load_config_text
from fmbench.pipeline import run_benchmark
import flows.benchmark  # the flow and its tasks, as `fmbench run` loads them
cfg = load_config_text(sys.stdin.read())
run_benchmark(cfg, output=sys.argv[1], run_id="noaws", png=False)
print(sorted(m for m in ("boto3", "botocore", "sagemaker", "aiobotocore", "s3fs") if m in sys.modules))
import fmbench.endpoints.bedrock  # noqa: F401 - a config with Bedrock does load them
print("boto3" in sys.modules)
"""


def test_a_config_without_aws_never_imports_the_aws_sdks(tmp_path: Path) -> None:
    env = dict(os.environ, FMBENCH_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", _NO_AWS, str(tmp_path)], input=CONFIG, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded, after_bedrock = proc.stdout.strip().splitlines()[-2:]
    assert loaded == "[]", f"AWS modules loaded by a simulated-only run: {loaded}"
    assert after_bedrock == "True"


SIM_LOAD = """
name: simload
tokenizer: cl100k_base
buckets: [[1, 500]]
datasets:
  - {{name: synthetic, source: synthetic, prompts_per_bucket: 8, seed: 0}}
experiments:
  - name: sim
    endpoint: {{provider: simulated, ttft_ms: {ttft}, tpot_ms: {tpot}, output_tokens: {out}, max_batch: 512}}
    inference: {{max_tokens: {out}, stream: true}}
    concurrency_levels: [{conc}]
    requests_per_level: {n}
    warmup_requests: 0
    processes: {procs}
"""


def test_an_overloaded_simulator_is_flagged_per_shard_and_a_light_one_is_not(tmp_path: Path) -> None:
    # 256 streams of 400 tokens at 0.05 ms per token ask one simulator process for millions of
    # chunks per second: far beyond one event loop on any machine, so its chunks go out late.
    heavy = load_config_text(SIM_LOAD.format(ttft=1, tpot=0.05, out=400, conc=256, n=256, procs=2))
    report = Path(run_benchmark(heavy, output=str(tmp_path), run_id="heavy", png=False)).read_text()
    shard = json.loads(next((tmp_path / "simload" / "heavy" / "shards").glob("*.json")).read_text())
    sim = shard["simulator"]
    assert sim["chunks"] > 0 and sim["verdict"] and "simulator late or saturated" in sim["verdict"], sim
    assert "Shards where the simulator was late or saturated" in report and shard["shard_id"] in report
    # 2 streams at 50 ms per token: the simulator idles between chunks, so it is never saturated and
    # is flagged only when its own stamps say its chunks went out more than 12.5 ms late at p99, which
    # only the shared CPU can cause (a loaded machine): then the verdict says so.
    light = load_config_text(SIM_LOAD.format(ttft=20, tpot=50, out=6, conc=2, n=6, procs=1))
    report = Path(run_benchmark(light, output=str(tmp_path), run_id="light", png=False)).read_text()
    shard = json.loads(next((tmp_path / "simload" / "light" / "shards").glob("*.json")).read_text())
    sim = shard["simulator"]
    assert sim["chunks"] > 0 and not sim["saturated"] and sim["late_limit_ms"] == 12.5, sim
    if sim["lateness_p99_ms"] <= 12.5:
        assert sim["verdict"] is None and "simulator was late" not in report, sim
    else:
        assert "the shared CPU" in sim["verdict"] and shard["shard_id"] in report, sim
    # beside every shard, this machine's own speed (fmbench.machine)
    machine = shard["machine"]
    assert machine["unit_us_median"] > 0 and 0 <= machine["slow_share"] <= 1 and machine["slow_windows"] >= 0


FAST_FAILURES = """
name: fastfail
tokenizer: cl100k_base
buckets: [[1, 500]]
datasets:
  - {name: synthetic, source: synthetic, prompts_per_bucket: 4, seed: 0}
experiments:
  - name: sim
    endpoint: {provider: simulated, ttft_ms: 20, tpot_ms: 2, output_tokens: 16, faults: {http_500_rate: 1.0}}
    inference: {max_tokens: 16, stream: true}
    concurrency_levels: [1, 2]
    requests_per_level: 4
    warmup_requests: 60
"""


def test_a_short_shard_of_fast_failures_is_not_called_saturated_by_the_ticks_of_its_warm_ups(
        tmp_path: Path) -> None:
    # Four measured HTTP 500s take about 2 ms, the 60 warm-ups before them tens of ms of the
    # simulator's CPU: divided by the measured 2 ms alone, that read as several CPUs' worth.
    from fmbench.pipeline.shards import SIM_CPU_MAX_ERROR

    cfg = load_config_text(FAST_FAILURES)
    report = Path(run_benchmark(cfg, output=str(tmp_path), run_id="fast", png=False)).read_text()
    for path in sorted((tmp_path / "fastfail" / "fast" / "shards").glob("*.json")):
        shard = json.loads(path.read_text())
        assert shard["errors"] == shard["requests"] == 4 and shard["duration_s"] < 0.2, shard
        sim = shard["simulator"]
        # one event loop's share of one CPU, over the interval its stamps cover (warm-ups included)
        assert sim["cpu_util"] is None or sim["cpu_util"] <= 1.0 + SIM_CPU_MAX_ERROR, sim
        assert sim["cpu_interval_s"] > shard["duration_s"], sim
        assert sim["chunks"] == 0 and not sim["saturated"] and sim["verdict"] is None, sim
    assert "simulator was late or saturated" not in report


def test_the_simulators_cpu_share_is_unknown_when_clock_ticks_cannot_measure_it() -> None:
    # The kernel counts CPU time in whole ticks (10 ms at USER_HZ=100): over a few ms one tick more
    # or less is several CPUs' worth, so the share is not given and cannot make a shard saturated.
    # Over a longer interval it is, and one event loop never uses more than one CPU.
    from fmbench.config import ExperimentConfig, SimulatedEndpoint
    from fmbench.deploy import DeployedEndpoint
    from fmbench.pipeline.shards import SIM_CPU_MAX_ERROR, SimulatorWatch
    from fmbench.simulator.process import SimulatedServerProcess

    endpoint = SimulatedEndpoint(provider="simulated", model="sim", ttft_ms=1, tpot_ms=1, output_tokens=4)
    experiment = ExperimentConfig(name="sim", endpoint=endpoint)
    with SimulatedServerProcess(endpoint) as srv:
        deployed = DeployedEndpoint(experiment="sim", provider="simulated", url=srv.url, pid=srv.pid)
        watch = SimulatorWatch.start(deployed, experiment)
        assert watch is not None
        view = watch.finish()
        assert view is not None and view["cpu_util"] is None and not view["saturated"], view
        watch = SimulatorWatch.start(deployed, experiment)
        assert watch is not None
        with httpx.Client(timeout=10.0) as client:
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                client.post(f"{srv.url}/v1/completions", json={"model": "sim", "prompt": "hi"}).raise_for_status()
        view = watch.finish()
    assert view is not None and view["cpu_interval_s"] >= 0.5 and view["chunks"] > 0, view
    assert view["cpu_util"] is not None and 0 < view["cpu_util"] <= 1.0 + SIM_CPU_MAX_ERROR, view
