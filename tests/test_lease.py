"""A run stored in S3 is held from every host (fmbench.lease), against moto in server mode."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import logging
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import s3fs

from fmbench import storage
from fmbench.errors import ConfigError
from fmbench.lease import RunLease, lease_url
from fmbench.regression.history import list_run_ids
from fmbench.rundir import hold_run


def _stored(url: str) -> dict[str, Any] | None:
    bucket, key = url.split("://", 1)[1].split("/", 1)
    s3 = boto3.client("s3")
    try:
        answer = s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        return None
    return dict(json.loads(answer["Body"].read()))


def _plant(url: str, **holder: Any) -> None:
    """A hold written by another process (another host, or a dead process of this one)."""
    bucket, key = url.split("://", 1)[1].split("/", 1)
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(holder).encode())


def _until(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def run_url(s3_bucket: str) -> str:
    return f"{s3_bucket}/bench/name/r1"


def test_the_hold_lives_beside_the_run_never_listed_as_one(run_url: str) -> None:
    assert lease_url(run_url) == run_url.rsplit("/", 1)[0] + "/.fmbench-holds/r1.json"
    lease = RunLease(run_url, "r1", ttl_s=30)
    lease.acquire()
    try:
        storage.write_text(storage.join(run_url, "config.yml"), "name: name\n")
        assert list_run_ids(run_url.rsplit("/", 1)[0]) == ["r1"]
    finally:
        lease.release()


def test_a_held_run_is_refused_to_a_second_holder_and_free_once_given_back(run_url: str) -> None:
    first = RunLease(run_url, "r1", ttl_s=30)
    first.acquire()
    try:
        with pytest.raises(ConfigError, match=rf"run r1 is in progress \(pid {os.getpid()} on "):
            RunLease(run_url, "r1").acquire()
    finally:
        first.release()
    assert _stored(lease_url(run_url)) is None  # given back: deleted
    second = RunLease(run_url, "r1", ttl_s=30)
    second.acquire()
    assert (_stored(lease_url(run_url)) or {}).get("pid") == os.getpid()
    second.release()


def test_a_hold_from_another_host_is_refused_until_it_lapses(run_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _plant(lease_url(run_url), pid=4242, host="another-host", token="x", ttl_s=3.0, renewal=0)
    with pytest.raises(ConfigError, match=r"pid 4242 on another-host.* lapses 3 s after its last renewal"):
        RunLease(run_url, "r1", ttl_s=30).acquire()
    time.sleep(4.2)  # (S3 keeps Last-Modified to the second)
    caplog.set_level(logging.WARNING, logger="fmbench")
    lease = RunLease(run_url, "r1", ttl_s=30)
    lease.acquire()
    try:
        assert (_stored(lease_url(run_url)) or {}).get("host") == platform.node()
        assert "took over the hold left by pid 4242 on another-host (not renewed for" in caplog.text
    finally:
        lease.release()


def test_a_hold_left_by_a_dead_process_of_this_host_is_taken_at_once(run_url: str) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    _plant(lease_url(run_url), pid=gone.pid, host=platform.node(), token="x", ttl_s=600.0, renewal=0)
    lease = RunLease(run_url, "r1", ttl_s=30)
    lease.acquire()  # a crashed run resumed on its own host does not wait ten minutes
    lease.release()


def test_a_run_stays_held_while_its_process_renews_the_hold(run_url: str) -> None:
    lease = RunLease(run_url, "r1", ttl_s=3.0)  # renewed every 0.75 s
    lease.acquire()
    try:
        time.sleep(4.5)  # longer than the hold lasts without a renewal
        assert (_stored(lease_url(run_url)) or {}).get("renewal", 0) >= 2
        with pytest.raises(ConfigError, match="is in progress"):
            RunLease(run_url, "r1").acquire()
    finally:
        lease.release()
    assert lease.lost is None


def test_a_process_that_lost_its_hold_says_so_and_leaves_the_new_holder_alone(
        run_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="fmbench")
    lease = RunLease(run_url, "r1", ttl_s=1.0)
    lease.acquire()
    # Another host took the hold over (this process had stalled past its lapse, say).
    _plant(lease_url(run_url), pid=7, host="another-host", token="y", ttl_s=60.0, renewal=0)
    assert _until(lambda: lease.lost is not None)
    lease.release()
    assert (_stored(lease_url(run_url)) or {}).get("host") == "another-host"  # not deleted under its holder
    assert "run r1 lost its hold to another process (pid 7 on another-host) at " in (lease.lost or "")
    assert (lease.lost or "") in caplog.text


def test_a_write_of_its_own_whose_answer_was_lost_keeps_the_hold(run_url: str) -> None:
    # A renewal that reached S3 but whose answer did not (botocore retries it, and the retry's
    # If-Match then names the ETag before it): the hold is still this process's, not lost. The
    # hold lasts a minute, so its thread does not renew it while the test renews it by hand.
    lease = RunLease(run_url, "r1", ttl_s=60)
    lease.acquire()
    try:
        lease._etag = '"not-the-stored-one"'  # as after a renewal whose answer was lost
        assert lease._renew() is None
        assert lease._renew() is None  # and the next renewal goes through as usual
        assert (_stored(lease_url(run_url)) or {}).get("token") == lease._token
    finally:
        lease.release()
    assert lease.lost is None
    assert _stored(lease_url(run_url)) is None  # and it is given back as its own

def test_a_first_write_of_its_own_whose_answer_was_lost_is_taken_as_its_hold(run_url: str) -> None:
    lease = RunLease(run_url, "r1", ttl_s=30)
    # What its first PUT left in S3 before a retry of it found the object there (If-None-Match).
    _plant(lease_url(run_url), pid=os.getpid(), host=platform.node(), token=lease._token, ttl_s=30, renewal=0)
    lease.acquire()  # not "in progress (pid <this one>)"
    lease.release()
    assert _stored(lease_url(run_url)) is None


def test_a_hold_deleted_under_a_running_run_is_taken_again(run_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fmbench")
    lease = RunLease(run_url, "r1", ttl_s=60)  # renewed here by hand (its thread waits 15 s)
    lease.acquire()
    try:
        bucket, key = lease_url(run_url).split("://", 1)[1].split("/", 1)
        boto3.client("s3").delete_object(Bucket=bucket, Key=key)  # by hand, or by a lifecycle rule
        assert lease._renew() is None
        assert (_stored(lease_url(run_url)) or {}).get("token") == lease._token
        with pytest.raises(ConfigError, match="is in progress"):  # held again: a second taker is refused
            RunLease(run_url, "r1").acquire()
        assert "its hold in " in caplog.text and "had been deleted; it holds the run again" in caplog.text
    finally:
        lease.release()
    assert lease.lost is None
    assert _stored(lease_url(run_url)) is None

@contextlib.contextmanager
def _store_that_ignores(target: str, headers: tuple[str, ...]) -> Iterator[str]:
    """An S3-compatible store that accepts conditional writes and ignores them: an HTTP proxy in
    front of moto that drops ``headers`` from every request. Yields its URL."""
    host, port = target.removeprefix("http://").split(":")

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            kept = {k: v for k, v in self.headers.items() if k.lower() not in headers}
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request(self.command, self.path, body=body, headers=kept)
            answer = conn.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for k, v in answer.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("ignored", [("if-none-match", "if-match"), ("if-match",)])
def test_a_store_that_ignores_conditional_writes_leaves_the_run_held_on_this_host_only(
        run_url: str, s3_env: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        ignored: tuple[str, ...]) -> None:
    # Another host's hold is there: a store that ignored If-None-Match would let it be overwritten.
    _plant(lease_url(run_url), pid=4242, host="another-host", token="x", ttl_s=60.0, renewal=0)
    caplog.set_level(logging.WARNING, logger="fmbench")
    with _store_that_ignores(s3_env, ignored) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        s3fs.S3FileSystem.clear_instance_cache()
        with hold_run(run_url, "r1") as hold:
            assert hold.lease is None  # held on this host only, and said so
        s3fs.S3FileSystem.clear_instance_cache()
    said = " and ".join({"if-none-match": "If-None-Match", "if-match": "If-Match"}[h] for h in ignored)
    assert "cannot hold run r1 across hosts" in caplog.text
    assert f"the store ignores conditional writes ({said}: a write S3 must refuse was accepted)" in caplog.text
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env)
    assert (_stored(lease_url(run_url)) or {}).get("host") == "another-host"  # untouched
    bucket, prefix = lease_url(run_url).split("://", 1)[1].split("/", 1)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [prefix]  # the check's own object is gone


def test_a_run_tidies_the_lapsed_holds_runs_killed_outright_left_beside_it(
        run_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fmbench")
    monkeypatch.setenv("FMBENCH_RUN_HOLD_S", "1")
    holds = lease_url(run_url).rsplit("/", 1)[0]
    _plant(f"{holds}/killed.json", pid=4242, host="another-host", token="x", ttl_s=1.0, renewal=3)
    _plant(f"{holds}/going.json", pid=4243, host="another-host", token="y", ttl_s=600.0, renewal=0)
    _plant(f"{holds}/.probe-0123456789abcdef.json")  # a store check cut short by a kill
    time.sleep(2.5)  # S3 stamps whole seconds: all three are now older than 1 s
    lease = RunLease(run_url, "r1", ttl_s=30)
    lease.acquire()
    try:
        bucket, prefix = holds.split("://", 1)[1].split("/", 1)
        left = sorted(o["Key"].rsplit("/", 1)[1]
                      for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))
        assert left == ["going.json", "r1.json"]  # a hold still within its own 600 s stays
        assert "removed the lapsed hold of run killed (pid 4242 on another-host)" in caplog.text
    finally:
        lease.release()


def test_a_hold_found_gone_after_it_lapsed_is_lost_not_taken_again(run_url: str) -> None:
    # A process that could not renew for longer than its hold lasts (stalled, or cut off from S3)
    # finds it gone: another process may have taken it over, resumed the run and given it back.
    lease = RunLease(run_url, "r1", ttl_s=60)  # renewed here by hand (its thread waits 15 s)
    lease.acquire()
    try:
        lease._written_at -= 100  # as if its last write S3 accepted was 100 s ago
        bucket, key = lease_url(run_url).split("://", 1)[1].split("/", 1)
        boto3.client("s3").delete_object(Bucket=bucket, Key=key)
        lost = lease._renew() or ""
    finally:
        lease.release()
    assert lost.startswith("run r1 could not renew its hold for 10")
    assert "(it lapses after 60 s) and found it gone at " in lost
    assert _stored(lease_url(run_url)) is None  # not made again

def test_hold_run_holds_an_s3_run_across_hosts(run_url: str) -> None:
    _plant(lease_url(run_url), pid=4242, host="another-host", token="x", ttl_s=60.0, renewal=0)
    with pytest.raises(ConfigError, match="another-host"), hold_run(run_url, "r1"):
        pass
    boto3.client("s3").delete_object(Bucket=run_url.split("/")[2], Key=lease_url(run_url).split("/", 3)[3])
    with hold_run(run_url, "r1"):
        assert (_stored(lease_url(run_url)) or {}).get("pid") == os.getpid()
    assert _stored(lease_url(run_url)) is None


def test_a_store_that_cannot_hold_the_run_leaves_it_held_on_this_host_only(
        s3_bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fmbench")
    gone = s3_bucket + "-gone"  # (deleted since the preflight checked it, say)
    with hold_run(f"{gone}/bench/name/r1", "r1") as hold:
        assert hold.lease is None
        hold.check()  # (nothing to lose)
    assert f"cannot hold run r1 across hosts ({gone}/bench/name/.fmbench-holds/r1.json: " in caplog.text


def test_a_bad_hold_duration_is_refused_naming_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from fmbench.settings import check_environment

    monkeypatch.setenv("FMBENCH_RUN_HOLD_S", "soon")
    with pytest.raises(ConfigError, match="FMBENCH_RUN_HOLD_S='soon'"):
        check_environment()


def test_a_run_whose_hold_was_taken_over_stops_measuring_and_keeps_what_it_measured(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch, no_png: None) -> None:
    """A run that stalled past its hold's lapse and lost it to another host stops: from then on the
    other process measures the run, and two loads on one endpoint would spoil both. Its shard in
    flight is not kept (measured again on resume), the one before is, and it writes no report."""
    import fmbench
    from fmbench.errors import StorageError

    monkeypatch.setenv("FMBENCH_RUN_HOLD_S", "1")
    run_url = f"{s3_bucket}/bench/held/r1"
    hold = lease_url(run_url)
    taken = threading.Event()

    def shards() -> list[str]:
        return storage.list_files(storage.join(run_url, "shards"), ".json")

    def take_over() -> None:  # another host, once the run has measured its first shard
        if _until(lambda: bool(shards()), 120):
            _plant(hold, pid=7, host="another-host", token="y", ttl_s=60.0, renewal=0)
            taken.set()

    thief = threading.Thread(target=take_over)
    thief.start()
    raw = {"name": "held", "buckets": [[1, 200]],
           "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 4, "seed": 1}],
           "experiments": [{"name": "sim", "concurrency_levels": [1, 2], "requests_per_level": 20,
                            "warmup_requests": 0,
                            "endpoint": {"provider": "simulated", "ttft_ms": 200, "tpot_ms": 2, "output_tokens": 4},
                            "inference": {"max_tokens": 4, "stream": True}}]}
    with pytest.raises(StorageError) as err:
        fmbench.run_benchmark(raw, output=f"{s3_bucket}/bench", run_id="r1", progress=False, png=False)
    thief.join()
    assert taken.is_set()
    assert "lost its hold to another process (pid 7 on another-host)" in str(err.value)
    assert "stopped measuring it" in str(err.value)
    measured = shards()
    assert len(measured) == 1 and measured[0].endswith("c1.json"), measured  # concurrency 1 kept, 2 never recorded
    assert not storage.exists(storage.join(run_url, "report.md"))
    sim = json.loads(storage.read_text(storage.join(run_url, "manifest.json")))["endpoints"]["sim"]
    assert sim["deleted_at"] and sim["deleted_at"] >= sim["last_shard_at"]  # what it started is gone, and billed
    assert (_stored(hold) or {}).get("host") == "another-host"  # its hold, not deleted by the run that lost it
