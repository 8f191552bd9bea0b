"""`fmbench compare` reads each run's evaluated accuracy and shows it side by side per experiment and
dataset bucket, marked significant (better/worse) or within noise by the bootstrap regression
detection uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cli.main import main
from fmbench.config import parse_config
from fmbench.pipeline import run_benchmark

pytestmark = pytest.mark.integration

N = 60


def _run(tmp_path: Path, name: str, accuracy: float, seed: int) -> str:
    if not (tmp_path / "qa.jsonl").exists():
        with (tmp_path / "qa.jsonl").open("w") as fh:
            for i in range(N):
                fh.write(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?", "answer": f"Answer {i}"}) + "\n")
    raw: dict[str, Any] = {
        "name": name, "output": str(tmp_path / "results"), "buckets": [[1, 200]],
        "datasets": [{"name": "qa", "source": "jsonl", "path": "qa.jsonl", "answer_field": "answer"}],
        # The same experiment name in every run: compared experiment by experiment.
        "experiments": [{"name": "model", "concurrency_levels": [1], "requests_per_level": N, "warmup_requests": 0,
                         "endpoint": {"provider": "simulated", "ttft_ms": 1, "tpot_ms": 0.2,
                                      "answer_accuracy": accuracy, "seed": seed}}],
        "evaluation": {"evaluate_per_shard": 0},  # reference-answer scores only: exact match is the accuracy
    }
    report = run_benchmark(parse_config(raw, source=name, base_dir=tmp_path), run_id="r1", png=False)
    return str(Path(report).parent)


def test_compare_shows_accuracy_side_by_side_significant_or_within_noise(
    tmp_path: Path, no_png: None, capsys: pytest.CaptureFixture[str],
) -> None:
    base = _run(tmp_path, "base", 0.9, 1)
    worse = _run(tmp_path, "worse", 0.3, 2)
    same = _run(tmp_path, "same", 0.9, 3)
    out = tmp_path / "cmp"
    assert main(["compare", base, worse, same, "--output", str(out)]) == 0
    md = (out / "report.md").read_text()
    rows = [ln for ln in md.splitlines() if "| accuracy (exact match) |" in ln]
    assert len(rows) == 2, md
    accuracy = {}
    for r in (base, worse, same):
        scores = pl.read_parquet(Path(r) / "evaluation" / "model" / "scores.parquet")
        assert scores.height == N
        accuracy[r] = scores["exact_match"].mean()
    by_run = {ln.split("|")[3].strip(): ln for ln in rows}
    # Each row: baseline and run side by side, before and after as the runs measured them.
    assert f"{accuracy[base] * 100:.1f}%" in by_run["worse/model"]
    assert f"{accuracy[worse] * 100:.1f}%" in by_run["worse/model"]
    assert "✘ worse" in by_run["worse/model"]  # 90% against 30% of 60 answers: far outside the noise
    assert "≈ within noise" in by_run["same/model"] or "= unchanged" in by_run["same/model"]
    assert "Evaluated accuracy is compared per dataset bucket" in md
