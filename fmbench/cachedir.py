"""fmbench's per-user cache directory (host calibration, the reusable local Prefect API's state)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``FMBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/fmbench`` (by default ~/.cache/fmbench)."""
    explicit = os.environ.get("FMBENCH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fmbench"
