"""The simulated endpoint as a process: CLI ready line, clean exit, restart on the same port."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from fmbench.config import SimulatedEndpoint
from fmbench.errors import ConfigError, DeploymentError
from fmbench.simulator.cli import add_cli_arguments, config_from_args, config_to_args
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.measure import measure_pacing
from fmbench.simulator.process import SimulatedServerProcess

CFG = SimulatedEndpoint(provider="simulated", model="sim-proc", ttft_ms=5, tpot_ms=1, output_tokens=4, seed=2)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _complete(url: str) -> str:
    resp = httpx.post(f"{url}/v1/completions", json={"model": "sim-proc", "prompt": "hi"}, timeout=5.0)
    resp.raise_for_status()
    return resp.json()["choices"][0]["text"]


def test_cli_prints_one_ready_line_and_exits_cleanly_on_sigint() -> None:
    argv = [
        sys.executable,
        "-m",
        "fmbench.simulator",
        "--port",
        "0",
        "--ttft-ms",
        "5",
        "--tpot-ms",
        "1",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("FMBENCH_SIM_LISTENING http://127.0.0.1:")
        url = line.split()[1]
        assert httpx.get(f"{url}/health", timeout=5.0).json() == {"status": "ok"}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    assert out == ""  # nothing after the ready line


def test_start_stop_restart_keep_the_port_and_leave_no_process_behind() -> None:
    server = SimulatedServerProcess(CFG)
    with server:
        first_pid, url = server.pid, server.url
        assert first_pid is not None and url is not None
        assert psutil.Process(first_pid).children() == []
        text = _complete(url)
        assert server.restart() == url  # same port
        assert server.pid != first_pid and _gone(first_pid)
        assert _complete(url) == text  # same seed, same answer
        second_pid = server.pid
        server.stop()  # a stopped server refuses, a started one answers on the same port
        with pytest.raises(httpx.ConnectError):
            _complete(url)
        assert second_pid is not None and _gone(second_pid)
        assert server.start() == url and _complete(url) == text
        third_pid = server.pid
    assert third_pid is not None and _gone(third_pid)
    assert not server.running and server.url is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2.0)


def test_startup_failures_are_deployment_errors_naming_the_cause() -> None:
    with pytest.raises(DeploymentError, match="max_batch"):
        SimulatedServerProcess(CFG, extra_args=["--max-batch", "0"], startup_timeout=90).start()
    with SimulatedServerProcess(CFG) as first:
        busy = SimulatedServerProcess(CFG, port=first.port, startup_timeout=90)
        with pytest.raises(DeploymentError, match="cannot listen"):
            busy.start()
        assert not busy.running


def test_cli_arguments_round_trip_through_the_configs() -> None:
    cfg = SimulatedEndpoint(
        provider="simulated", model="m", ttft_ms=12.5, prefill_ms_per_token=0.1, tpot_ms=3, decode_slowdown=0.2,
        max_batch=7, output_tokens=33, chunk_tokens=2, seed=9,
    )  # fmt: skip
    faults = FaultConfig(
        seed=4, http_503_rate=0.25, throttle_rate=0.1, retry_after_s=3, slow_first_byte_s=0.5
    )
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(["--port", "0", *config_to_args(cfg, faults)])
    assert config_from_args(args) == (cfg, faults)
    with pytest.raises(ConfigError, match="tpot_ms"):
        config_from_args(parser.parse_args(["--tpot-ms", "-1"]))


def test_measure_pacing_reports_every_chunk_and_never_early() -> None:
    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=5, tpot_ms=2, output_tokens=8, max_batch=4)
    result = measure_pacing(cfg, concurrency=2, requests=4)
    assert result["chunks"] == 4 * 8
    assert 0 <= result["server_p50_ms"] <= result["server_p99_ms"] <= result["server_max_ms"]
    assert result["client_p50_ms"] >= 0


def test_process_command_line_carries_every_setting() -> None:
    faults = FaultConfig(hang_rate=0.5)
    argv = SimulatedServerProcess(CFG, faults, port=8123, tokenizer="cl100k_base").argv()
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(argv[3:])  # after: python -m fmbench.simulator
    assert (args.port, args.tokenizer) == (8123, "cl100k_base")
    assert config_from_args(args) == (CFG, faults)


def test_a_deployed_simulated_endpoint_says_when_it_was_created_and_ready() -> None:
    # The bill's deploying phase ends when the server is ready, not when the run gets to it
    # (a look-ahead deploy can wait ready for a while: that is idle time).
    from fmbench.config import ExperimentConfig
    from fmbench.deploy import deploy_endpoint, teardown_endpoint

    experiment = ExperimentConfig.model_validate({"name": "sim", "endpoint": CFG.model_dump()})
    deployed = deploy_endpoint(experiment, "run-1")
    try:
        assert deployed.created_at is not None and deployed.in_service_at is not None
        assert deployed.created_at <= deployed.in_service_at
        with httpx.Client() as http:
            assert http.get(f"{deployed.url}/health", timeout=10).status_code == 200
    finally:
        teardown_endpoint(deployed, experiment)



_PARENT = """
import signal, time
from fmbench.config import SimulatedEndpoint
from fmbench.simulator.process import SimulatedServerProcess
srv = SimulatedServerProcess(SimulatedEndpoint(provider="simulated", ttft_ms=5, tpot_ms=1, output_tokens=4))
srv.start()
for sig in (signal.SIGINT, signal.SIGHUP):  # a run handles these itself (and stops the server last)
    signal.signal(sig, signal.SIG_IGN)
print(srv.pid, srv.url, flush=True)
time.sleep(600)
"""


def test_terminal_signals_miss_the_server_and_it_never_outlives_its_parent() -> None:
    """A terminal's Ctrl-C or hang-up goes to the run's whole foreground process group; it must reach
    only the run, which stops its shards before it stops the server (a server that died at once would
    fail the requests of a shard still measuring). And a run that is SIGKILLed (the OOM killer,
    ``kill -9``, a job runner's timeout) runs no clean-up: its simulated endpoint must go anyway, not
    serve on forever."""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert parent.stdout is not None
        pid_text, url = parent.stdout.readline().split()
        server = psutil.Process(int(pid_text))
        os.killpg(parent.pid, signal.SIGINT)  # what the terminal sends its foreground process group
        os.killpg(parent.pid, signal.SIGHUP)
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # the server got neither
        time.sleep(1)  # time enough to stop, had either reached it
        assert server.is_running() and httpx.get(f"{url}/health", timeout=30).status_code == 200
        parent.kill()  # SIGKILL: no clean-up of the parent's runs
        parent.wait(30)
        server.wait(30)  # it read the end of its input (the parent's pipe) and stopped
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait(10)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)


class _ExitsAtOnce(SimulatedServerProcess):
    """A server that fails at start while a process it started still holds its output open."""

    pgid: int | None = None

    def argv(self) -> list[str]:
        return ["sh", "-c", "sleep 20 & echo 'error: tokenizer is not a valid tokenizer.json' >&2; exit 2"]

    def _wait_ready(self, proc: subprocess.Popen[str]) -> str | None:
        self.pgid = proc.pid  # its own process group: the sleep left behind is killed by the test
        return super()._wait_ready(proc)


def test_a_server_that_exits_at_start_is_reported_at_once_with_its_error() -> None:
    server = _ExitsAtOnce(CFG, startup_timeout=15, stop_timeout=1)
    started = time.monotonic()
    with pytest.raises(DeploymentError) as err:
        server.start()
    took = time.monotonic() - started
    assert server.pgid is not None
    os.killpg(server.pgid, signal.SIGKILL)
    assert str(err.value) == ("simulated endpoint exited at start (exit code 2): "
                              "error: tokenizer is not a valid tokenizer.json")
    assert took < 10, took
