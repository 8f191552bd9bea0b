"""A run stored on S3 (moto server over real HTTP) leaves the same files as a local run and can be
re-rendered and compared from its URL; an API key never reaches results, artifacts or logs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from cli.main import main as cli_main
from flows.benchmark import benchmark
from fmbench import storage
from fmbench.config import SimulatedEndpoint
from fmbench.simulator.process import SimulatedServerProcess

SIM = {"provider": "simulated", "ttft_ms": 20, "tpot_ms": 2, "output_tokens": 6}


def _config(tmp_path: Path, name: str, endpoint: dict[str, Any], output: str) -> str:
    cfg = {
        "name": name, "output": output, "buckets": [[1, 300]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 3}],
        "experiments": [{"name": "exp", "endpoint": endpoint, "inference": {"max_tokens": 6},
                         "concurrency_levels": [1, 2], "requests_per_level": 4, "warmup_requests": 1,
                         "pricing": {"hourly_usd": 1.0}}],
        "slo": {"latency_p95_s": 2.0},
    }
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _relative_files(root: str) -> set[str]:
    if storage.is_remote(root):
        import s3fs

        fs = s3fs.S3FileSystem()
        prefix = root.split("://", 1)[1].rstrip("/") + "/"
        return {p[len(prefix):] for p in fs.find(prefix)}
    return {str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file()}


def test_s3_run_has_the_local_layout_and_reports_from_s3(prefect_harness: None, s3_bucket: str,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local_report = benchmark(config=_config(tmp_path, "stored", SIM, str(tmp_path / "results")), run_id="same")
    s3 = boto3.client("s3")
    bucket = s3_bucket.split("://", 1)[1]
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})  # see the hold below
    s3_report = benchmark(config=_config(tmp_path, "stored", SIM, str(tmp_path / "unused")),
                          output=f"{s3_bucket}/bench", run_id="same")
    assert s3_report == f"{s3_bucket}/bench/stored/same/report.md"
    local_files = _relative_files(str(Path(local_report).parent))
    s3_files = _relative_files(s3_report.rsplit("/", 1)[0])
    assert local_files == s3_files
    # The run was held across hosts while it ran (fmbench.lease), beside its directory, and given back at its end.
    # (Beside it, the store's check of conditional writes: an object of its own, deleted too.)
    holds = s3.list_object_versions(Bucket=bucket, Prefix="bench/stored/.fmbench-holds/")
    written = {v["Key"].rsplit("/", 1)[1].split("-")[0] for v in holds.get("Versions", [])}
    assert written == {"same.json", ".probe"}
    assert [m["IsLatest"] for m in holds.get("DeleteMarkers", [])] == [True, True]
    assert s3.list_objects_v2(Bucket=bucket, Prefix="bench/stored/.fmbench-holds/").get("KeyCount") == 0
    assert {"requests.parquet", "metrics.csv", "report.md", "report.html", "manifest.json"} <= s3_files
    # Objects are whole: every parquet object reads back.
    assert storage.read_parquet(f"{s3_bucket}/bench/stored/same/requests.parquet").height == 2 * 5
    # Re-render from the S3 URL through the CLI.
    s3.delete_object(Bucket=bucket, Key="bench/stored/same/report.md")
    assert cli_main(["report", f"{s3_bucket}/bench/stored/same"]) == 0
    assert capsys.readouterr().out.strip().endswith("report.md")
    assert "# fmbench report" in storage.read_text(f"{s3_bucket}/bench/stored/same/report.md")
    # Compare a local run with the S3 one.
    out = tmp_path / "comparison"
    assert cli_main(["compare", str(Path(local_report).parent), f"{s3_bucket}/bench/stored/same",
                     "--output", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    _partial_report_on_s3(f"{s3_bucket}/bench/stored/same", f"{s3_bucket}/bench/stored/stopped", capsys)


def _partial_report_on_s3(finished: str, stopped: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The run as it stood before its end (its config, its manifest without an end, its measured
    shards): `fmbench report --partial` reports those shards in its partial/, in S3, and changes
    nothing else of it."""
    from fmbench.rundir import load_manifest, save_manifest

    for name in ("config.yml", "manifest.json"):
        storage.write_bytes(storage.join(stopped, name), storage.read_bytes(storage.join(finished, name)))
    shards = storage.list_files(storage.join(finished, "shards"))
    for url in shards:
        storage.write_bytes(storage.join(stopped, "shards", url.rsplit("/", 1)[1]), storage.read_bytes(url))
    save_manifest(stopped, load_manifest(stopped).model_copy(update={"ended_at": None}))
    before = _relative_files(stopped)
    assert cli_main(["report", stopped, "--partial", "--no-png"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"Partial report: {stopped}/partial/report.md"
    measured = sum(1 for url in shards if url.endswith(".json"))
    assert storage.read_parquet(f"{stopped}/partial/metrics.parquet").height == measured == 2
    assert "Partial report: run same has not finished" in storage.read_text(f"{stopped}/partial/report.md")
    assert {f for f in _relative_files(stopped) if not f.startswith("partial/")} == before


def test_api_key_never_reaches_results_artifacts_or_logs(prefect_harness: None, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-fmbench-SECRET-7f3a9c1e5b"
    monkeypatch.setenv("FMBENCH_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    params = {k: v for k, v in SIM.items() if k != "provider"}
    with SimulatedServerProcess(SimulatedEndpoint(provider="simulated", **params)) as server:
        endpoint = {"provider": "openai", "base_url": f"{server.url}/v1", "model": "fmbench-sim",
                    "api_key_env": "FMBENCH_TEST_KEY"}
        report = benchmark(config=_config(tmp_path, "secret", endpoint, str(tmp_path / "results")), run_id="s")
    run = Path(report).parent
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in caplog.text
    from prefect.client.orchestration import get_client

    async def artifacts() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts()

    blob = " ".join(str(a.data) + str(a.description) for a in asyncio.run(artifacts()))
    assert secret not in blob
