"""A real nginx (the Debian package's /usr/sbin/nginx) started by the tests as a reverse proxy in
front of an upstream URL, configured the ways production proxies are: few requests per client
connection, a short client keep-alive, response buffering on or off, HTTP/1.1 to the upstream."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from tests.support.tls import self_signed

NGINX = os.environ.get("FMBENCH_NGINX", "/usr/sbin/nginx")

_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log {log_level};
events {{ worker_connections 256; }}
http {{
    log_format fmbench '$connection $connection_requests $request_time $status $bytes_sent $msec '
                       '"$request" upstream=$upstream_addr';
    access_log {tmp}/access.log fmbench;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests {keepalive_requests};
    keepalive_timeout {keepalive_timeout_s}s{keepalive_header};
    upstream backend {{
        server {upstream};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl};
{ssl_files}        location / {{
            proxy_pass http://backend;
            proxy_http_version {upstream_http};
{upstream_keepalive}            proxy_buffering {buffering};
{buffers}            proxy_read_timeout 60s;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class ProxyProfile:
    """How the proxy treats its clients' connections and the upstream's answers."""

    buffering: bool
    keepalive_requests: int = 1
    keepalive_timeout_s: float = 1.0
    #: "1.1" keeps upstream connections alive and lets nginx pass chunked answers on chunk by
    #: chunk; "1.0" is nginx's default, under which a buffered answer leaves in buffer-sized parts.
    upstream_http: str = "1.1"
    #: Seconds nginx announces in a ``Keep-Alive: timeout=N`` header (None: no header, nginx's default).
    keepalive_header_s: int | None = None
    #: Size of each response buffer (None: nginx's default of one memory page).
    buffer_kb: int | None = None
    #: Serve the clients over TLS (a self-signed certificate for 127.0.0.1, `tests.support.tls`).
    tls: bool = False

    @property
    def name(self) -> str:
        return (f"buffering-{'on' if self.buffering else 'off'}-requests-{self.keepalive_requests}"
                f"-timeout-{self.keepalive_timeout_s:g}s-upstream-http{self.upstream_http}"
                + ("" if self.keepalive_header_s is None else f"-header-{self.keepalive_header_s}s")
                + ("-tls" if self.tls else ""))


def nginx_available() -> bool:
    """True when the nginx binary can be run here."""
    return shutil.which(NGINX) is not None or os.access(NGINX, os.X_OK)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxProxy:
    """nginx as a subprocess (``-p DIR -c DIR/nginx.conf``, in the foreground, one process, so it
    runs as the user who started it and needs nothing outside ``DIR``).

    Args:
        upstream: ``host:port`` of the server to proxy to.
        profile: client keep-alive and buffering settings.
        workdir: directory for the config, logs, pid file and temp files.
        log_level: error log level (``debug`` shows each connection's keep-alive and close).
    """

    def __init__(self, upstream: str, profile: ProxyProfile, workdir: Path, log_level: str = "info") -> None:
        self.upstream, self.profile, self.workdir, self.log_level = upstream, profile, workdir, log_level
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL (no ``/v1``)."""
        return f"{'https' if self.profile.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def certificate(self) -> Path:
        """The certificate nginx presents (``profile.tls``), for the client to trust."""
        return self.workdir / "cert.pem"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    def _write_conf(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        p = self.profile
        pad = " " * 12
        buffers = "" if p.buffer_kb is None else (
            f"{pad}proxy_buffer_size {p.buffer_kb}k;\n{pad}proxy_buffers 4 {p.buffer_kb}k;\n"
            f"{pad}proxy_busy_buffers_size {p.buffer_kb}k;\n")
        ssl_files = ""
        if p.tls:
            cert, key = self_signed(self.workdir)
            ssl_files = f"{pad[4:]}ssl_certificate {cert};\n{pad[4:]}ssl_certificate_key {key};\n"
        conf.write_text(_CONF.format(ssl=" ssl" if p.tls else "", ssl_files=ssl_files,
            tmp=self.workdir, port=self.port, log_level=self.log_level, upstream=self.upstream, buffering="on" if p.buffering else "off",
            keepalive_requests=p.keepalive_requests, keepalive_timeout_s=f"{p.keepalive_timeout_s:g}",
            keepalive_header="" if p.keepalive_header_s is None else f" {p.keepalive_header_s}s",
            upstream_http=p.upstream_http, buffers=buffers,
            # HTTP/1.1 upstream connections stay open only without the client's Connection header.
            upstream_keepalive=f'{pad}proxy_set_header Connection "";\n' if p.upstream_http == "1.1" else ""))
        return conf

    def start(self, timeout_s: float = 20.0) -> str:
        """Start nginx and wait until it accepts connections; returns the base URL."""
        for _ in range(5):  # another process may take the free port between the probe and the bind
            self.port = _free_port()
            conf = self._write_conf()
            self._proc = subprocess.Popen(
                [NGINX, "-p", str(self.workdir), "-c", str(conf), "-e", str(self.error_log)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self.url
                except OSError:
                    time.sleep(0.02)
            self.stop()
            if "Address already in use" not in self.error_tail():
                break
        raise RuntimeError(f"nginx did not start; its error log ends: {self.error_tail()}")

    def stop(self) -> None:
        """Stop nginx (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def error_tail(self, lines: int = 20) -> str:
        """The last lines of nginx's error log (for assertion messages)."""
        if not self.error_log.exists():
            return "(no error log)"
        return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])

    def access_lines(self, expect: int | None = None, timeout_s: float = 10.0) -> list[str]:
        """nginx's access log, one line per request it answered.

        nginx writes a request's line once the answer's last byte is out, so a client can be done
        with its last answer before that line is written (more often on a loaded machine): with
        ``expect``, wait up to ``timeout_s`` for that many lines before reading."""
        deadline = time.monotonic() + timeout_s
        while True:
            lines = self.access_log.read_text(errors="replace").splitlines() if self.access_log.exists() else []
            if expect is None or len(lines) >= expect or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
