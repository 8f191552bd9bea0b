"""One run at a time per existing endpoint: the flow's shards on an endpoint wait for that endpoint's
Prefect global concurrency limit, held here as another run would hold it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

from flows.benchmark import benchmark
from flows.steps import _ensure_limit
from fmbench.config import SimulatedEndpoint, load_config
from fmbench.pipeline import endpoint_lock_name
from fmbench.rundir import load_manifest
from fmbench.simulator.server import SimulatedServerThread


def test_shards_wait_while_another_run_holds_the_endpoint(prefect_harness: None, tmp_path: Path) -> None:
    sim = SimulatedEndpoint(provider="simulated", model="sim", ttft_ms=1, tpot_ms=1, output_tokens=2)
    with SimulatedServerThread(sim) as srv:
        cfg = {
            "name": "slot", "output": str(tmp_path / "results"), "buckets": [[1, 500]],
            "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 2, "seed": 0}],
            "experiments": [{"name": "o", "endpoint": {"provider": "openai", "base_url": f"{srv.url}/v1",
                                                       "model": "sim"},
                             "inference": {"max_tokens": 2}, "requests_per_level": 3, "warmup_requests": 0}],
        }
        path = tmp_path / "slot.yml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        name = endpoint_lock_name(load_config(path).experiments[0])
        assert name is not None
        _ensure_limit(name)

        run_dir = tmp_path / "results" / "slot" / "r"
        result: dict[str, object] = {}
        held = threading.Event()
        release = threading.Event()

        def other_run() -> None:
            with concurrency(name, occupy=1, strict=True):
                held.set()
                release.wait(300)

        holder = threading.Thread(target=other_run, daemon=True)
        holder.start()
        assert held.wait(60)
        flow = threading.Thread(target=lambda: result.update(report=benchmark(config=str(path), run_id="r")),
                                daemon=True)
        flow.start()
        # The run gets as far as its prompts, then its shards wait for the endpoint.
        deadline = time.monotonic() + 300
        while not list((run_dir / "prompts").glob("*.parquet")):
            assert time.monotonic() < deadline and flow.is_alive()
            time.sleep(0.2)
        time.sleep(3)
        assert not list((run_dir / "shards").glob("*.json")), "a shard ran while another run held the endpoint"
        released_at = time.time()
        release.set()
        flow.join(300)
        assert not flow.is_alive() and "report" in result

    import datetime as dt

    shards = load_manifest(str(run_dir)).shards
    assert shards and all(s["status"] == "ok" for s in shards)
    for s in shards:
        assert dt.datetime.fromisoformat(s["started_at"]).timestamp() >= released_at - 0.001
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 1
