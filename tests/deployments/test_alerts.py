"""The regression alert on a real Prefect server: `deploy.sh` with FMBENCH_NOTIFY_BLOCK applies the
automation of deployments/automations.yaml, and a run that regresses against the previous one
makes the server send the notification (a webhook block posting to an HTTP server of the test)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
BLOCK = "custom-webhook/fmbench-test-alerts"


@pytest.fixture
def webhook() -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    """An HTTP server on 127.0.0.1 that records every JSON body POSTed to it."""
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.put(json.loads(body or b"{}"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def _config(out: Path, ttft_ms: int) -> dict[str, Any]:
    return {
        "name": "alert-test", "output": str(out), "buckets": [[1, 200]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 4, "seed": 1}],
        "experiments": [{
            "name": "sim",
            "endpoint": {"provider": "simulated", "ttft_ms": ttft_ms, "tpot_ms": 2, "output_tokens": 8, "max_batch": 8},
            "inference": {"max_tokens": 8, "stream": True},
            "concurrency_levels": [2], "requests_per_level": 16, "warmup_requests": 1,
            "pricing": {"hourly_usd": 1.0},
        }],
    }


def _run(stack: Any, config: dict[str, Any]) -> Any:
    with stack.client() as client:
        deployment = client.read_deployment_by_name("fmbench/on-demand")
        flow_run = client.create_flow_run_from_deployment(deployment.id, parameters={"config": config})
    return stack.wait_for_flow_run(flow_run.id)


def test_a_regression_run_notifies_through_the_configured_block(
        prefect_stack: Any, webhook: tuple[str, queue.Queue[dict[str, Any]]], tmp_path: Path) -> None:
    url, received = webhook
    make_block = (
        "from prefect.blocks.notifications import CustomWebhookNotificationBlock as B\n"
        f"B(name='fmbench', url={url!r}, method='POST', allow_private_urls=True,\n"
        "  json_data={'subject': '{{subject}}', 'body': '{{body}}'}).save(" + repr(BLOCK.split("/")[1])
        + ", overwrite=True)\n")
    subprocess.run([sys.executable, "-c", make_block], env=prefect_stack.env, check=True, timeout=120)
    deploy = subprocess.run(["bash", str(REPO / "deployments" / "deploy.sh")], env=dict(
        prefect_stack.env, FMBENCH_NOTIFY_BLOCK=BLOCK), cwd=prefect_stack.home, capture_output=True, text=True,
        timeout=600, check=False)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr
    assert f"notifies through {BLOCK}" in deploy.stdout

    with prefect_stack.client() as client:
        [automation] = client.read_automations_by_name("fmbench-regression-alert")
        block = client.read_block_document_by_name(BLOCK.split("/")[1], block_type_slug="custom-webhook")
    assert automation.enabled
    assert automation.trigger.expect == {"fmbench.regression.detected"}
    assert [str(a.block_document_id) for a in automation.actions] == [str(block.id)]

    out = tmp_path / "results"
    first = _run(prefect_stack, _config(out, ttft_ms=20))
    assert first.state.is_completed(), prefect_stack.log("worker")
    assert received.empty()  # nothing to compare the first run with: no regression, no notification
    second = _run(prefect_stack, _config(out, ttft_ms=250))  # 230 ms slower to the first token
    assert second.state.is_completed(), prefect_stack.log("worker")  # fail_on_regression is off

    deadline = time.monotonic() + 180
    message: dict[str, Any] | None = None
    while message is None and time.monotonic() < deadline:
        try:
            message = received.get(timeout=1)
        except queue.Empty:
            pass
    assert message is not None, "no notification within 180 s\n" + prefect_stack.log("server")
    runs = sorted(p.name for p in (out / "alert-test").iterdir() if p.is_dir())
    assert len(runs) == 2
    assert "regression(s) in alert-test" in message["subject"]
    assert message["body"].startswith(f"alert-test: {message['subject'].split()[1]} regression(s) since {runs[0]}, e.g. ")
    assert f"Run {runs[1]} (previous: {runs[0]})" in message["body"]
    assert f"{runs[1]}/report.md" in message["body"]
