"""Bucketing edges, the build_dataset_prompts entry point, dataset fingerprints and parquet payloads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fmbench.datasets import (
    bucket_prompts,
    build_dataset_prompts,
    dataset_fingerprint,
    find_bucket,
    load_run_tokenizer,
    load_tokenizer,
    read_prompts,
    write_prompts,
)
from fmbench.datasets.tokenizer import Tokenizer
from fmbench.errors import DatasetError, StorageError
from fmbench.protocol import Prompt
from tests.support.datasets import SAMPLES, make_cfg, write_jsonl


def P(n: int, pid: str | None = None) -> Prompt:
    return Prompt(prompt_id=pid or f"p{n}", text="x" * n, input_tokens=n)


# ---------------------------------------------------------------- bucketing


def test_bucket_edges_min_inclusive_max_exclusive() -> None:
    buckets = [(1, 500), (500, 1000), (1200, 2000)]
    out = bucket_prompts([P(0), P(1), P(499), P(500), P(999), P(1000), P(1199), P(1200), P(1999), P(2000)], buckets)
    assert list(out) == ["1-500", "500-1000", "1200-2000"]
    assert [p.input_tokens for p in out["1-500"]] == [1, 499]
    assert [p.input_tokens for p in out["500-1000"]] == [500, 999]
    assert [p.input_tokens for p in out["1200-2000"]] == [1200, 1999]
    assert find_bucket(1000, buckets) is None and find_bucket(1200, buckets) == (1200, 2000)


def test_bucket_max_prompts_keeps_first_in_order_and_empty_buckets_listed() -> None:
    prompts = [P(10, "a"), P(20, "b"), P(30, "c"), P(600, "d")]
    out = bucket_prompts(prompts, [(1, 500), (500, 1000), (1000, 2000)], max_prompts=2)
    assert [p.prompt_id for p in out["1-500"]] == ["a", "b"]
    assert [p.prompt_id for p in out["500-1000"]] == ["d"]
    assert out["1000-2000"] == []


# ---------------------------------------------------------------- build_dataset_prompts


def test_build_from_sample_files(tmp_path: Path, cl100k: Tokenizer) -> None:
    shutil.copy(SAMPLES / "hotpotqa.jsonl", tmp_path / "hotpotqa.jsonl")
    shutil.copy(SAMPLES / "prompts.jsonl", tmp_path / "prompts.jsonl")
    cfg = make_cfg(
        tmp_path,
        [
            {"name": "hotpotqa", "source": "longbench", "path": "hotpotqa.jsonl", "max_prompts": 15},
            {"name": "prompts", "source": "jsonl", "path": "prompts.jsonl"},
        ],
        buckets=[[1, 500], [500, 1000]],
    )
    hot = build_dataset_prompts(cfg, cfg.datasets[0], cl100k)
    assert hot.dataset == "hotpotqa"
    assert hot.counts == {"1-500": 15, "500-1000": 15}
    assert (hot.total_read, hot.dropped_outside, hot.dropped_over_max) == (60, 20, 10)
    assert hot.min_tokens is not None and hot.min_tokens < 500 and hot.max_tokens is not None and hot.max_tokens >= 1000
    assert any("outside every bucket" in n for n in hot.notes)
    assert "10 of 60 prompts were dropped by max_prompts=15 per bucket (kept: the first in file order)" in hot.notes
    gen = build_dataset_prompts(cfg, cfg.datasets[1], cl100k)
    assert gen.counts == {"1-500": 14, "500-1000": 14} and gen.dropped_outside == gen.dropped == 14
    assert gen.stats()["counts"] == gen.counts and gen.total_kept == 28


def test_build_synthetic(tmp_path: Path, cl100k: Tokenizer) -> None:
    cfg = make_cfg(tmp_path, [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 6, "max_prompts": 4}])
    result = build_dataset_prompts(cfg, cfg.datasets[0], cl100k)
    assert result.counts == {"1-500": 4, "500-1000": 4, "1000-2000": 4}
    assert (result.total_read, result.dropped_outside, result.dropped_over_max) == (18, 0, 6)
    for label, prompts in result.buckets.items():
        lo, hi = map(int, label.split("-"))
        assert all(lo <= p.input_tokens < hi and cl100k.count(p.text) == p.input_tokens for p in prompts)


def test_synthetic_max_prompts_keeps_lengths_spread_over_the_bucket(tmp_path: Path, cl100k: Tokenizer) -> None:
    """Synthetic prompts come shortest first; max_prompts must not keep only the bottom of each bucket."""
    buckets = [[1, 500], [500, 1000]]
    full_cfg = make_cfg(tmp_path, [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 11}], buckets=buckets)
    full = build_dataset_prompts(full_cfg, full_cfg.datasets[0], cl100k)
    for max_prompts, positions in ((3, [0, 5, 10]), (1, [5])):
        cfg = make_cfg(tmp_path, [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 11,
                                   "max_prompts": max_prompts}], buckets=buckets)
        result = build_dataset_prompts(cfg, cfg.datasets[0], cl100k)
        for label, every in full.buckets.items():
            assert result.buckets[label] == [every[i] for i in positions]  # same prompts, from across the bucket
        assert [p.input_tokens for p in result.buckets["1-500"]] == ([1, 250, 499] if max_prompts == 3 else [250])
        dropped = 2 * (11 - max_prompts)
        assert result.dropped_over_max == dropped
        note = (f"{dropped} of 22 prompts were dropped by max_prompts={max_prompts} per bucket "
                "(kept: evenly spaced over each bucket's lengths)")
        assert result.notes == [note]


def test_empty_bucket_is_not_an_error_here(tmp_path: Path, cl100k: Tokenizer) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "short one"}])
    cfg = make_cfg(tmp_path, [{"name": "p", "source": "jsonl", "path": "p.jsonl"}])
    result = build_dataset_prompts(cfg, cfg.datasets[0], cl100k)
    assert result.counts == {"1-500": 1, "500-1000": 0, "1000-2000": 0}
    assert "bucket 500-1000: no prompts from dataset 'p'" in result.notes


def test_no_prompt_in_any_bucket_names_range_and_buckets(tmp_path: Path, cl100k: Tokenizer) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "short one"}, {"prompt": "a slightly longer prompt here"}])
    cfg = make_cfg(tmp_path, [{"name": "tiny", "source": "jsonl", "path": "p.jsonl"}], buckets=[[500, 1000], [1000, 2000]])
    with pytest.raises(DatasetError) as err:
        build_dataset_prompts(cfg, cfg.datasets[0], cl100k)
    assert str(err.value) == (
        "dataset 'tiny': no prompt falls in any bucket: its 2 prompts have 2-5 tokens (cl100k_base); "
        "buckets are [500, 1000), [1000, 2000)"
    )


def test_relative_paths_resolve_against_config_dir(tmp_path: Path, cl100k: Tokenizer) -> None:
    cfg = make_cfg(tmp_path, [{"name": "p", "source": "jsonl", "path": "data/missing.jsonl"}])
    with pytest.raises(DatasetError) as err:
        build_dataset_prompts(cfg, cfg.datasets[0], cl100k)
    assert str(err.value) == f"dataset 'p': file not found: {tmp_path / 'data' / 'missing.jsonl'}"


def test_run_tokenizer_resolves_relative_tokenizer_json(tmp_path: Path, wordlevel_json: Path) -> None:
    shutil.copy(wordlevel_json, tmp_path / "tok.json")
    cfg = make_cfg(tmp_path, [{"name": "s", "source": "synthetic"}], tokenizer="tok.json")
    tok = load_run_tokenizer(cfg)
    assert tok.fingerprint == load_tokenizer(str(wordlevel_json)).fingerprint
    assert load_run_tokenizer(make_cfg(tmp_path, [{"name": "s", "source": "synthetic"}])).name == "cl100k_base"


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_stable_and_sensitive(tmp_path: Path, cl100k: Tokenizer, wordlevel_json: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    base = {"name": "p", "source": "jsonl", "path": "p.jsonl"}

    def fp(ds: dict[str, object] | None = None, buckets: list[list[int]] | None = None, tok: Tokenizer = cl100k) -> str:
        cfg = make_cfg(tmp_path, [ds or base], buckets=buckets)
        return dataset_fingerprint(cfg, cfg.datasets[0], tok)

    ref = fp()
    assert fp() == ref and len(ref) == 20
    # Same content at another path: same key.
    (tmp_path / "sub").mkdir()
    shutil.copy(tmp_path / "p.jsonl", tmp_path / "sub" / "q.jsonl")
    assert fp({**base, "path": "sub/q.jsonl"}) == ref
    changed = {
        "template": fp({**base, "prompt_template": "Q: {prompt}"}),
        "prompt_field": fp({**base, "prompt_field": "text"}),
        "max_prompts": fp({**base, "max_prompts": 5}),
        "buckets": fp(buckets=[[1, 500], [500, 1000]]),
        "tokenizer": fp(tok=load_tokenizer(str(wordlevel_json))),
        "name": fp({**base, "name": "other"}),
    }
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "one"}, {"prompt": "three"}])
    changed["content"] = fp()
    assert ref not in changed.values()
    assert len(set(changed.values())) == len(changed)


def test_fingerprint_synthetic_and_hub(tmp_path: Path, cl100k: Tokenizer) -> None:
    def fp(ds: dict[str, object]) -> str:
        cfg = make_cfg(tmp_path, [ds])
        return dataset_fingerprint(cfg, cfg.datasets[0], cl100k)

    s = {"name": "s", "source": "synthetic"}
    assert fp(s) == fp(dict(s))
    assert len({fp(s), fp({**s, "seed": 1}), fp({**s, "prompts_per_bucket": 10}),
                fp({**s, "prompt_template": "T: {text}"})}) == 4
    hub = {"name": "h", "source": "longbench", "path": "hf:THUDM/LongBench/hotpotqa"}
    assert fp(hub) == fp(hub) != fp({**hub, "path": "hf:THUDM/LongBench/qasper"})


def test_fingerprint_missing_file(tmp_path: Path, cl100k: Tokenizer) -> None:
    cfg = make_cfg(tmp_path, [{"name": "gone", "source": "longbench", "path": "gone.jsonl"}])
    with pytest.raises(DatasetError, match=r"^dataset 'gone': file not found: .*gone\.jsonl$"):
        dataset_fingerprint(cfg, cfg.datasets[0], cl100k)


# ---------------------------------------------------------------- parquet payloads


def test_parquet_round_trip_local(tmp_path: Path) -> None:
    prompts = [Prompt("a", "héllo\nworld", 3, ("Paris", "the city of Paris")), Prompt("b", "", 0),
               Prompt("c", "x" * 10_000, 2500)]
    url = str(tmp_path / "out" / "prompts-1-500.parquet")
    write_prompts(url, prompts, dataset="ds", bucket="1-500")
    assert read_prompts(url) == prompts
    import polars as pl

    df = pl.read_parquet(url)
    assert df.columns == ["prompt_id", "text", "input_tokens", "dataset", "bucket", "answers"]
    assert df["dataset"].unique().to_list() == ["ds"] and df["bucket"].unique().to_list() == ["1-500"]


def test_parquet_empty_and_bad_files(tmp_path: Path) -> None:
    url = str(tmp_path / "empty.parquet")
    write_prompts(url, [], dataset="ds", bucket="1-500")
    assert read_prompts(url) == []
    import polars as pl

    other = str(tmp_path / "other.parquet")
    pl.DataFrame({"a": [1]}).write_parquet(other)
    with pytest.raises(DatasetError, match="not a prompts file"):
        read_prompts(other)
    with pytest.raises(StorageError):
        read_prompts(str(tmp_path / "missing.parquet"))


def test_parquet_round_trip_s3(s3_bucket: str) -> None:
    prompts = [Prompt("a", "hello", 1), Prompt("b", "world wide", 2)]
    url = f"{s3_bucket}/run/prompts/ds/1-500.parquet"
    write_prompts(url, prompts, dataset="ds", bucket="1-500")
    assert read_prompts(url) == prompts


# ---------------------------------------------------------------- the simulated server's counts


@pytest.mark.integration  # deploys the simulated server in its own process
def test_simulated_server_counts_prompts_with_the_runs_tokenizer(tmp_path: Path, bpe_json: Path,
                                                                   cl100k: Tokenizer) -> None:
    """The deployed simulated server reports usage in the run's tokenizer (here a relative
    tokenizer.json), so server-counted input tokens agree with the buckets."""
    import asyncio

    from fmbench.endpoints import make_client
    from fmbench.pipeline import deploy, teardown
    from fmbench.protocol import Prompt
    from fmbench.rundir import open_run

    shutil.copy(bpe_json, tmp_path / "tok.json")
    cfg = make_cfg(tmp_path, [{"name": "s", "source": "synthetic"}], tokenizer="tok.json")
    cfg = cfg.model_copy(update={"output": str(tmp_path / "out")})
    bpe = load_run_tokenizer(cfg)
    text = "Benchmarking tokenizers: unusual words like quixotically and zygomorphic split differently."
    assert bpe.count(text) != cl100k.count(text)

    deployed = deploy(cfg, "e", open_run(cfg, run_id="t"))
    try:
        async def once() -> int | None:
            client = make_client(cfg.experiments[0].endpoint, cfg.experiments[0].inference, url=deployed.url)
            await client.open(1)
            try:
                return (await client.complete(Prompt("p", text, bpe.count(text)))).input_tokens
            finally:
                await client.close()

        assert asyncio.run(once()) == bpe.count(text)
    finally:
        teardown(cfg, deployed)
