"""Running the real `fmbench` command line from tests."""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: The checkout: the working directory and PYTHONPATH of `fmbench` subprocesses.
ROOT = Path(__file__).resolve().parents[2]


def fmbench_argv(*args: str) -> list[str]:
    """The command line of `fmbench ARGS` with this interpreter."""
    return [sys.executable, "-m", "fmbench", *args]


def repo_frames(err: str) -> list[str]:
    """The traceback frames in a process's stderr that are in this repository's code (not its .venv).

    Under the Dask task runner, distributed logs tracebacks of its own when a run closes its local cluster
    (a comm closed under it): tests of such runs require none of these frames rather than no traceback.
    """
    return re.findall(rf'File "{re.escape(str(ROOT))}/(?!\.venv/)[^"]+"', err)
