"""The shipped sample datasets are exactly what configs/data/make_samples.py generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.datasets import REPO, SAMPLES


def test_make_samples_regenerates_the_committed_files(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SAMPLES / "make_samples.py"), str(tmp_path)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("hotpotqa.jsonl", "prompts.jsonl"):
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), f"{name} is stale: rerun make_samples.py"
