"""Running the real `fmbench` command line from tests."""

from __future__ import annotations

import sys
from pathlib import Path

#: The checkout: the working directory and PYTHONPATH of `fmbench` subprocesses.
ROOT = Path(__file__).resolve().parents[2]


def fmbench_argv(*args: str) -> list[str]:
    """The command line of `fmbench ARGS` with this interpreter."""
    return [sys.executable, "-m", "fmbench", *args]
