"""Helpers shared by the datasets tests: configs, JSONL files, a seeded hub cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmbench.config import BenchmarkConfig, parse_config

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "configs" / "data"


def seed_hub_file(cache: Path, repo_id: str, repo_type: str, filename: str, data: bytes) -> Path:
    """Place a file in a hub cache the way huggingface_hub lays out a downloaded snapshot."""
    kind = {"model": "models", "dataset": "datasets"}[repo_type]
    root = cache / f"{kind}--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    target = root / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def make_cfg(tmp_path: Path, datasets: list[dict[str, Any]], buckets: list[list[int]] | None = None,
             tokenizer: str = "cl100k_base") -> BenchmarkConfig:
    """A valid BenchmarkConfig around some datasets, with relative paths resolved against ``tmp_path``."""
    data = {
        "name": "t",
        "tokenizer": tokenizer,
        "buckets": buckets or [[1, 500], [500, 1000], [1000, 2000]],
        "datasets": datasets,
        "experiments": [{"name": "e", "endpoint": {"provider": "simulated"}}],
    }
    return parse_config(data, source="test", base_dir=tmp_path)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
