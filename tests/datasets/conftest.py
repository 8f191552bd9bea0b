"""Fixtures for the datasets tests: real tokenizers (bundled cl100k, tokenizer.json files trained here),
and an offline Hugging Face hub cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fmbench.datasets.synthetic import _WORDS
from fmbench.datasets.tokenizer import Tokenizer, clear_tokenizer_cache, load_tokenizer


def _corpus() -> list[str]:
    words = list(_WORDS)
    lines = [" ".join(words[i : i + 12]) + "." for i in range(0, len(words), 12)]
    return lines * 20 + ["The cat sat on the mat. A dog ran. Then the day began, and the night came!"] * 20


@pytest.fixture(scope="session")
def wordlevel_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WordLevel tokenizer.json trained here on the synthetic word list (one token per word)."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    tok.train_from_iterator(_corpus(), trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path_factory.mktemp("wordlevel") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def bpe_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level BPE tokenizer.json trained here (words split into several tokens)."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>"]
    )
    tok.train_from_iterator(_corpus(), trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def cl100k() -> Tokenizer:
    return load_tokenizer("cl100k_base")


@pytest.fixture
def fresh_tokenizers() -> Iterator[None]:
    clear_tokenizer_cache()
    yield
    clear_tokenizer_cache()


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, offline Hugging Face hub cache: hub lookups fail at once instead of retrying the network."""
    import huggingface_hub.constants as hfc

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))
    return cache
