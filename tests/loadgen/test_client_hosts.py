"""One shard from two client hosts of a real local Dask cluster against the simulated endpoint.

The tests start a ``dask scheduler`` and two ``dask worker`` processes (distinct names, one thread
each, 127.0.0.1) and check what a user would notice: both hosts sent, the endpoint never saw more
than the shard's concurrency, the merged records are complete, and a lost host fails the shard.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

import httpx
import polars as pl
import pytest

from fmbench.config import InferenceConfig, SimulatedEndpoint
from fmbench.endpoints import make_client
from fmbench.errors import FMBenchError, StorageError
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.loadgen.hosts import _wait_first, check_hosts_reach, run_shard_hosts
from fmbench.protocol import Prompt
from fmbench.simulator.server import SimulatedServerThread
from tests.support.fake_openai import FakeOpenAI
from tests.support.records import assert_warmups_done_first

pytestmark = pytest.mark.integration
distributed = pytest.importorskip("distributed")

PROMPTS = [Prompt(f"p{i}", f"prompt number {i}", 3) for i in range(5)]
_DASK = str(Path(sys.executable).with_name("dask"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A scheduler and named workers as separate processes; every one is killed on close, or when the
    cluster does not come up (then the error says so)."""

    #: How long a loaded 2-core CI machine may take to start the processes (Dask's imports alone can
    #: take tens of seconds there; a 60-s client timeout once failed before the scheduler listened).
    START_TIMEOUT_S = 240

    def __init__(self, names: list[str], env: dict[str, str] | None = None, nthreads: int = 1) -> None:
        self.env = env
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.client: distributed.Client | None = None
        try:
            self._start("scheduler", [_DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--no-dashboard"])
            self._wait_listening()
            for name in names:
                self._start(name, [_DASK, "worker", self.address, "--name", name, "--nthreads", str(nthreads),
                                   "--host", "127.0.0.1", "--no-nanny", "--no-dashboard"])
            self.client = distributed.Client(self.address, timeout=self.START_TIMEOUT_S)
            self.client.wait_for_workers(len(names), timeout=self.START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert self.procs["scheduler"].poll() is None, "the Dask scheduler exited at start"
                assert time.monotonic() < deadline, f"the Dask scheduler did not listen within {self.START_TIMEOUT_S} s"
                time.sleep(0.2)

    def _start(self, name: str, argv: list[str]) -> None:
        self.procs[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True, env=self.env)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.close()
        finally:
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(["host-a", "host-b"])
    try:
        yield c
    finally:
        c.close()


def _endpoint() -> SimulatedEndpoint:
    return SimulatedEndpoint(provider="simulated", model="sim", ttft_ms=20, tpot_ms=2, output_tokens=16,
                             max_batch=32, seed=1)


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with SimulatedServerThread(_endpoint()) as srv:
        assert srv.url is not None
        yield srv.url


def _client(url: str) -> Any:
    return make_client(_endpoint(), InferenceConfig(max_tokens=16, stream=True), url=url)


def _spec(**kw: Any) -> ShardSpec:
    base: dict[str, Any] = {"shard_id": "e__d__0-9__c8", "experiment": "e", "dataset": "d", "bucket": "0-9",
                            "bucket_min": 0, "bucket_max": 9, "requests": 240, "warmup": 4}
    return ShardSpec(**(base | kw))


class InFlight:
    """Samples the simulated endpoint's own count of requests it holds (admitted + queued)."""

    def __init__(self, url: str) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._url = url
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self._url, timeout=10) as c:
            while not self._stop.is_set():
                body = c.get("/fmbench/stats").json()
                self.samples.append(int(body["in_flight"]) + int(body["queued"]))
                time.sleep(0.005)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _slice_url(tmp_path: Path) -> Any:
    return lambda k: str(tmp_path / "run" / "shards" / f"s.host-{k}.parquet")


def test_a_closed_loop_shard_over_two_hosts_keeps_its_concurrency(cluster: Cluster, sim: str,
                                                                   tmp_path: Path) -> None:
    spec = _spec(concurrency=8)
    out = tmp_path / "merged.parquet"
    with InFlight(sim) as seen:
        result, clocks = run_shard_hosts(_client(sim), PROMPTS, spec, out, len, 2, cluster.client,
                                         _slice_url(tmp_path), calibrate=True)
    records = pl.read_parquet(out)
    # Complete: one record per request, ids unique, and both hosts sent.
    assert records.height == spec.warmup + spec.requests
    assert sorted(records["request_id"].to_list()) == list(range(spec.warmup + spec.requests))
    assert records["ok"].all()
    assert set(records["client_host"].to_list()) == {"host-a", "host-b"}
    assert set(records.filter(pl.col("warmup"))["client_host"].to_list()) == {"host-a", "host-b"}
    assert_warmups_done_first(records)  # on both hosts: the shard starts once every host has warmed up
    assert {c.host for c in clocks} == {"host-a", "host-b"} and [c.concurrency for c in clocks] == [4, 4]
    assert result.requests == spec.requests and result.errors == 0
    # Both hosts' connections are in the shard's count of how answers were stamped (4 each at least).
    assert result.receive_stamps is not None and sum(result.receive_stamps.values()) >= 8
    # The endpoint never held more than 8, and held 7 or 8 for most of the shard (its ramp-up and
    # drain at the edges aside).
    busy = [n for n in seen.samples if n > 0]
    assert busy and max(busy) <= 8
    assert sum(n >= 7 for n in busy) / len(busy) > 0.5, busy
    # Each host calibrated its own client, and the clocks were measured.
    assert all(c.calibration is not None and c.max_request_rate for c in clocks)
    assert all(c.uncertainty_s >= 0 for c in clocks)

    # TTFT and TPOT agree with the same shard from one host. On a quiet machine they agree within the
    # client's calibrated overhead (`make bench`, benchmark 8); here the simulator shares this process
    # and the 2 cores with the workers, and two runs' medians were seen 36 % apart with nothing wrong.
    # What this catches is a split that mis-drives the load: a slice queueing its requests behind
    # another's (TTFT doubles) or pacing the wrong concurrency (TPOT moves with the batch).
    one = tmp_path / "one.parquet"
    run_shard(_client(sim), PROMPTS, spec, one, len)
    single = pl.read_parquet(one).filter(~pl.col("warmup"))
    multi = records.filter(~pl.col("warmup"))
    overhead_s = max(c.calibration["rtt_p99_ms"] for c in clocks if c.calibration) / 1e3
    for col in ("ttft_s", "tpot_s"):
        a, b = multi[col].median(), single[col].median()
        assert abs(a - b) <= overhead_s + 0.5 * min(a, b), (col, a, b, overhead_s)


def test_an_open_loop_shard_over_two_hosts_keeps_its_rate(cluster: Cluster, sim: str, tmp_path: Path) -> None:
    spec = _spec(request_rate=40.0, requests=160, warmup=0, shard_id="e__d__0-9__r40",
                 rate_shortfall=0.1, max_send_lag_s=0.05)
    out = tmp_path / "merged.parquet"
    reports: list[tuple[int, int, int]] = []
    result, _clocks = run_shard_hosts(_client(sim), PROMPTS, spec, out, len, 2, cluster.client,
                                     _slice_url(tmp_path), progress=lambda d, t, e, _ttft: reports.append((d, t, e)))
    records = pl.read_parquet(out)
    assert records.height == spec.requests and records["request_id"].n_unique() == spec.requests
    # While the 4-s shard ran, the slices' progress came back added up (a live view showed 0 until the end).
    assert reports, "no progress from the slices"
    done = [d for d, _, _ in reports]
    assert done == sorted(done) and 0 < done[-1] <= spec.requests, reports
    assert {t for _, t, _ in reports} == {spec.requests} and not any(e for _, _, e in reports)
    by_host = records.group_by("client_host").len()
    assert by_host.height == 2 and by_host["len"].min() >= spec.requests // 2 - 1
    # The two hosts' arrivals together follow the one seeded schedule: its rate, not half of it.
    assert result.scheduled_rate is not None
    assert result.achieved_rate >= result.scheduled_rate * 0.9, (result.achieved_rate, result.scheduled_rate)


def test_a_worker_that_cannot_write_the_output_fails_before_sending(cluster: Cluster, sim: str,
                                                                     tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with InFlight(sim) as seen, pytest.raises(FMBenchError, match="cannot write the run's output"):
        run_shard_hosts(_client(sim), PROMPTS, _spec(concurrency=2), tmp_path / "m.parquet", len, 2,
                        cluster.client, lambda k: str(blocker / f"s.host-{k}.parquet"))
    assert max(seen.samples, default=0) == 0
    assert not (tmp_path / "m.parquet").exists()


def test_a_host_killed_mid_shard_fails_the_shard_not_shortens_it(sim: str, tmp_path: Path) -> None:
    c = Cluster(["host-x", "host-y"])
    try:
        out = tmp_path / "m.parquet"
        box: dict[str, BaseException] = {}

        def go() -> None:
            try:
                run_shard_hosts(_client(sim), PROMPTS, _spec(concurrency=4, requests=100_000), out, len, 2,
                                c.client, _slice_url(tmp_path))
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                box["exc"] = exc

        t = threading.Thread(target=go, daemon=True)
        t.start()
        with httpx.Client(base_url=sim, timeout=10) as http:
            deadline = time.monotonic() + 120
            while http.get("/fmbench/stats").json()["in_flight"] == 0:
                assert time.monotonic() < deadline and t.is_alive()
                time.sleep(0.05)
        c.kill("host-y")
        t.join(120)
        assert not t.is_alive()
        assert isinstance(box.get("exc"), FMBenchError), box
        assert "left the cluster" in str(box["exc"]) or "failed" in str(box["exc"])
        assert not out.exists()
        # The surviving host stopped too: the endpoint drains to nothing (on a loaded machine the stop
        # signal's scheduler round trips can take tens of seconds).
        with httpx.Client(base_url=sim, timeout=10) as http:
            deadline = time.monotonic() + 180
            while http.get("/fmbench/stats").json()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert http.get("/fmbench/stats").json()["in_flight"] == 0
    finally:
        c.close()


def test_the_caller_takes_a_slice_as_soon_as_it_ends(cluster: Cluster) -> None:
    """Between its checks the caller waits for the first slice to end, not for a fixed pause: a finished
    slice's summary is taken (and its host free to leave) at once. A failed or cancelled slice ends the
    wait without an error of its own, for the checks to report it."""
    dask = cluster.client
    assert dask is not None
    a, b = sorted(dask.scheduler_info()["workers"])
    hold = distributed.Event(f"fmbench-test-hold-{uuid.uuid4().hex[:8]}", client=dask)
    # the long slice waits 30 s at most on the event, far less than the caller's 300-s bound below
    long = dask.submit(hold.wait, 30, workers=[b], allow_other_workers=False, pure=False)
    short = dask.submit(len, "done", workers=[a], allow_other_workers=False, pure=False)
    try:
        _wait_first([long, short], 300.0)
        assert short.status == "finished" and long.status == "pending"
    finally:
        hold.set()
    assert long.result(timeout=60) is True
    gone = dask.submit(hold.wait, 30, workers=[b], pure=False)
    dask.cancel([gone])
    _wait_first([gone], 300.0)
    assert gone.status == "cancelled"


def test_a_host_lost_after_its_slice_finished_costs_the_shard_nothing(tmp_path: Path) -> None:
    """One host's slice ends long before the other's, the run lets go of it at once, and its worker is
    lost then: the shard still ends with every request of both slices (the first's records are already
    on the run's storage). Held, a finished slice would be computed again by Dask on the lost worker's
    behalf, pinned to a worker that is gone: the shard would fail although all of it was measured."""
    # Requests alternate between the hosts (even ids on host 0) and so do the two prompts: host 0
    # sends the short one (~50 ms a request), host 1 the long one (TTFT 20 ms + 10 ms per prompt token:
    # ~1.5 s a request, paced by the server whatever the machine's load).
    endpoint = SimulatedEndpoint(provider="simulated", model="sim", ttft_ms=20, prefill_ms_per_token=10,
                                 tpot_ms=1, output_tokens=8, max_batch=8, seed=1)
    prompts = [Prompt("short", "say hi", 2), Prompt("long", " ".join(["word"] * 150), 150)]
    spec = _spec(concurrency=2, requests=8, warmup=0)
    c = Cluster(["host-s1", "host-s2"])
    try:
        with SimulatedServerThread(endpoint) as srv:
            client = make_client(endpoint, InferenceConfig(max_tokens=8, stream=True), url=srv.url)
            out = tmp_path / "m.parquet"
            box: dict[str, Any] = {}

            def go() -> None:
                try:
                    box["result"] = run_shard_hosts(client, prompts, spec, out, len, 2, c.client, _slice_url(tmp_path))
                except BaseException as exc:  # noqa: BLE001 - handed to the test
                    box["exc"] = exc

            t = threading.Thread(target=go, daemon=True)
            t.start()
            deadline = time.monotonic() + 180
            holder = None
            while True:  # slice 0 finished and let go of by the run, while slice 1 still sends
                assert time.monotonic() < deadline, "slice 0 did not finish"
                assert t.is_alive(), f"the shard ended holding slice 0 to the last: {box}"
                # slice 0 running, or its result in its worker's memory (asked in this order, the
                # task cannot pass from one to the other unseen) ...
                on = [addr for addr, keys in [*c.client.processing().items(), *c.client.has_what().items()]
                      if any(str(k).endswith("-slice-0") for k in keys)]
                if on:
                    holder = str(c.client.scheduler_info()["workers"][on[0]]["name"])
                elif holder is not None:  # ... and then gone: nobody holds the slice any more
                    break
                time.sleep(0.02)
            c.kill(holder)
            t.join(180)
            assert not t.is_alive()
    finally:
        c.close()
    assert "exc" not in box, box
    result, clocks = box["result"]
    records = pl.read_parquet(out)
    assert result.requests == 8 and records.height == 8 and sorted(records["request_id"]) == list(range(8))
    assert records["ok"].all() and result.errors == 0
    assert sorted(records["client_host"].unique()) == ["host-s1", "host-s2"] and len(clocks) == 2
    # the lost host's slice had ended before the other's: it was lost after, not during, its slice
    by_host = {h: g["t_end"].max() for (h,), g in records.group_by("client_host")}
    assert by_host[holder] < max(by_host.values())


_CALLER = """
import sys
from pathlib import Path

import distributed

from fmbench.config import InferenceConfig, SimulatedEndpoint
from fmbench.endpoints import make_client
from fmbench.loadgen import ShardSpec
from fmbench.loadgen.hosts import run_shard_hosts
from fmbench.protocol import Prompt

address, url, tmp, endpoint, spec = sys.argv[1:6]
client = make_client(SimulatedEndpoint.model_validate_json(endpoint), InferenceConfig(max_tokens=16, stream=True),
                     url=url)
prompts = [Prompt(f"p{i}", f"prompt number {i}", 3) for i in range(5)]
run_shard_hosts(client, prompts, ShardSpec.model_validate_json(spec), Path(tmp) / "m.parquet", len, 2,
                distributed.Client(address, timeout=60),
                lambda k: str(Path(tmp) / "run" / "shards" / f"s.host-{k}.parquet"))
"""


def test_a_shard_retried_after_its_caller_died_never_meets_the_old_load(sim: str, tmp_path: Path) -> None:
    """The process driving a shard over two hosts (on a cluster: the worker running the shard's task) is
    killed mid-shard, and the shard is run again (as Dask reruns the task of a lost worker): the old
    slices stop sending, and the new attempt starts only once they have, so the endpoint never holds
    more than the shard's concurrency."""
    from fmbench.loadgen.hosts import CALLER_LOST_S

    # Two threads a worker, as real workers have: an old slice still running does not keep a new one out.
    cluster = Cluster(["host-r1", "host-r2"], nthreads=2)
    try:
        _retry_after_the_caller_died(cluster, sim, tmp_path, CALLER_LOST_S)
    finally:
        cluster.close()


def _retry_after_the_caller_died(cluster: Cluster, sim: str, tmp_path: Path, caller_lost_s: float) -> None:
    # The same shard as `_spec` with `_slice_url(tmp_path)`, far too long to end by itself in this test.
    caller = subprocess.Popen([sys.executable, "-c", _CALLER, cluster.address, sim, str(tmp_path),
                               _endpoint().model_dump_json(), _spec(concurrency=4, requests=100_000).model_dump_json()],
                              start_new_session=True)
    try:
        with httpx.Client(base_url=sim, timeout=10) as http:
            deadline = time.monotonic() + 180
            while http.get("/fmbench/stats").json()["in_flight"] == 0:
                assert time.monotonic() < deadline and caller.poll() is None
                time.sleep(0.05)
        caller.send_signal(signal.SIGKILL)
        caller.wait(10)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait(10)
    spec = _spec(concurrency=4, requests=40)
    out = tmp_path / "retry.parquet"
    started = time.monotonic()
    with InFlight(sim) as seen:
        result, _clocks = run_shard_hosts(_client(sim), PROMPTS, spec, out, len, 2, cluster.client,
                                          _slice_url(tmp_path))
    # 100 000 requests would take ~20 min: the old slices stopped, and the retry waited for them.
    assert max(seen.samples) <= 4, max(seen.samples)
    assert time.monotonic() - started >= caller_lost_s
    records = pl.read_parquet(out)
    assert result.requests == 40 and records.height == 44 and records["request_id"].n_unique() == 44
    with httpx.Client(base_url=sim, timeout=10) as http:
        assert http.get("/fmbench/stats").json()["in_flight"] == 0
    assert not (tmp_path / "m.parquet").exists()


RUN_CONFIG = """
name: hosts
tokenizer: cl100k_base
buckets: [[1, 500]]
datasets:
  - {name: synthetic, source: synthetic, prompts_per_bucket: 8, seed: 0}
experiments:
  - name: sim
    endpoint: {provider: simulated, ttft_ms: 10, tpot_ms: 1, output_tokens: 8, max_batch: 32}
    inference: {max_tokens: 8, stream: true}
    concurrency_levels: [4]
    requests_per_level: 40
    warmup_requests: 2
    client_hosts: 2
"""


def test_a_run_with_client_hosts_records_hosts_and_clocks_in_the_manifest(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from fmbench.config import load_config_text
    from fmbench.pipeline import run_benchmark

    monkeypatch.setenv("FMBENCH_TASK_RUNNER", cluster.address)
    run_benchmark(load_config_text(RUN_CONFIG), output=str(tmp_path), run_id="r1")
    run_dir = tmp_path / "hosts" / "r1"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (shard,) = manifest["shards"]
    assert shard["status"] == "ok", shard.get("error")
    assert {h["host"] for h in shard["client_hosts"]} == {"host-a", "host-b"}
    assert all("offset_s" in h and h["uncertainty_s"] >= 0 for h in shard["client_hosts"])
    assert shard["client_load"] is not None
    requests = pl.read_parquet(run_dir / "requests.parquet")
    assert requests.height == 42 and requests["request_id"].n_unique() == 42
    assert set(requests["client_host"].to_list()) == {"host-a", "host-b"}
    # Each host wrote its slice into the run's storage itself.
    assert sorted(p.name for p in (run_dir / "shards" / "hosts").iterdir()) == [
        f"{shard['shard_id']}.host-0.parquet", f"{shard['shard_id']}.host-1.parquet"]


def test_a_cluster_whose_workers_cannot_reach_the_output_fails_before_measuring(
        s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fmbench import storage
    from fmbench.config import load_config_text
    from fmbench.pipeline import run_benchmark

    # This machine reaches the bucket (moto); the worker's S3 endpoint refuses every connection.
    env = dict(os.environ) | {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{_free_port()}", "AWS_MAX_ATTEMPTS": "1",
                              "AWS_RETRY_MODE": "standard"}
    c = Cluster(["host-s3"], env=env)
    try:
        with pytest.raises(StorageError, match="client host host-s3 cannot write the run's output s3://") as exc:
            check_hosts_reach(c.client, f"{s3_bucket}/run")
        assert "\n" not in str(exc.value)
        monkeypatch.setenv("FMBENCH_TASK_RUNNER", c.address)
        with pytest.raises(StorageError, match="client host host-s3 cannot write"):
            run_benchmark(load_config_text(RUN_CONFIG.replace("client_hosts: 2", "client_hosts: 1")),
                          output=s3_bucket, run_id="r1")
        # Nothing was measured: no shard records, no calibration.
        assert not storage.list_files(f"{s3_bucket}/hosts/r1/shards", ".parquet")
        assert not storage.exists(f"{s3_bucket}/hosts/r1/calibration.json")
    finally:
        c.close()


def test_parallel_endpoints_measure_at_once_on_different_workers(
        cluster: Cluster, fake_openai: FakeOpenAI, prefect_harness: None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two experiments on two endpoints (two models of one server) measure at the same instant on the
    two workers; each experiment's two shards (same endpoint) never overlap.

    The server holds every request of these models until both models have sent one (`FakeOpenAI`'s
    ``meet``), so two chains that run at once are both in flight at that instant whatever the load
    of the machine, and two that run one after the other are not (the first times out at the meeting).
    """
    import yaml

    from flows.benchmark import benchmark

    fake_openai.reset()
    common = {"inference": {"max_tokens": 8}, "concurrency_levels": [1, 2], "requests_per_level": 6,
              "warmup_requests": 0}
    cfg = {"name": "par", "output": str(tmp_path / "results"), "parallel_endpoints": True, "buckets": [[1, 500]],
           "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 2, "seed": 0}],
           "experiments": [{"name": name, "endpoint": {"provider": "openai", "base_url": fake_openai.url,
                                                        "model": f"ok:meet=2:tpot=0.02:n=8:who={name}"}, **common}
                           for name in ("a", "b")]}
    path = tmp_path / "par.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.setenv("FMBENCH_TASK_RUNNER", cluster.address)  # read as the run starts
    benchmark(config=str(path), run_id="r", preflight=False, png=False)  # a probe would wait at the meeting

    run_dir = tmp_path / "results" / "par" / "r"
    requests = pl.read_parquet(run_dir / "requests.parquet")
    assert requests["ok"].all() and requests.height == 4 * 6
    # Every request of a shard came from one worker, named in its records (t_* on the one monotonic
    # clock of this machine).
    shards = (requests.group_by("experiment", "shard_id", "concurrency")
              .agg(pl.col("t_start").min().alias("start"), pl.col("t_end").max().alias("end"),
                   pl.col("client_host").unique().alias("hosts"))
              .sort("experiment", "concurrency"))
    assert all(len(h) == 1 and h[0] in ("host-a", "host-b") for h in shards["hosts"].to_list()), shards
    by_experiment = {name: sorted((r for r in shards.to_dicts() if r["experiment"] == name), key=lambda r: r["start"])
                     for name in ("a", "b")}

    def overlap(x: dict[str, Any], y: dict[str, Any]) -> bool:
        return bool(x["start"] < y["end"] and y["start"] < x["end"])

    # The two experiments' first shards were measuring at the same time, on different workers.
    a1, b1 = by_experiment["a"][0], by_experiment["b"][0]
    assert overlap(a1, b1), shards
    assert a1["hosts"] != b1["hosts"], shards
    # Two shards on the same endpoint never overlap.
    for first, second in by_experiment.values():
        assert not overlap(first, second), shards


def _start_flow(c: Cluster, path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Thread, dict[str, object]]:
    """The benchmark flow of the config at ``path`` on the cluster's Dask runner, started in a thread
    (run id ``r``): the thread and a box that gets the report, or the exception the flow raised."""
    from flows.benchmark import benchmark

    monkeypatch.setenv("FMBENCH_TASK_RUNNER", c.address)  # read as the run starts
    box: dict[str, object] = {}

    def go() -> None:
        try:
            box["report"] = benchmark(config=str(path), run_id="r", preflight=False, png=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc

    flow = threading.Thread(target=go, daemon=True)
    flow.start()
    return flow, box


def test_a_worker_killed_mid_shard_in_a_run_never_leaves_the_shard_short(
        fake_openai: FakeOpenAI, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker measuring a shard of a run on a cluster is killed mid-shard: the run ends and the shard
    is either measured again in full elsewhere (Dask reruns the task of a lost worker; seen here) or
    recorded failed, never ok with fewer requests."""
    import yaml

    from fmbench.rundir import load_manifest

    model = "ok:tpot=0.05:n=10:who=killed"  # 0.5 s a request: 40 at concurrency 2 take ~10 s
    cfg = {"name": "kill", "output": str(tmp_path / "results"), "buckets": [[1, 500]],
           "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 2, "seed": 0}],
           "experiments": [{"name": "k", "endpoint": {"provider": "openai", "base_url": fake_openai.url, "model": model},
                            "inference": {"max_tokens": 10}, "concurrency_levels": [2], "requests_per_level": 40,
                            "warmup_requests": 0}]}
    path = tmp_path / "kill.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    c = Cluster(["host-k1", "host-k2"])
    try:
        flow, box = _start_flow(c, path, monkeypatch)
        deadline = time.monotonic() + 300
        victim = None
        while victim is None:
            assert time.monotonic() < deadline and flow.is_alive(), box
            sent = sum(model == b.get("model") for b in fake_openai.stats()["bodies"])
            if sent >= 4:
                workers = c.client.scheduler_info()["workers"]
                victim = next((workers[addr]["name"] for addr, keys in c.client.processing().items()
                               if any("run_shard_task" in str(k) for k in keys)), None)
            time.sleep(0.1)
        c.kill(str(victim))
        flow.join(300)
        assert not flow.is_alive()
    finally:
        c.close()
    run_dir = tmp_path / "results" / "kill" / "r"
    (shard,) = load_manifest(str(run_dir)).shards
    if shard["status"] == "ok":  # measured again from the start on the other worker
        requests = pl.read_parquet(run_dir / "requests.parquet").filter(pl.col("shard_id") == shard["shard_id"])
        assert shard["requests"] == 40 and requests.height == 40 and requests["request_id"].n_unique() == 40, shard
        assert victim not in requests["client_host"].to_list(), "records of the killed worker's attempt"
    else:
        assert shard["status"] == "failed" and shard["error"], shard


def _simulators(c: Cluster) -> dict[int, tuple[str, str]]:
    """The simulated endpoints the cluster's workers run now: pid -> (model, worker name)."""
    import psutil

    found: dict[int, tuple[str, str]] = {}
    for name, proc in c.procs.items():
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for child in children:
            try:
                argv = child.cmdline()
            except psutil.Error:
                continue
            if "fmbench.simulator" in argv and "--model" in argv:
                found[child.pid] = (argv[argv.index("--model") + 1], name)
    return found


def test_a_lost_worker_never_deploys_an_endpoint_again(
        prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dask computes again a finished task whose result died with its worker, for as long as a client
    holds its future (PrefectHQ/prefect#15442), and Prefect runs the task's body again. The run holds
    each deploy until its endpoint is deleted; it must let go of the task once it has the result, or
    a lost worker deploys the endpoint anew (here a second simulator; on SageMaker, after the
    teardown, an endpoint nobody deletes)."""
    import yaml

    from fmbench.rundir import load_manifest

    common = {"concurrency_levels": [1], "warmup_requests": 0, "inference": {"max_tokens": 20}}
    cfg = {"name": "lost", "output": str(tmp_path / "results"), "buckets": [[1, 500]], "deploy_ahead": 0,
           "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 2, "seed": 0}],
           "experiments": [
               # a lives ~2 s (0.4 s a request), long enough for the test's polls to see it on any machine
               {"name": "a", "endpoint": {"provider": "simulated", "model": "sim-a", "ttft_ms": 20, "tpot_ms": 20,
                                          "output_tokens": 20}, "requests_per_level": 4, **common},
               # b measures for ~8 s (0.4 s a request, one at a time): the worker is lost meanwhile
               {"name": "b", "endpoint": {"provider": "simulated", "model": "sim-b", "ttft_ms": 20, "tpot_ms": 20,
                                          "output_tokens": 20}, "requests_per_level": 20, **common}]}
    path = tmp_path / "lost.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    c = Cluster(["host-1", "host-2"], nthreads=2)
    seen: dict[int, tuple[str, str]] = {}
    try:
        flow, box = _start_flow(c, path, monkeypatch)
        deadline = time.monotonic() + 300
        victim = None
        while victim is None:  # a's endpoint deployed and deleted, b's measuring
            assert time.monotonic() < deadline and flow.is_alive(), box
            now = _simulators(c)
            seen.update(now)
            models = {model for model, _ in now.values()}
            # b's server is up before its deploy task has ended (Prefect still records its result):
            # a worker killed then is one whose *running* task Dask rightly runs again elsewhere.
            # Only finished deploys are the case here.
            deploying = any("deploy_task" in str(k) for keys in c.client.processing().values() for k in keys)
            if ("sim-b" in models and "sim-a" not in models and not deploying
                    and any(m == "sim-a" for m, _ in seen.values())):
                victim = next(worker for model, worker in seen.values() if model == "sim-a")
            time.sleep(0.05)
        c.kill(victim)  # it held a's (and maybe b's) deploy result
        while flow.is_alive():
            assert time.monotonic() < deadline, "the run did not end"
            seen.update(_simulators(c))
            time.sleep(0.05)
        seen.update(_simulators(c))
        left = _simulators(c)
    finally:
        c.close()
    assert "exc" not in box, box
    deployed = sorted(model for model, _ in seen.values())
    assert deployed == ["sim-a", "sim-b"], f"endpoints started: {deployed} (a lost worker's deploy ran again)"
    assert not left, f"simulated endpoints still running after the run: {left}"
    timelines = load_manifest(str(tmp_path / "results" / "lost" / "r")).endpoints
    assert {name: t.deleted_at is not None for name, t in timelines.items()} == {"a": True, "b": True}


def test_auto_client_hosts_take_what_the_calibrated_load_needs_up_to_the_cluster(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from fmbench.calibration import Calibration
    from fmbench.config import load_config_text
    from fmbench.pipeline.shards import _client_hosts

    cal = Calibration(created_at="2026-01-01T00:00:00Z", host="h", cpu_count=2, load_avg=[0.0, 0.0, 0.0],
                      python="3.11", duration_s=2.0, rtt_p50_ms=0.2, rtt_p99_ms=0.5, max_request_rate=2000.0,
                      max_stream_rate=1000.0, max_chunk_rate=256_000.0, request_cost_s=1 / 2000,
                      chunk_cost_s=2e-6, cpu_per_request_ms=0.4, client_cpu_util=1.0)
    experiment = load_config_text(RUN_CONFIG.replace("client_hosts: 2", "client_hosts: auto")).experiments[0]
    monkeypatch.setenv("FMBENCH_TASK_RUNNER", cluster.address)
    light = _spec(request_rate=10.0)
    heavy = _spec(request_rate=20_000.0)  # ten times one client's ceiling: more hosts than the cluster has
    assert _client_hosts(experiment, light, cal) == 1
    assert _client_hosts(experiment, heavy, cal) == 2


def test_a_slice_ends_when_its_load_ends_even_while_a_stop_check_hangs() -> None:
    """The slice's stop watcher asks the scheduler from threads; one round trip that never answers
    must not hold the slice (``asyncio.run`` waits for its default executor's threads at the end)."""
    import asyncio

    from fmbench.loadgen.hosts import _watch_stop

    answer = threading.Event()
    asked = threading.Event()

    class HungEvent:  # a Dask Event whose scheduler does not answer
        def is_set(self) -> bool:
            asked.set()
            answer.wait(60)
            return False

    class Beat:
        def get(self, timeout: float) -> int:
            return 1

    async def slice_main() -> None:
        load = asyncio.ensure_future(asyncio.to_thread(asked.wait, 60))  # ends once the check hangs
        watcher = asyncio.ensure_future(_watch_stop(HungEvent(), Beat(), load))
        try:
            await load
        finally:
            watcher.cancel()

    done = threading.Event()
    runner = threading.Thread(target=lambda: (asyncio.run(slice_main()), done.set()), daemon=True)
    runner.start()
    try:
        assert done.wait(30), "the slice was held by its hung stop check"
    finally:
        answer.set()
        runner.join(60)


def _stoppable_work() -> Any:
    """Work for a worker: wait two minutes unless the run's stop, carried by its event name, ends it
    first. A local function, so it is sent by value: the workers cannot import the tests."""

    def work(event_name: str) -> str:
        import asyncio

        from distributed import Variable

        from fmbench.interrupts import Stopped, current_stop_scope, run_until_stopped, worker_stop_scope

        with worker_stop_scope(event_name):
            Variable(f"{event_name}-started").set(True)
            try:
                run_until_stopped(asyncio.sleep(120), current_stop_scope())
            except Stopped:
                return "stopped"
        return "not stopped"

    return work

def test_a_run_stop_reaches_work_on_a_worker_and_the_run_waits_for_its_end(cluster: Cluster) -> None:
    """A run's stop scope does not travel to a Dask worker with the task (contextvars stay in this
    process): `reach_workers` carries it there. The work in flight is stopped, the stopping run
    returns only once that work has ended, and work that starts after the stop is stopped at once."""
    from distributed import Variable

    from fmbench.interrupts import StopScope, reach_workers

    client = cluster.client
    assert client is not None
    work = _stoppable_work()
    scope = StopScope()
    name, ended = reach_workers(scope, client)
    running = client.submit(work, name, pure=False)
    running.add_done_callback(lambda _: ended())
    assert Variable(f"{name}-started", client=client).get(timeout=120) is True
    assert scope.stop(wait_s=120) == 1
    assert running.done()  # the stop returned after the work's end, not before
    assert running.result(timeout=5) == "stopped"

    name, ended = reach_workers(scope, client)  # submitted after the run stopped
    late = client.submit(work, name, pure=False)
    late.add_done_callback(lambda _: ended())
    assert late.result(timeout=60) == "stopped"


def test_outside_a_worker_a_stop_event_changes_nothing() -> None:
    from fmbench.interrupts import current_stop_scope, worker_stop_scope

    with worker_stop_scope("fmbench-stop-x"):
        assert current_stop_scope() is None


def _reporting_work() -> Any:
    """Work for a worker that reports a shard's and a deploy's progress as a run's steps do (sent by value)."""

    def work(name: str) -> None:
        from fmbench import progress

        with progress.to_run(name):
            progress.shard_started("e__d__b__c4", 12)
            progress.shard_progressed("e__d__b__c4", 7, 12, 1, 0.081)
            with progress.deploy_scope("next", "sagemaker"):
                progress.deploy_status("Creating")

    return work


def test_what_a_step_on_a_worker_reports_shows_in_the_runs_progress(cluster: Cluster) -> None:
    """A step on a Dask worker reports into that worker's process: `to_run` sends it to the run's
    process, where `from_workers` puts it in the watched progress as if the step ran there (without
    it, a Dask run's live view showed no running shard and no ETA). A report that arrives after the
    run has the shard's outcome changes nothing."""
    from fmbench import progress
    from fmbench.interrupts import StopScope

    client = cluster.client
    assert client is not None
    name = StopScope().event_name
    with progress.watch() as tracker:
        progress.run_planned("r", [SimpleNamespace(shard_id="e__d__b__c4", experiment="e", requests=10, warmup=2),
                                   SimpleNamespace(shard_id="e__d__b__c8", experiment="e", requests=10, warmup=2)])
        progress.from_workers(client, name)
        client.submit(_reporting_work(), name, pure=False).result(timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snap = tracker.snapshot()
            if snap.deploys and snap.deploys[0].ended is not None:
                break
            time.sleep(0.05)
        shard = next(s for s in snap.shards if s.shard_id == "e__d__b__c4")
        assert (shard.state, shard.done, shard.total, shard.errors, shard.ttft_p50_s) == ("running", 7, 12, 1, 0.081)
        assert shard.started is not None and snap.eta_s() is not None
        [deploy] = snap.deploys
        assert (deploy.experiment, deploy.provider, deploy.status, deploy.failed) == ("next", "sagemaker", "ready", False)
        # The run took the shard's outcome; a report from its worker that comes later is stale.
        progress.shard_ended("e__d__b__c4", "e", "ok", requests=10)
        progress._replay(["shard_progressed", "e__d__b__c4", 9, 12, 1, 0.08])
        assert next(s for s in tracker.snapshot().shards if s.shard_id == "e__d__b__c4").done == 12
    # The run is over: the scheduler keeps none of its events (a long-lived cluster would, for every run).
    assert client.get_events(progress._topic(name))
    progress.stop_following(client, name)
    assert not client.get_events(progress._topic(name))


def test_outside_a_worker_progress_is_sent_nowhere() -> None:
    from fmbench import progress

    with progress.to_run("fmbench-stop-x"):
        assert progress._forward.get() is None
