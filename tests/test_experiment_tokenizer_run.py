"""A whole run (inline steps, no Prefect) with two tokenizers: each experiment's shards measure the
prompts its own tokenizer bucketed, output tokens the server does not report are counted with it,
and the manifest, metrics and report say which tokenizer counted each experiment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml
from aiohttp import web

from fmbench.datasets import clear_tokenizer_cache
from fmbench.pipeline import load_benchmark_config, run_benchmark, tokenizer_slug
from fmbench.rundir import load_manifest
from tests.datasets.test_experiment_tokenizer import (
    BUCKETS,
    BYTE_COUNTS,
    PROMPTS,
    WORD_COUNTS,
    write_bytes_tokenizer,
    write_words_tokenizer,
)
from tests.support.app_thread import serve_app

ANSWER = ["alpha", " beta", " gamma", " delta"]  # 4 words, 22 bytes


async def _chat(request: web.Request) -> web.StreamResponse:
    """An OpenAI-compatible chat endpoint that never reports usage."""
    body = await request.json()
    if not body.get("stream"):
        return web.json_response({"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(ANSWER)}, "finish_reason": "stop"}]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for piece in ANSWER:
        chunk = {"id": "x", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def no_usage_server() -> Iterator[str]:
    """Base URL (with /v1) of the endpoint above on 127.0.0.1."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    with serve_app(app) as url:
        yield f"{url}/v1"


def test_each_experiment_is_bucketed_and_counted_with_its_tokenizer(no_usage_server: str, tmp_path: Path) -> None:
    clear_tokenizer_cache()
    write_words_tokenizer(tmp_path / "words.json")
    (tmp_path / "tok").mkdir()
    write_bytes_tokenizer(tmp_path / "tok" / "bytes.json")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    endpoint = {"provider": "openai", "base_url": no_usage_server, "model": "m"}
    experiment = {"endpoint": endpoint, "inference": {"max_tokens": 8, "timeout_s": 10},
                  "requests_per_level": 3, "warmup_requests": 0}
    data = {
        "name": "two-tokenizers", "output": str(tmp_path / "out"), "tokenizer": "words.json", "buckets": BUCKETS,
        "datasets": [{"name": "d", "source": "jsonl", "path": "d.jsonl"}],
        "experiments": [{"name": "by-words", **experiment},
                        {"name": "by-bytes", "tokenizer": "tok/bytes.json", **experiment}],
    }
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_benchmark_config(str(tmp_path / "cfg.yml"))

    report = run_benchmark(cfg, run_id="r1")
    run_dir = Path(report).parent

    manifest = load_manifest(str(run_dir))
    assert manifest.tokenizers == {"by-words": "words.json", "by-bytes": "tok/bytes.json"}
    assert all(s["status"] == "ok" for s in manifest.shards) and len(manifest.shards) == 6
    byte_key = f"d@{tokenizer_slug('tok/bytes.json')}"
    assert {k: v for k, v in manifest.prompt_counts.items() if k.startswith("d/")} == {
        f"d/{b}": n for b, n in WORD_COUNTS.items()}
    assert {k: v for k, v in manifest.prompt_counts.items() if k.startswith(byte_key)} == {
        f"{byte_key}/{b}": n for b, n in BYTE_COUNTS.items()}
    assert (run_dir / "prompts" / "d__1-4.parquet").is_file()
    assert (run_dir / "prompts" / f"{byte_key}__1-4.parquet").is_file()

    records = pl.read_parquet(run_dir / "requests.parquet")
    assert (records["usage_source"] == "tokenizer").all()

    def sent(experiment: str, bucket: str) -> list[int]:
        part = records.filter((pl.col("experiment") == experiment) & (pl.col("bucket") == bucket))
        return sorted(set(part["input_tokens"].to_list()))

    # The same prompts, in different buckets: "w w ... w" is 20 words but 39 bytes.
    assert sent("by-words", "1-4") == [1, 2] and sent("by-words", "4-12") == [5, 8] and sent("by-words", "12-64") == [20]
    assert sent("by-bytes", "1-4") == [2] and sent("by-bytes", "4-12") == [9, 10]
    assert sent("by-bytes", "12-64") == [30, 39]
    # The answer carries no usage: 4 tokens in words, 22 in bytes.
    outputs = records.group_by("experiment").agg(pl.col("output_tokens").unique())
    assert {r["experiment"]: r["output_tokens"] for r in outputs.iter_rows(named=True)} == {
        "by-words": [4], "by-bytes": [22]}

    metrics = pl.read_parquet(run_dir / "metrics.parquet")
    assert dict(metrics.select("experiment", "tokenizer").unique().iter_rows()) == {
        "by-words": "words.json", "by-bytes": "tok/bytes.json"}

    md = Path(report).read_text()
    section = md.split("### Experiments", 1)[1].split("\n### ", 1)[0]
    assert "| Experiment | Tokenizer | Price | Source |" in section
    assert "| by-words | words.json |" in section and "| by-bytes | tok/bytes.json |" in section
    assert "tokenizer `words.json (default); by-bytes: tok/bytes.json`" in md
    html = (run_dir / "report.html").read_text()
    assert "<th>Tokenizer</th>" in html and "<code>tok/bytes.json</code>" in html
