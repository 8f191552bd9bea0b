"""fmbench against a real llama.cpp ``llama-server`` (tiny GGUF model written by the tests).

A real server closes connections and splits characters across chunks in ways our simulator does
not; these tests check what a user pointing fmbench at llama.cpp would notice: no errors the
client caused, timings that agree with the server's own, token counts that are the server's,
and the probe, ``fmbench validate`` and ``fmbench run`` working against it.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fmbench.config import ExperimentConfig, InferenceConfig, OpenAIEndpoint
from fmbench.datasets.tokenizer import load_tokenizer
from fmbench.endpoints import make_client
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.preflight import probe_endpoint
from fmbench.protocol import Prompt
from tests.support.cli import ROOT
from tests.support.gguf_model import expected_text
from tests.support.llama_server import LlamaServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]



_SERIAL = itertools.count(1000)


def _prompts(n: int, end: str = "Answer:") -> list[Prompt]:
    # Prompts never sent before in the session (the server's prompt cache does not shorten them);
    # each ends in a byte outside the model's cycle, so every answer starts at the cycle's first
    # byte and its text is known in advance.
    texts = [f"Request {i}: what is the weather like in town number {i} today? {end}"
             for i in (next(_SERIAL) for _ in range(n))]
    return [Prompt(f"p{i}", t, len(t.encode())) for i, t in enumerate(texts)]


def _shard(llama: LlamaServer, tmp_path: Path, *, api: str, stream: bool, concurrency: int, requests: int,
           max_tokens: int = 32, prompts: list[Prompt] | None = None, extra_body: dict[str, Any] | None = None,
           count_tokens: Any = None, name: str = "s") -> pl.DataFrame:
    """One shard through fmbench's own client and engine; returns its records."""
    endpoint = OpenAIEndpoint(provider="openai", base_url=llama.url, model="tiny", api=api)  # type: ignore[arg-type]
    inference = InferenceConfig(max_tokens=max_tokens, temperature=0.0, stream=stream, timeout_s=60,
                                extra_body=extra_body or {})
    spec = ShardSpec(shard_id=name, experiment="llama", dataset="d", bucket="1-100", bucket_min=1, bucket_max=100,
                     concurrency=concurrency, requests=requests)
    out = tmp_path / f"{name}.parquet"
    run_shard(make_client(endpoint, inference), prompts or _prompts(requests), spec, out,
              count_tokens or (lambda text: len(text.encode())))
    return pl.read_parquet(out)


def _characters(n_tokens: int) -> int:
    """Whole characters in the first ``n_tokens`` bytes of an answer: the chunks llama.cpp sends."""
    return len(expected_text(ord(":"), n_tokens).decode("utf-8", errors="ignore"))


def _raw(llama: LlamaServer, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A request without fmbench: the JSON answer, or the list of streamed events."""
    req = urllib.request.Request(llama.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read().decode()
    if not body.get("stream"):
        return json.loads(raw), []
    events = [json.loads(line[6:]) for line in raw.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    return {}, events


def test_the_model_answers_its_cycle_and_the_log_has_the_timings_of_the_answer(llama: LlamaServer) -> None:
    mark = llama.log_mark()
    data, _ = _raw(llama, "/completions", {"prompt": "Say it:", "max_tokens": 22, "temperature": 0})
    assert data["choices"][0]["text"] == expected_text(ord(":"), 22).decode()
    assert data["usage"]["completion_tokens"] == 22
    (logged,) = llama.timings(mark, expect=1)
    assert logged.predicted_n == data["timings"]["predicted_n"] == 22
    assert logged.prompt_ms == pytest.approx(data["timings"]["prompt_ms"], abs=0.01)
    assert logged.predicted_per_token_ms == pytest.approx(data["timings"]["predicted_per_token_ms"], abs=0.01)


def test_llama_cpp_splits_characters_across_tokens(llama: LlamaServer) -> None:
    _, events = _raw(llama, "/completions", {"prompt": "Say it:", "max_tokens": 16, "temperature": 0,
                                             "stream": True})
    texts = [e["choices"][0]["text"] for e in events if e.get("choices") and e["choices"][0].get("text")]
    # 16 tokens: one cycle (11 bytes, 5 characters), "a", "é", then 2 bytes of "中" never sent
    assert "".join(texts) == expected_text(ord(":"), 16).decode(errors="ignore")
    assert len(texts) == _characters(16) == 7
    # /v1/completions streams carry usage always; the chat API only with include_usage
    assert [e["usage"]["completion_tokens"] for e in events if e.get("usage")] == [16]


def test_llama_cpp_chat_streams_carry_usage_only_when_asked(llama: LlamaServer) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0, "stream": True}
    _, plain = _raw(llama, "/chat/completions", body)
    _, asked = _raw(llama, "/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert not any(e.get("usage") for e in plain)
    assert [e["usage"]["completion_tokens"] for e in asked if e.get("usage")] == [8]


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_no_client_caused_errors(llama: LlamaServer, tmp_path: Path, api: str, stream: bool, concurrency: int) -> None:
    requests = 24
    rec = _shard(llama, tmp_path, api=api, stream=stream, concurrency=concurrency, requests=requests)
    failed = rec.filter(~pl.col("ok"))
    assert failed.height == 0, failed.select("request_id", "error_kind", "error").rows()[:5]
    assert rec.height == requests
    # the server's count, not the chunks: 32 tokens arrive as 14 characters
    assert rec["output_tokens"].to_list() == [32] * requests
    assert set(rec["usage_source"]) == {"server"}
    assert rec["chunks"].to_list() == [_characters(32) if stream else 0] * requests


def test_output_tokens_are_the_servers_when_a_stream_ends_inside_a_character(llama: LlamaServer,
                                                                               tmp_path: Path) -> None:
    rec = _shard(llama, tmp_path, api="completions", stream=True, concurrency=1, requests=6, max_tokens=16)
    assert rec["ok"].all(), rec.filter(~pl.col("ok"))["error"].to_list()
    assert rec["output_tokens"].to_list() == [16] * 6  # the 2 withheld bytes of "中" are counted
    assert rec["chunks"].to_list() == [_characters(16)] * 6


def test_output_tokens_when_the_stream_carries_no_usage(llama: LlamaServer, tiny_model: Path,
                                                        tmp_path: Path) -> None:
    # Chat streams without include_usage carry no usage; llama.cpp's final chunk still has its
    # `timings`. The output tokens are the server's 32, not what a count of the text gives (here
    # characters: 14), nor the 14 chunks.
    rec = _shard(llama, tmp_path, api="chat", stream=True, concurrency=2, requests=8,
                 extra_body={"stream_options": {"include_usage": False}}, count_tokens=len)
    assert rec["ok"].all(), rec.filter(~pl.col("ok"))["error"].to_list()
    assert rec["output_tokens"].to_list() == [32] * 8
    assert rec["chunks"].to_list() == [_characters(32)] * 8
    # and the model's tokenizer.json, for a run's `tokenizer`, counts whole answers as the server does
    tokenizer = load_tokenizer(str(tiny_model.with_name("tokenizer.json")))
    assert tokenizer.count(expected_text(ord(":"), 32).decode()) == 32


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_an_answer_whose_only_token_is_half_a_character_is_a_success(llama: LlamaServer, tmp_path: Path,
                                                                     stream: bool) -> None:
    # After "a" the model generates the first byte of "é": with max_tokens 1 the server did its
    # work (usage: 1 token) but streams no text at all. That is the server's answer, not an error.
    prompts = [Prompt(f"p{i}", f"Request {i}, say a", 10) for i in range(4)]
    assert expected_text(ord("a"), 1) == "é".encode()[:1]
    rec = _shard(llama, tmp_path, api="completions", stream=stream, concurrency=1, requests=4, max_tokens=1,
                 prompts=prompts)
    assert rec["ok"].all(), rec.filter(~pl.col("ok"))["error"].to_list()
    assert rec["output_tokens"].to_list() == [1] * 4
    assert set(rec["usage_source"]) == {"server"}
    # Streamed, the byte is withheld and no text ever arrives (the record says so); in a JSON
    # answer llama.cpp sends it as U+FFFD, which is text.
    notes = rec["note"].to_list()
    assert all("no output text" in (n or "") for n in notes) if stream else notes == [None] * 4, notes


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_ttft_and_tpot_agree_with_the_servers_own_timings(llama: LlamaServer, tmp_path: Path, api: str,
                                                          concurrency: int) -> None:
    requests = 16
    mark = llama.log_mark()
    rec = _shard(llama, tmp_path, api=api, stream=True, concurrency=concurrency, requests=requests, max_tokens=32)
    assert rec["ok"].all(), rec.filter(~pl.col("ok"))["error"].to_list()
    server = llama.timings(mark, expect=requests)
    assert len(server) == requests and all(t.predicted_n == 32 for t in server)
    ttft_ms = sorted(x * 1e3 for x in rec["ttft_s"])
    prompt_ms = sorted(t.prompt_ms for t in server)
    # The client's TTFT spans the server's prompt processing: each order statistic is at least the
    # server's (at concurrency 1 the requests pair up one to one in time order).
    if concurrency == 1:
        by_start = rec.sort("t_start")["ttft_s"].to_list()
        assert all(c * 1e3 >= s.prompt_ms for c, s in zip(by_start, server, strict=True)), \
            list(zip(by_start, [s.prompt_ms for s in server], strict=True))
    assert all(c >= s for c, s in zip(ttft_ms, prompt_ms, strict=True)), (ttft_ms, prompt_ms)
    tpot = statistics.median(x * 1e3 for x in rec["tpot_s"])
    server_tpot = statistics.median(t.predicted_per_token_ms for t in server)
    assert tpot == pytest.approx(server_tpot, rel=0.10), (
        tpot, server_tpot, sorted(x * 1e3 for x in rec["tpot_s"]), sorted(t.predicted_per_token_ms for t in server),
        [t.task for t in server], rec["resends"].to_list())


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_the_probe_accepts_llama_cpp(llama: LlamaServer, api: str, stream: bool) -> None:
    experiment = ExperimentConfig.model_validate({
        "name": "llama", "endpoint": {"provider": "openai", "base_url": llama.url, "model": "tiny", "api": api},
        "inference": {"max_tokens": 32, "stream": stream}})
    probe_endpoint(experiment, None, "experiment 'llama'")  # raises on any failure


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fmbench", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.mark.parametrize("stream", [True, False])
def test_prompt_tokens_the_server_served_from_its_cache_are_recorded(llama: LlamaServer, tmp_path: Path,
                                                                     stream: bool) -> None:
    # Four new prompts, each sent twice, one at a time: the second time llama.cpp has the prompt in its
    # cache and evaluates only its last token. With its cache off, it says it served none from there.
    prompts = _prompts(4)
    df = _shard(llama, tmp_path, api="chat", stream=stream, concurrency=1, requests=8, prompts=prompts,
                max_tokens=4, name="cached").sort("request_id")
    assert df["ok"].all() and df["cached_tokens"].null_count() == 0
    first, again = df.head(4), df.tail(4)
    assert (first["cached_tokens"] < first["input_tokens"] // 2).all(), first.select("input_tokens", "cached_tokens")
    assert (again["cached_tokens"] >= again["input_tokens"] - 2).all(), again.select("input_tokens", "cached_tokens")
    assert (again["cached_tokens"] < again["input_tokens"]).all()
    off = _shard(llama, tmp_path, api="chat", stream=stream, concurrency=1, requests=8, prompts=prompts,
                 max_tokens=4, extra_body={"cache_prompt": False}, name="uncached")
    assert off["ok"].all() and off["cached_tokens"].to_list() == [0] * 8


@pytest.mark.parametrize("stream", [True, False])
def test_answers_the_server_cuts_at_its_context_are_noted_counted_and_warned_of(llama: LlamaServer, tmp_path: Path,
                                                                                stream: bool) -> None:
    from fmbench.endpoints._chat import CUT_BY_SERVER
    from fmbench.metrics import summarize
    from fmbench.report.render import _cut_warning

    # ~1,000-token prompts in a slot of 1,024: llama.cpp ends each answer where its context ends, well
    # before max_tokens, with finish_reason length. Short prompts' answers reach max_tokens (the same
    # finish_reason, and no note).
    texts = [f"Request {next(_SERIAL)}: {'x' * 960} Answer:" for _ in range(4)]
    long = [Prompt(f"l{i}", t, len(t.encode())) for i, t in enumerate(texts)]
    cut = _shard(llama, tmp_path, api="chat", stream=stream, concurrency=1, requests=4, prompts=long, max_tokens=64,
                 extra_body={"cache_prompt": False}, name="cut")
    assert cut["ok"].all(), cut["error"].to_list()
    assert (cut["output_tokens"] < 64).all() and (cut["output_tokens"] > 0).all()
    assert all(n.startswith(f"{CUT_BY_SERVER} at ") for n in cut["note"].to_list()), cut["note"].to_list()
    whole = _shard(llama, tmp_path, api="chat", stream=stream, concurrency=1, requests=4, max_tokens=16, name="whole")
    assert whole["ok"].all() and whole["output_tokens"].to_list() == [16] * 4
    assert whole["note"].null_count() == 4
    metrics = summarize(cut, None)
    assert metrics["cut_answers"].to_list() == [4] and summarize(whole, None)["cut_answers"].to_list() == [0]
    assert _cut_warning(summarize(whole, None)) is None
    warning = _cut_warning(metrics)
    assert warning is not None and warning.startswith("1 shard (cut) had answers the server cut short before "
                                                      "max_tokens (4 of their 4 answers")


def test_the_shipped_config_validates_and_runs_against_llama_cpp(llama: LlamaServer, tiny_model: Path,
                                                                 tmp_path: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home-llama")), PYTHONPATH=str(ROOT),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    config = str(ROOT / "configs" / "llama-cpp.yml")
    # The tiny model reads bytes: its own tokenizer and short synthetic prompts keep the CPU work small.
    sets = [f"experiments.0.endpoint.base_url={llama.url}",
            f"tokenizer={tiny_model.with_name('tokenizer.json')}",
            "buckets=[[40, 80]]",
            "datasets=[{name: synthetic, source: synthetic, prompts_per_bucket: 8, seed: 0}]",
            "experiments.0.concurrency_levels=[1, 4]",
            "experiments.0.requests_per_level=12",
            "experiments.0.inference.max_tokens=32"]
    args = [a for s in sets for a in ("--set", s)]
    checked = _cli(env, "validate", config, *args)
    assert checked.returncode == 0, checked.stderr
    assert "OK" in checked.stdout
    ran = _cli(env, "run", config, "--output", str(tmp_path / "results"), *args)
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = Path(ran.stdout.strip().splitlines()[-1].removeprefix("Report: "))
    rec = pl.read_parquet(report.parent / "requests.parquet").filter(~pl.col("warmup"))
    assert rec.height == 24
    assert rec["ok"].all(), rec.filter(~pl.col("ok"))["error"].to_list()
    assert rec["output_tokens"].to_list() == [32] * 24
    assert set(rec["usage_source"]) == {"server"}
    # 8 prompts for 12 requests at each of two levels: every prompt goes out again, and the shipped
    # config keeps llama.cpp's prompt cache off, so none of them skipped its prefill.
    assert rec["cached_tokens"].to_list() == [0] * 24
    assert "prompt cache" not in report.read_text()


def test_benchmark_6_times_both_clients_against_the_wire(llama_binary: Path, tmp_path: Path) -> None:
    """`make bench`'s benchmark 6 (``--quick``): both clients' TTFT and TPOT beside the wire's."""
    env = {**os.environ, "FMBENCH_LLAMA_SERVER": str(llama_binary)}
    subprocess.run([sys.executable, "-m", "benchmarks.llama_cpp", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                   env=env, check=True, timeout=240, capture_output=True)
    data = json.loads((tmp_path / "llama_cpp.json").read_text())
    assert [(r["api"], r["concurrency"]) for r in data["rows"]] == [
        ("completions", 1), ("completions", 4), ("chat", 1), ("chat", 4)]
    for row in data["rows"]:
        if "note" in row["wire"] and not os.environ.get("CI"):
            pytest.skip(row["wire"]["note"])  # no CAP_NET_RAW here; CI runs as root
        assert "ttft_vs_wire" in row["checks"]
        for who in ("fmbench", "stdlib"):
            side = row[who]
            # a client stamps its send before the first byte is on the wire and its first token
            # after the segment carrying it arrived: never ahead of the wire (clock slew aside)
            assert side["ttft_minus_wire_min_ms"] > -0.2
            assert side["wire_ttft_ms"] > 0 and side["wire_tpot_ms"] > 0
        # a request the server never answered was one fmbench sent again, never one it lost
        assert row["wire"]["unanswered_sends"] <= row["fmbench"]["resends"] + row["stdlib"]["resends"]


def _open_shard(llama: LlamaServer, tmp_path: Path, rate: float, requests: int, name: str) -> Any:
    """One open-loop shard (Poisson arrivals at ``rate``) through fmbench's client and engine."""
    endpoint = OpenAIEndpoint(provider="openai", base_url=llama.url, model="tiny", api="completions")  # type: ignore[arg-type]
    inference = InferenceConfig(max_tokens=32, temperature=0.0, stream=True, timeout_s=120)
    spec = ShardSpec(shard_id=name, experiment="llama", dataset="d", bucket="1-100", bucket_min=1, bucket_max=100,
                     request_rate=rate, requests=requests, seed=3)
    return run_shard(make_client(endpoint, inference), _prompts(requests), spec, tmp_path / f"{name}.parquet",
                     lambda text: len(text.encode()))


def test_a_real_server_offered_more_than_it_serves_is_flagged_overloaded_and_one_it_keeps_up_with_is_not(
        llama: LlamaServer, tmp_path: Path) -> None:
    """llama.cpp queues what its 4 slots cannot take: offered far above what it serves (a 32-token
    answer takes it tens of ms per slot on one thread), its requests complete at a fraction of the
    arrival rate and the shard says so; offered a few requests a second, it keeps up."""
    flooded = _open_shard(llama, tmp_path, rate=300.0, requests=120, name="flooded")
    assert flooded.errors == 0
    assert flooded.overloaded, (flooded.completion_rate, flooded.valid, flooded.invalid_reason)
    assert flooded.completion_rate is not None and flooded.completion_rate < 0.9
    assert flooded.overload_reason and "req/s offered" in flooded.overload_reason
    kept_up = _open_shard(llama, tmp_path, rate=4.0, requests=24, name="kept_up")
    assert kept_up.errors == 0 and not kept_up.overloaded, kept_up.overload_reason
