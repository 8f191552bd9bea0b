"""Test-wide settings and shared servers. Nothing here (or anywhere in the tests) reaches AWS or
the internet: AWS clients talk to moto on 127.0.0.1, endpoints are the simulated server."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAI

# Never let botocore look for instance credentials on the network, and never use a real profile.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.setdefault("AWS_CONFIG_FILE", os.devnull)
os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
os.environ.setdefault("BROWSER_PATH", "/usr/bin/chromium")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Runs started by tests use Prefect's per-run embedded server (none outlives the test) and a cache
# (host calibration) of their own session, never the user's.
os.environ.setdefault("FMBENCH_PREFECT_API", "embedded")
os.environ.setdefault("FMBENCH_CACHE_DIR", tempfile.mkdtemp(prefix="fmbench-test-cache-"))


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server (S3, SageMaker, CloudWatch, ...) on 127.0.0.1 for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point the standard AWS settings at the moto server; yields its URL."""
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    s3fs.S3FileSystem.clear_instance_cache()
    yield moto_url
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(s3_env: str) -> str:
    """A fresh, empty bucket on the moto server; yields ``s3://NAME``."""
    import uuid

    import boto3

    name = f"fmbench-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Run flows in this process against a temporary local Prefect server and database (one per
    session: a fresh database takes ~20 s to migrate)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    """The scripted OpenAI-compatible server of `tests.support.fake_openai`, in its own process."""
    srv = FakeOpenAI().start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _no_heartbeat_outlives_its_test() -> Iterator[None]:
    """A test that deploys on moto and never ends its run leaves its resources in this process's
    heartbeat (`fmbench.deploy.heartbeat.HEARTBEATS`); the next test's moto reset deletes them, and a
    later renewal of a resource moto no longer has is a 500 that moto logs into whatever test is
    running then. A run's heartbeats end with its test."""
    yield
    from fmbench.deploy.heartbeat import HEARTBEATS

    with HEARTBEATS._lock:
        HEARTBEATS._held.clear()


@pytest.fixture
def no_png(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without Chrome: kaleido's export (in its child process) finds no browser."""
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/bin")


# ---------------------------------------------------------------- test tiers

_TESTS = Path(__file__).parent
#: Directories whose tests all start Prefect, moto, `fmbench` subprocesses or real servers.
_INTEGRATION_DIRS = {"aws", "deployments", "faults", "flows", "realservers"}
#: Modules elsewhere whose tests start a server process (FakeOpenAI, the simulated endpoint, the
#: zero-latency server), Chromium, or an interpreter.
_INTEGRATION_MODULES = {
    "endpoints/test_openai.py", "loadgen/test_engine.py", "loadgen/test_processes_and_zero.py",
    "loadgen/test_benchmarks_quick.py", "loadgen/test_store_text.py", "metrics/test_itl_goodput.py",
    "metrics/test_bench_cost.py", "report/test_report.py", "report/test_png.py", "simulator/test_simulated.py",
    "simulator/test_simulated_process.py", "datasets/test_samples.py", "test_calibration.py",
    "test_exported_members.py", "quality/test_evaluation.py", "test_experiment_tokenizer_run.py",
    "test_localapi.py", "test_run_overhead.py", "loadgen/test_client_hosts.py", "test_overload_run.py",
}
#: Fixtures that start something heavy: a test using one is integration wherever it lives.
_INTEGRATION_FIXTURES = {"fake_openai", "prefect_harness", "moto_url", "cli_env", "fault_cli_env", "prefect_stack", "llama"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the integration tier (``-m integration``; ``make test-fast`` runs the rest)."""
    for item in items:
        rel = Path(item.path).relative_to(_TESTS)
        if (rel.parts[0] in _INTEGRATION_DIRS or rel.as_posix() in _INTEGRATION_MODULES
                or _INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.integration)
