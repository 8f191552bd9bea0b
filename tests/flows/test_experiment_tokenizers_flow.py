"""The `fmbench` flow with two tokenizers: one bucket task per (dataset, tokenizer), each
experiment's shards on its own buckets, and each simulated server counting prompts with its
experiment's tokenizer, so the usage it reports agrees with the bucket."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import yaml

from flows.benchmark import benchmark
from fmbench.datasets import clear_tokenizer_cache
from fmbench.pipeline import tokenizer_slug
from tests.datasets.test_experiment_tokenizer import (
    BUCKETS,
    BYTE_COUNTS,
    PROMPTS,
    WORD_COUNTS,
    write_bytes_tokenizer,
    write_words_tokenizer,
)


def test_flow_buckets_and_measures_each_experiment_with_its_tokenizer(prefect_harness: None, tmp_path: Path) -> None:
    clear_tokenizer_cache()
    write_words_tokenizer(tmp_path / "words.json")
    write_bytes_tokenizer(tmp_path / "bytes.json")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    sim = {"provider": "simulated", "ttft_ms": 1, "tpot_ms": 1, "output_tokens": 2}
    common = {"endpoint": sim, "inference": {"max_tokens": 2}, "requests_per_level": 3, "warmup_requests": 0}
    cfg = {
        "name": "flowtok", "output": str(tmp_path / "results"), "tokenizer": "words.json", "buckets": BUCKETS,
        "datasets": [{"name": "d", "source": "jsonl", "path": "d.jsonl"}],
        "experiments": [{"name": "w", **common}, {"name": "b", "tokenizer": "bytes.json", **common}],
    }
    path = tmp_path / "flowtok.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    run = Path(benchmark(config=str(path), run_id="t")).parent

    slug = tokenizer_slug("bytes.json")
    assert sorted(p.name for p in (run / "prompts").glob("*.parquet")) == sorted(
        [f"d__{b}.parquet" for b in WORD_COUNTS] + [f"d@{slug}__{b}.parquet" for b in BYTE_COUNTS])
    records = pl.read_parquet(run / "requests.parquet")
    assert records["ok"].all() and (records["usage_source"] == "server").all()
    # The server's own prompt counts fall in the bucket of the experiment's tokenizer.
    inside = (pl.col("input_tokens") >= pl.col("bucket_min")) & (pl.col("input_tokens") < pl.col("bucket_max"))
    assert records.select(inside.all()).item()
    by_exp = records.group_by("experiment").agg(pl.col("input_tokens").unique().sort())
    assert {r["experiment"]: r["input_tokens"] for r in by_exp.iter_rows(named=True)} == {
        "w": [1, 2, 5, 8, 20], "b": [2, 9, 10, 30, 39]}
