"""The `fmbench` flow end to end on the simulated endpoint: records, metrics, report, resume, and
the same numbers through `provider: openai` against a separately started server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from flows.benchmark import benchmark
from fmbench.config import SimulatedEndpoint
from fmbench.deploy import ENDED_WITH_ATTEMPT, EndpointTimeline
from fmbench.simulator.process import SimulatedServerProcess
from tests.support.cli import ROOT, fmbench_argv

SIM = {"provider": "simulated", "ttft_ms": 40, "tpot_ms": 5, "output_tokens": 12, "max_batch": 8}


def _config(tmp_path: Path, endpoint: dict[str, Any], *, name: str = "flowtest", levels: list[int] | None = None,
            requests: int = 6, warmup: int = 1) -> Path:
    cfg = {
        "name": name,
        "output": str(tmp_path / "results"),
        "buckets": [[1, 200], [200, 400]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 4, "seed": 1}],
        "experiments": [{
            "name": "exp",
            "endpoint": endpoint,
            "inference": {"max_tokens": 12, "stream": True},
            "concurrency_levels": levels or [1, 3],
            "requests_per_level": requests,
            "warmup_requests": warmup,
            "pricing": {"hourly_usd": 2.0},
        }],
        "slo": {"latency_p95_s": 5.0, "ttft_p95_s": 1.0},
    }
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_flow_writes_one_record_per_request_and_one_metric_row_per_shard(prefect_harness: None,
                                                                         tmp_path: Path) -> None:
    report = benchmark(config=str(_config(tmp_path, SIM)), run_id="e2e")
    run = Path(report).parent
    assert Path(report).name == "report.md" and Path(report).is_file()
    for name in ("config.yml", "manifest.json", "requests.parquet", "metrics.csv", "metrics.parquet",
                 "report.html"):
        assert (run / name).is_file(), name
    requests = pl.read_parquet(run / "requests.parquet")
    # 2 buckets x 2 levels = 4 shards, each 6 measured + 1 warm-up request.
    assert requests.height == 4 * 7
    assert requests.filter(pl.col("warmup")).height == 4
    assert requests.select("shard_id", "request_id").is_duplicated().sum() == 0
    assert requests["ok"].all()
    assert (requests["output_tokens"] == 12).all()
    metrics = pl.read_csv(run / "metrics.csv")
    assert metrics.height == 4
    assert sorted(metrics["concurrency"].to_list()) == [1, 1, 3, 3]
    assert (metrics["requests"] == 6).all()
    assert set(metrics["bucket"].to_list()) == {"1-200", "200-400"}
    # Input tokens per request are the exact synthetic lengths, within each bucket's range.
    measured = requests.filter(~pl.col("warmup"))
    assert ((measured["input_tokens"] >= measured["bucket_min"]) & (measured["input_tokens"] < measured["bucket_max"])).all()
    assert len(list((run / "prompts").glob("*.parquet"))) == 2


def test_openai_provider_against_serve_sim_gives_the_same_numbers(prefect_harness: None, tmp_path: Path) -> None:
    sim_report = benchmark(config=str(_config(tmp_path, SIM, name="viasim", levels=[1, 4], requests=16)),
                           run_id="a")
    params = {k: v for k, v in SIM.items() if k != "provider"}
    with SimulatedServerProcess(SimulatedEndpoint(provider="simulated", **params)) as server:
        endpoint = {"provider": "openai", "base_url": f"{server.url}/v1", "model": "fmbench-sim", "api": "chat"}
        oa_report = benchmark(config=str(_config(tmp_path, endpoint, name="viaopenai", levels=[1, 4],
                                                 requests=16)), run_id="b")
    key = ["bucket", "concurrency"]
    a = pl.read_parquet(Path(sim_report).parent / "metrics.parquet").sort(key)
    b = pl.read_parquet(Path(oa_report).parent / "metrics.parquet").sort(key)
    assert a.select(key).equals(b.select(key))
    assert a["input_tokens"].to_list() == b["input_tokens"].to_list()
    assert a["output_tokens"].to_list() == b["output_tokens"].to_list()
    assert (a["errors"] == 0).all() and (b["errors"] == 0).all()
    # Both paths measure the same latency model: no TTFT or end-to-end percentile below what the model
    # makes the server wait (a clock or parsing slip shows up as a number below it). TPOT has no such
    # floor (a late first chunk followed by on-time ones gives a shorter mean gap). How close the two
    # land is a speed question on a shared CPU, measured by `make bench`, not asserted here.
    floors = {"ttft_p50_s": SIM["ttft_ms"] / 1000,
              "latency_p50_s": (SIM["ttft_ms"] + (SIM["output_tokens"] - 1) * SIM["tpot_ms"]) / 1000}
    for col, floor in floors.items():
        for x, y in zip(a[col].to_list(), b[col].to_list()):
            assert min(x, y) >= floor * 0.98, (col, x, y, floor)


def test_killed_run_resumes_without_resending_measured_shards(cli_env: dict[str, str], tmp_path: Path) -> None:
    slow = {**SIM, "tpot_ms": 15, "output_tokens": 12}
    cfg = _config(tmp_path, slow, name="resume", levels=[1, 2, 3], requests=8)
    run = tmp_path / "results" / "resume" / "r1"
    proc = subprocess.Popen(fmbench_argv("run", str(cfg), "--run-id", "r1"), env=cli_env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(list((run / "shards").glob("*.json"))) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Prefect server and the simulated endpoint
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = {p.stem: p.read_bytes() for p in (run / "shards").glob("*.parquet")
                   if (run / "shards" / f"{p.stem}.json").exists()}
    assert 2 <= len(done_before) < 6
    resumed_at = time.monotonic()
    result = subprocess.run(fmbench_argv("run", str(cfg), "--run-id", "r1"), env=cli_env, cwd=ROOT,
                            capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == f"Report: {run / 'report.md'}"
    for stem, data in done_before.items():
        assert (run / "shards" / f"{stem}.parquet").read_bytes() == data, f"{stem} was measured again"
    requests = pl.read_parquet(run / "requests.parquet")
    assert requests.height == 6 * (8 + 1)
    assert requests.select("shard_id", "request_id").is_duplicated().sum() == 0
    before = requests.filter(pl.col("shard_id").is_in(list(done_before)))
    after = requests.filter(~pl.col("shard_id").is_in(list(done_before)))
    assert before["t_start"].max() < resumed_at < after["t_start"].min()
    assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    # The killed attempt's simulated endpoint ended with it: billed to when it was last known alive,
    # beside the resumed run's own endpoint.
    killed, last = EndpointTimeline.model_validate(json.loads((run / "manifest.json").read_text())
                                                   ["endpoints"]["exp"]).lives()
    assert killed.deleted_by == ENDED_WITH_ATTEMPT and killed.deleted_at == killed.last_shard_at
    assert killed.gone_by is not None and killed.gone_by < last.created_at and last.deleted_by is None
    assert "ended with the killed attempt's process at an unknown time" in (run / "report.md").read_text()


def test_a_run_directory_deleted_and_made_again_is_measured_anew(prefect_harness: None, tmp_path: Path) -> None:
    """A run directory deleted and then made again under the same run id is another run: nothing of the
    old one (its records are gone) may stand for its shards. When Prefect cached shard outcomes, the
    second run took the old ones and failed on records not found."""
    cfg = _config(tmp_path, SIM, name="again", levels=[1], requests=2, warmup=0)
    first = Path(benchmark(config=str(cfg), run_id="same")).parent
    shutil.rmtree(first)
    made_again_at = time.monotonic()
    second = Path(benchmark(config=str(cfg), run_id="same")).parent
    assert second == first
    requests = pl.read_parquet(second / "requests.parquet")
    assert requests.height == 2 * 2 and requests["ok"].all()
    assert requests["t_start"].min() > made_again_at  # every request was sent by the second run


def test_a_shard_whose_result_file_was_deleted_is_measured_again_on_resume(prefect_harness: None,
                                                                          tmp_path: Path) -> None:
    """The run directory is a shard's one record. With a Prefect cache entry per shard, a resume took
    the deleted shard's old outcome as measured (and failed for ever when its records were gone too)."""
    cfg = _config(tmp_path, SIM, name="lost", levels=[1, 2], requests=2, warmup=0)
    run = Path(benchmark(config=str(cfg), run_id="r1")).parent
    kept, lost = sorted(p.stem for p in (run / "shards").glob("*.json"))[:2]
    (run / "shards" / f"{lost}.json").unlink()
    resumed_at = time.monotonic()
    assert Path(benchmark(config=str(cfg), run_id="r1")).parent == run
    requests = pl.read_parquet(run / "requests.parquet")
    assert requests.height == 2 * 2 * 2 and requests["ok"].all()
    assert (requests.filter(pl.col("shard_id") == lost)["t_start"] > resumed_at).all()
    assert (requests.filter(pl.col("shard_id") == kept)["t_start"] < resumed_at).all()


def test_the_flow_runs_preflight_itself_before_any_run_directory(prefect_harness: None, tmp_path: Path) -> None:
    """A deployment's flow run gets the same preflight as `fmbench run`: a dead endpoint is refused
    in one line before anything is written."""
    import socket

    import pytest

    from fmbench.errors import EndpointConnectionError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = {"provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "api": "chat"}
    with pytest.raises(EndpointConnectionError, match=r"experiments\[exp\]\.endpoint\.base_url: .* is unreachable"):
        benchmark(config=str(_config(tmp_path, endpoint, name="preflighted")), run_id="p")
    assert not (tmp_path / "results").exists()
