"""Planted secrets (an OpenAI API key, a gateway key header and AWS credentials) reach no file of the run directory, no
Prefect log read back from the API, no artifact, no flow-run parameter and no captured log line."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from fmbench.config import SimulatedEndpoint
from fmbench.simulator.process import SimulatedServerProcess

API_KEY = "sk-fmbench-PLANTED-91c2d7e4aa"
HEADER_KEY = "gw-fmbench-PLANTED-3b8e0f"
AWS_KEY_ID = "AKIAFMBENCHPLANTED42"
AWS_SECRET = "fmbench/PLANTED/secret+Kq9wZ3xV7yT1uR5sP0oN"
AWS_TOKEN = "FwoGZXIvYXdzEFMBENCHPLANTEDTOKEN0123456789"
SECRETS = (API_KEY, HEADER_KEY, AWS_KEY_ID, AWS_SECRET, AWS_TOKEN)


def _config(tmp_path: Path, url: str) -> Path:
    cfg = {
        "name": "secrets", "output": str(tmp_path / "results"), "buckets": [[1, 300]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 2}],
        "experiments": [
            {"name": "oa", "endpoint": {"provider": "openai", "base_url": f"{url}/v1", "model": "fmbench-sim",
                                        "api_key_env": "FMBENCH_PLANTED_KEY",
                                        "headers_env": {"X-Gateway-Key": "FMBENCH_PLANTED_HEADER"}},
             "inference": {"max_tokens": 4}, "requests_per_level": 3, "warmup_requests": 0},
            {"name": "br", "endpoint": {"provider": "bedrock", "region": "us-east-1", "runtime_endpoint_url": url,
                                        "model_id": "meta.llama3-8b-instruct-v1:0"},
             "inference": {"max_tokens": 4}, "requests_per_level": 3, "warmup_requests": 0},
        ],
    }
    path = tmp_path / "secrets.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


async def _prefect_texts(flow_run_id: Any) -> list[str]:
    """Everything Prefect holds about the run. Logs reach the API from a background worker a moment
    after the run ends, so it waits (bounded) until they have arrived instead of reading once."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    deadline = time.monotonic() + 120
    async with get_client() as client:
        while True:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
            artifacts = await client.read_artifacts()
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            tasks = await client.read_task_runs()
            if (logs and artifacts and runs) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    texts = [log.message for log in logs]
    texts += [f"{a.key} {a.data} {a.description}" for a in artifacts]
    texts += [f"{r.parameters} {r.state}" for r in runs]
    texts += [f"{t.name} {t.state}" for t in tasks]
    assert logs and artifacts and runs, "nothing read back from Prefect"
    return texts


def test_planted_api_key_and_aws_credentials_appear_nowhere(prefect_harness: None, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from flows.benchmark import benchmark

    monkeypatch.setenv("FMBENCH_PLANTED_KEY", API_KEY)
    monkeypatch.setenv("FMBENCH_PLANTED_HEADER", HEADER_KEY)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", AWS_TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing may reach AWS
    # Prefect's loggers at the level of an ordinary run, whatever this process did before: a CLI
    # `main` called in-process by an earlier test sets PREFECT_LOGGING_LEVEL=CRITICAL before Prefect
    # is first imported, and then no run log would reach the API for this test to search.
    caplog.set_level(logging.INFO, logger="prefect")
    caplog.set_level(logging.DEBUG)
    sim = SimulatedEndpoint(provider="simulated", ttft_ms=5, tpot_ms=1, output_tokens=4)
    with SimulatedServerProcess(sim) as server:
        assert server.url
        state = benchmark(config=str(_config(tmp_path, server.url)), run_id="s", return_state=True)
    report = state.result()
    run = Path(report).parent
    requests = pl.read_parquet(run / "requests.parquet")
    # Both experiments really ran with the planted credentials.
    assert set(requests["experiment"].to_list()) == {"oa", "br"} and requests["ok"].all()
    for path in run.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, (secret, path)
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send what the run logged before reading it back
    texts = asyncio.run(_prefect_texts(state.state_details.flow_run_id))
    # botocore's own DEBUG wire log prints request headers (the access key id in Authorization and
    # the session token); it is off unless a user turns on DEBUG for botocore, so it is left out
    # here -- but even it never holds the secret key or the API key.
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith(("botocore", "urllib3"))]
    blob = "\n".join(texts + ours)
    for secret in SECRETS:
        assert secret not in blob, secret
    assert AWS_SECRET not in caplog.text and API_KEY not in caplog.text and HEADER_KEY not in caplog.text
