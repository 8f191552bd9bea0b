"""A real Prefect server and process worker on 127.0.0.1 for the deployment tests (session scope).

The server runs on a free port with SQLite in a temporary PREFECT_HOME (a fresh database takes
~20 s to migrate); `deployments/deploy.sh` applies deployments/prefect.yaml to it; a `prefect
worker start` process runs the flow runs from this checkout (FMBENCH_REPO). Every process is
started in its own session and killed with all its descendants at teardown, so no server, worker,
flow run or simulated endpoint is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(REPO / ".venv" / "bin" / "prefect")
SERVER_START_TIMEOUT_S = 180  # a fresh SQLite database takes ~20 s to migrate on an idle machine
WORKER_START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_tree(proc: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    """SIGTERM the process group and every descendant (flow runs may start their own sessions)."""
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout_s)


@dataclass
class PrefectStack:
    """The running server (and, once started, the worker) with the environment to reach them."""

    url: str
    api_url: str
    env: dict[str, str]
    home: Path
    pool: str
    logs: Path
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def prefect(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a `prefect` CLI command against the server (from a scratch directory, like a user)."""
        result = subprocess.run([PREFECT, *args], check=False, env=self.env, cwd=self.home, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n"
                                 f"{result.stderr}")
        return result

    def start(self, name: str, *args: str, cwd: Path | None = None) -> subprocess.Popen[Any]:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 -- open for the process's lifetime
        proc = subprocess.Popen([PREFECT, *args], env=self.env, cwd=cwd or self.home, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str, tail: int | None = 6000) -> str:
        """A process's log (its last ``tail`` characters, for failure messages)."""
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-tail:] if tail else text

    def wait_for_flow_run(self, flow_run_id: Any, timeout_s: float = 420) -> Any:
        """Poll a flow run until it reaches a final state; returns the flow run."""
        return wait_for_flow_run(self, flow_run_id, timeout_s)

    def client(self) -> Any:
        """A synchronous Prefect API client for this server."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(api=self.api_url)


def wait_healthy(stack: PrefectStack, proc: subprocess.Popen[Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited {proc.returncode}:\n{stack.log('server')}")
        try:
            if httpx.get(f"{stack.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout_s} s:\n{stack.log('server')}")


def wait_worker(stack: PrefectStack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with stack.client() as client:
        while time.monotonic() < deadline:
            if stack.procs[-1].poll() is not None:
                raise RuntimeError(f"worker exited:\n{stack.log('worker')}")
            if client.read_workers_for_work_pool(stack.pool):
                return
            time.sleep(1)
    raise RuntimeError(f"worker did not register within {timeout_s} s:\n{stack.log('worker')}")


def wait_for_flow_run(stack: PrefectStack, flow_run_id: Any, timeout_s: float = 420) -> Any:
    """Poll a flow run until it reaches a final state; returns the flow run."""
    deadline = time.monotonic() + timeout_s
    with stack.client() as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {flow_run_id} still {run.state} after {timeout_s} s:\n"
                                     f"{stack.log('worker')}")
            time.sleep(1)


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    """A Prefect server on a free port with the fmbench deployments applied and a process worker."""
    home = tmp_path_factory.mktemp("prefect-home")
    logs = tmp_path_factory.mktemp("prefect-logs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home), PREFECT_API_URL=f"{url}/api", PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_LOGGING_LEVEL="INFO", BROWSER_PATH=os.environ.get("BROWSER_PATH", "/usr/bin/chromium"),
        FMBENCH_REPO=str(REPO), FMBENCH_WORK_POOL=f"fmbench-test-{uuid.uuid4().hex[:6]}",
        PREFECT=PREFECT, FMBENCH_DASK_WORKERS="2", PYTHONUNBUFFERED="1",
        FMBENCH_NIGHTLY_TZ="Europe/Berlin",  # deploy.sh makes the nightly schedule's timezone configurable
    )
    env.pop("FMBENCH_OUTPUT", None)
    env.pop("FMBENCH_TASK_RUNNER", None)
    stack = PrefectStack(url=url, api_url=f"{url}/api", env=env, home=home, pool=env["FMBENCH_WORK_POOL"],
                         logs=logs)
    try:
        server = stack.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        wait_healthy(stack, server, SERVER_START_TIMEOUT_S)
        deploy = subprocess.run(["bash", str(REPO / "deployments" / "deploy.sh")], check=False, env=env,
                                cwd=home, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        if deploy.returncode != 0:
            raise RuntimeError(f"deploy.sh exited {deploy.returncode}:\n{deploy.stdout[-4000:]}\n{deploy.stderr}")
        stack.start("worker", "worker", "start", "--pool", stack.pool, "--limit", "2")
        wait_worker(stack, WORKER_START_TIMEOUT_S)
        yield stack
    finally:
        for proc in reversed(stack.procs):
            kill_tree(proc)
