"""Local endpoints: the simulated server (started and stopped by the run) and OpenAI-compatible
servers that already run somewhere (checked for reachability, never started or stopped)."""

from __future__ import annotations

import atexit
import datetime as _dt
import logging
import os
import signal
import socket
import threading
import urllib.parse

from fmbench.config import ExperimentConfig, OpenAIEndpoint, SimulatedEndpoint
from fmbench.deploy import DeployedEndpoint, register_provider
from fmbench.errors import DeploymentError, EndpointConnectionError

log = logging.getLogger("fmbench")

_servers: dict[int, object] = {}
_lock = threading.Lock()


def deploy_simulated(experiment: ExperimentConfig, run_id: str, *, config_name: str | None = None,
                     run_url: str | None = None) -> DeployedEndpoint:
    """Start a simulated server for the experiment in its own process, on a free local port."""
    from fmbench.simulator.process import SimulatedServerProcess

    endpoint = experiment.endpoint
    assert isinstance(endpoint, SimulatedEndpoint)
    server = SimulatedServerProcess(endpoint)
    created_at = _now()
    try:
        server.start()
    except Exception as exc:
        raise DeploymentError(f"experiment {experiment.name!r}: the simulated endpoint did not start: {exc}") from exc
    pid = server.pid
    assert pid is not None  # started
    with _lock:
        _servers[pid] = server
    log.info("experiment %s: simulated endpoint at %s (pid %s)", experiment.name, server.url, server.pid)
    # Stamped here, when it is ready: a look-ahead deploy may wait a while before the run takes it
    # up, and that wait is idle time, not deploying.
    return DeployedEndpoint(experiment=experiment.name, provider="simulated", url=server.url,
                            pid=server.pid, created=[f"process:{server.pid}"], created_at=created_at,
                            in_service_at=_now())


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def teardown_simulated(deployed: DeployedEndpoint, experiment: ExperimentConfig) -> list[str]:
    """Stop the simulated server this run started."""
    if deployed.pid is None:
        return []
    with _lock:
        server = _servers.pop(deployed.pid, None)
    if server is not None:
        server.stop()  # type: ignore[attr-defined]
    else:  # started by another process of this run (resumed or distributed): signal it
        try:
            os.kill(deployed.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return list(deployed.created)


def _stop_all() -> None:
    with _lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        try:
            server.stop()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001, S110 - best effort at interpreter exit
            pass


atexit.register(_stop_all)


def deploy_openai(experiment: ExperimentConfig, run_id: str, *, config_name: str | None = None,
                  run_url: str | None = None) -> DeployedEndpoint:
    """Check that an OpenAI-compatible server is reachable; nothing is deployed.

    Raises:
        EndpointConnectionError: nothing answers at the base URL's host and port.
    """
    endpoint = experiment.endpoint
    assert isinstance(endpoint, OpenAIEndpoint)
    check_reachable(endpoint.base_url, f"experiment {experiment.name!r}: endpoint.base_url")
    return DeployedEndpoint(experiment=experiment.name, provider="openai", url=endpoint.base_url)


def check_reachable(url: str, what: str, timeout_s: float = 5.0) -> None:
    """Open (and close) a TCP connection to the URL's host and port."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise EndpointConnectionError(f"{what}: {url} is unreachable ({reason})") from exc


def _nothing_to_tear_down(deployed: DeployedEndpoint, experiment: ExperimentConfig) -> list[str]:
    return []


register_provider("simulated", deploy_simulated, teardown_simulated)
register_provider("openai", deploy_openai, _nothing_to_tear_down)
