"""Per-experiment tokenizers: one bucketing per tokenizer (shared by the experiments that name it),
cache keys, config checks that name file and field without downloading, and ``hf:`` tokenizers
downloaded from a hub server the test starts on 127.0.0.1 (HF_ENDPOINT), or refused offline in one line."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from fmbench.datasets import clear_tokenizer_cache, load_tokenizer
from fmbench.errors import ConfigError, TokenizerError
from fmbench.pipeline import (
    PromptSet,
    bucket_dataset,
    bucketing_jobs,
    dataset_cache_key,
    load_benchmark_config,
    plan_shards,
)
from tests.support.datasets import write_jsonl

# Six prompts whose lengths both test tokenizers give exactly: whitespace-separated words, and bytes.
PROMPTS = [
    "a b c d e",  # 5 words, 9 bytes
    "alpha beta",  # 2 words, 10 bytes
    "x" * 30,  # 1 word, 30 bytes
    "one two three four five six seven eight",  # 8 words, 39 bytes
    " ".join(["w"] * 20),  # 20 words, 39 bytes
    "ab",  # 1 word, 2 bytes
]
BUCKETS = [[1, 4], [4, 12], [12, 64]]
WORD_COUNTS = {"1-4": 3, "4-12": 2, "12-64": 1}
BYTE_COUNTS = {"1-4": 1, "4-12": 2, "12-64": 3}


def write_words_tokenizer(path: Path) -> Path:
    """A tokenizer.json counting whitespace-separated words (every word is the unknown token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


def write_bytes_tokenizer(path: Path) -> Path:
    """A byte-level BPE tokenizer.json without merges: one token per UTF-8 byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(path))
    return path


@pytest.fixture
def two_tokenizer_config(tmp_path: Path, fresh_tokenizers: None) -> Path:
    """A config whose run tokenizer counts words; experiment b counts bytes, c names the run's file again."""
    write_words_tokenizer(tmp_path / "words.json")
    (tmp_path / "tok").mkdir()
    write_bytes_tokenizer(tmp_path / "tok" / "bytes.json")
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": p} for p in PROMPTS])
    sim = {"provider": "simulated", "ttft_ms": 1, "tpot_ms": 1, "output_tokens": 2}
    data = {
        "name": "tok", "tokenizer": "words.json", "buckets": BUCKETS,
        "datasets": [{"name": "d", "source": "jsonl", "path": "d.jsonl"}],
        "experiments": [
            {"name": "a", "endpoint": sim},
            {"name": "b", "endpoint": sim, "tokenizer": "tok/bytes.json"},
            {"name": "c", "endpoint": sim, "tokenizer": "words.json"},
        ],
    }
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_one_bucketing_per_tokenizer_shared_by_experiments(two_tokenizer_config: Path) -> None:
    cfg = load_benchmark_config(str(two_tokenizer_config))
    # a and c use the run's tokenizer and share its buckets; b's tokenizer buckets the dataset again.
    assert bucketing_jobs(cfg) == [("d", None), ("d", "tok/bytes.json")]
    assert [cfg.tokenizer_for(e) for e in cfg.experiments] == ["words.json", "tok/bytes.json", "words.json"]


def test_two_tokenizers_bucket_the_same_prompts_differently(two_tokenizer_config: Path) -> None:
    cfg = load_benchmark_config(str(two_tokenizer_config))
    words = bucket_dataset(cfg, "d", None)
    counted = bucket_dataset(cfg, "d", "tok/bytes.json")
    assert {k: len(v) for k, v in words.items() if k != "__dropped__"} == WORD_COUNTS
    assert {k: len(v) for k, v in counted.items() if k != "__dropped__"} == BYTE_COUNTS
    assert sorted(r["input_tokens"] for r in words["12-64"]) == [20]
    assert sorted(r["input_tokens"] for r in counted["12-64"]) == [30, 39, 39]
    # Each experiment's shards are planned over the prompts of its own tokenizer.
    sets = [PromptSet(dataset="d", files={k: f"words/{k}" for k in WORD_COUNTS}, counts=WORD_COUNTS),
            PromptSet(dataset="d", tokenizer="tok/bytes.json", files={k: f"bytes/{k}" for k in BYTE_COUNTS},
                      counts={**BYTE_COUNTS, "1-4": 0})]
    assert [s.bucket for s in plan_shards(cfg, sets, cfg.experiments[0])] == ["1-4", "4-12", "12-64"]
    assert [s.bucket for s in plan_shards(cfg, sets, cfg.experiments[1])] == ["4-12", "12-64"]
    assert sets[1].key.startswith("d@tok-bytes.json-") and sets[0].key == "d"


def test_bucketing_cache_key_follows_the_tokenizer(two_tokenizer_config: Path) -> None:
    from tasks.benchmark import _dataset_key

    cfg = load_benchmark_config(str(two_tokenizer_config))
    run_key = dataset_cache_key(cfg, "d", None)
    bytes_key = dataset_cache_key(cfg, "d", "tok/bytes.json")
    assert run_key != bytes_key
    assert dataset_cache_key(cfg, "d", "words.json") == run_key  # the same file, named again
    # A copy of a tokenizer elsewhere has the same vocabulary, so the same cached buckets.
    shutil.copy(two_tokenizer_config.parent / "tok" / "bytes.json", two_tokenizer_config.parent / "copy.json")
    assert dataset_cache_key(cfg, "d", str(two_tokenizer_config.parent / "copy.json")) == bytes_key
    # The Prefect task's cache key is the same key, per tokenizer.
    keys = {_dataset_key(None, {"cfg": cfg, "dataset_name": "d", "tokenizer": t}) for t in (None, "tok/bytes.json")}
    assert keys == {f"fmbench-prompts-{run_key}", f"fmbench-prompts-{bytes_key}"}


# ---------------------------------------------------------------- config checks


def _config_with(tmp_path: Path, tokenizer: str, where: str = "experiment") -> Path:
    data: dict[str, Any] = {
        "name": "chk", "buckets": [[1, 100]],
        "datasets": [{"name": "s", "source": "synthetic", "prompts_per_bucket": 2}],
        "experiments": [{"name": "ok", "endpoint": {"provider": "simulated"}},
                        {"name": "llama", "endpoint": {"provider": "simulated"}}],
    }
    if where == "experiment":
        data["experiments"][1]["tokenizer"] = tokenizer
    else:
        data["tokenizer"] = tokenizer
    path = tmp_path / "chk.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("spec", "where", "expected"), [
    ("cl100k", "experiment", "experiments[llama].tokenizer: unknown tokenizer 'cl100k': not a tiktoken encoding ("),
    ("models/llama/tokenizer.json", "experiment", "experiments[llama].tokenizer: tokenizer file not found: "),
    ("hf:meta-llama", "experiment", "experiments[llama].tokenizer: 'hf:meta-llama': expected hf:ORG/NAME"),
    ("no_such_encoding", "run", ": tokenizer: unknown tokenizer 'no_such_encoding'"),
])
def test_config_check_names_file_and_field(tmp_path: Path, spec: str, where: str, expected: str) -> None:
    path = _config_with(tmp_path, spec, where)
    with pytest.raises(ConfigError) as err:
        load_benchmark_config(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
    if spec.endswith(".json"):
        assert str(tmp_path / "models" / "llama" / "tokenizer.json") in message  # resolved beside the config
    if spec == "cl100k":
        assert "cl100k_base" in message and "o200k_base" in message  # the names that exist


# ---------------------------------------------------------------- hf: from a hub server on 127.0.0.1

COMMIT = "feedfacefeedfacefeedfacefeedfacefeedface"


class _Hub(http.server.BaseHTTPRequestHandler):
    """Answers ``/{org}/{name}/resolve/{rev}/{file}`` the way the Hugging Face hub does."""

    files: ClassVar[dict[str, bytes]] = {}
    gated: ClassVar[set[str]] = set()
    log: ClassVar[list[tuple[str, str]]] = []

    def _answer(self, body: bool) -> None:
        self.log.append((self.command, self.path))
        parts = self.path.split("?")[0].strip("/").split("/")
        repo, ok = "/".join(parts[:2]), len(parts) == 5 and parts[2] == "resolve"
        if repo in self.gated:
            self._error(401, "GatedRepo", "Access to model is restricted.")
        elif not ok or not any(k.startswith(repo + "/") for k in self.files):
            self._error(404, "RepoNotFound", "Repository not found")
        elif f"{repo}/{parts[4]}" not in self.files:
            self._error(404, "EntryNotFound", "Entry not found")
        else:
            data = self.files[f"{repo}/{parts[4]}"]
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_tokenizers: None) -> Iterator[type[_Hub]]:
    """A hub server on 127.0.0.1 with an empty local hub cache; HF_ENDPOINT points at it."""
    import huggingface_hub.constants as hfc

    handler = type("Hub", (_Hub,), {"files": {}, "gated": set(), "log": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_hf_tokenizer_is_downloaded_from_hf_endpoint_and_cached(hub: type[_Hub], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hfc

    words = write_words_tokenizer(tmp_path / "w.json").read_bytes()
    hub.files["tiny-org/tiny-model/tokenizer.json"] = words
    tok = load_tokenizer("hf:tiny-org/tiny-model")
    assert tok.name == "hf:tiny-org/tiny-model"
    assert tok.count("one two three") == 3
    assert ("GET", "/tiny-org/tiny-model/resolve/main/tokenizer.json") in hub.log
    cached = list(Path(hfc.HF_HUB_CACHE).glob("models--tiny-org--tiny-model/snapshots/*/tokenizer.json"))
    assert len(cached) == 1 and cached[0].read_bytes() == words
    # The next process (here: a cleared cache) finds the file in the hub cache, even offline.
    clear_tokenizer_cache()
    gets = sum(1 for method, _ in hub.log if method == "GET")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    assert load_tokenizer("hf:tiny-org/tiny-model").fingerprint == tok.fingerprint
    assert sum(1 for method, _ in hub.log if method == "GET") == gets


@pytest.mark.parametrize(("repo", "expected"), [
    ("meta-llama/Gated-8B", "the model is gated: accept its licence on http://127.0.0.1:"),
    ("nobody/nothing", "no model repository nobody/nothing on http://127.0.0.1:"),
    ("tiny-org/no-tokenizer", "the repository tiny-org/no-tokenizer has no tokenizer.json"),
])
def test_hf_refusals_are_one_clear_line(hub: type[_Hub], repo: str, expected: str) -> None:
    hub.files["tiny-org/no-tokenizer/config.json"] = b"{}"
    hub.files["meta-llama/Gated-8B/tokenizer.json"] = b"{}"
    hub.gated.add("meta-llama/Gated-8B")
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(f"hf:{repo}")
    message = str(err.value)
    assert message.startswith(f"tokenizer 'hf:{repo}': ") and expected in message and "\n" not in message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable hub"])
def test_hf_offline_without_cached_file_says_what_to_do(hub: type[_Hub], monkeypatch: pytest.MonkeyPatch,
                                                        how: str) -> None:
    import huggingface_hub.constants as hfc

    if how == "HF_HUB_OFFLINE":
        monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(TokenizerError) as err:
        load_tokenizer("hf:meta-llama/Meta-Llama-3-8B-Instruct")
    message = str(err.value)
    assert "\n" not in message and hub.log == []
    assert message.startswith("tokenizer 'hf:meta-llama/Meta-Llama-3-8B-Instruct': tokenizer.json is not in the "
                              f"Hugging Face cache ({hfc.HF_HUB_CACHE})")
    assert "cannot be reached (offline?)" in message
    assert "`hf download meta-llama/Meta-Llama-3-8B-Instruct tokenizer.json`" in message
    assert "set the tokenizer to its path" in message


def test_validation_never_downloads(hub: type[_Hub], tmp_path: Path) -> None:
    path = _config_with(tmp_path, "hf:meta-llama/Meta-Llama-3-8B-Instruct")
    cfg = load_benchmark_config(str(path))
    assert cfg.tokenizer_for(cfg.experiments[1]) == "hf:meta-llama/Meta-Llama-3-8B-Instruct"
    assert hub.log == []


def test_preflight_downloads_each_experiments_tokenizer_or_fails_naming_it(
        hub: type[_Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hfc

    from fmbench.preflight import preflight

    cfg = load_benchmark_config(str(_config_with(tmp_path, "hf:tiny-org/tiny-model")))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    with pytest.raises(TokenizerError) as err:
        preflight(cfg, probe=False)
    assert str(err.value).startswith("experiments[llama].tokenizer: tokenizer 'hf:tiny-org/tiny-model': ")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    hub.files["tiny-org/tiny-model/tokenizer.json"] = write_words_tokenizer(tmp_path / "w.json").read_bytes()
    preflight(cfg, probe=False)
    assert ("GET", "/tiny-org/tiny-model/resolve/main/tokenizer.json") in hub.log


def test_an_empty_bucket_names_the_tokenizer_that_emptied_it(two_tokenizer_config: Path) -> None:
    from fmbench.errors import DatasetError
    from fmbench.pipeline import check_buckets

    cfg = load_benchmark_config(str(two_tokenizer_config))
    words = PromptSet(dataset="d", counts=WORD_COUNTS)
    counted = PromptSet(dataset="d", tokenizer="tok/bytes.json", counts={**BYTE_COUNTS, "1-4": 0})
    with pytest.raises(DatasetError) as err:
        check_buckets(cfg, [words, counted])
    assert str(err.value).startswith("buckets: no prompt of any dataset falls into [1, 4) tokens (counted with "
                                     "tokenizer tok/bytes.json)")
    assert check_buckets(cfg, [words, PromptSet(dataset="d", tokenizer="tok/bytes.json", counts=BYTE_COUNTS)]) == []


def test_config_hash_changes_only_when_an_experiment_names_a_tokenizer(two_tokenizer_config: Path) -> None:
    """A config without experiment tokenizers hashes as fmbench hashed it before they existed (the
    dump without the key), so the regression check does not report it as changed."""
    import json

    cfg = load_benchmark_config(str(two_tokenizer_config))
    unset = cfg.model_copy(update={"experiments": [e.model_copy(update={"tokenizer": None})
                                                   for e in cfg.experiments]})
    before = unset.model_dump(mode="json", exclude={"base_dir", "deploy_ahead"})
    for e in before["experiments"]:
        del e["tokenizer"]
        del e["overload_shortfall"]  # (added later, also left out of the hash while unset)
    assert unset.config_hash() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.config_hash() != unset.config_hash()
