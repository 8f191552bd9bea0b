"""Fixtures of the real-server tests: the llama-server binary `.ci/llama-server.sh` builds, a tiny
GGUF model written by the tests, and one llama-server on 127.0.0.1 for the session.

Without the binary the tests skip with the reason locally, and fail when ``CI`` is set: CI must
never silently skip them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gguf_model import write_model
from tests.support.llama_server import LlamaServer, find_llama_server


@pytest.fixture(scope="session")
def llama_binary() -> Path:
    """The llama-server executable (``$FMBENCH_LLAMA_SERVER`` or the build script's cache)."""
    path = find_llama_server()
    if path is None or not os.access(path, os.X_OK):
        where = (f"FMBENCH_LLAMA_SERVER={path} is not an executable" if path
                 else "FMBENCH_LLAMA_SERVER is unset and the cache of .ci/llama-server.sh has no binary")
        why = f"llama-server not found: {where}; build it with `bash .ci/llama-server.sh`"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cycle model (``tokenizer.json`` beside it)."""
    return write_model(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def llama(llama_binary: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One llama-server for the session: 4 slots of 1,024 tokens, one thread."""
    log = tmp_path_factory.mktemp("llama-log") / "llama-server.log"
    with LlamaServer(llama_binary, tiny_model, log, parallel=4, ctx_size=4096, threads=1) as server:
        server.wait_ready()
        yield server
