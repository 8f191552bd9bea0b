"""Synthetic prompts: exact token lengths for several tokenizers, spread, determinism, templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmbench.config import SyntheticDataset, bucket_label
from fmbench.datasets import generate_synthetic_prompts, load_tokenizer, spread_targets
from fmbench.datasets.tokenizer import Tokenizer
from fmbench.errors import DatasetError

BUCKETS = [(1, 500), (500, 1000), (1000, 2000), (2000, 4000)]


def syn(**kw: object) -> SyntheticDataset:
    return SyntheticDataset(name=str(kw.pop("name", "syn")), source="synthetic", **kw)


def _tokenizers(wordlevel_json: Path, bpe_json: Path) -> dict[str, Tokenizer]:
    return {
        "cl100k": load_tokenizer("cl100k_base"),
        "wordlevel": load_tokenizer(str(wordlevel_json)),
        "bpe": load_tokenizer(str(bpe_json)),
    }


def test_spread_targets() -> None:
    assert spread_targets(1, 500, 5) == [1, 125, 250, 375, 499]
    assert spread_targets(500, 1000, 2) == [500, 999]
    assert spread_targets(10, 20, 1) == [14]
    assert spread_targets(5, 7, 4) == [5, 5, 6, 6]


@pytest.mark.parametrize("name", ["cl100k", "wordlevel", "bpe"])
def test_exact_lengths_for_every_prompt(name: str, wordlevel_json: Path, bpe_json: Path) -> None:
    tok = _tokenizers(wordlevel_json, bpe_json)[name]
    prompts = generate_synthetic_prompts(syn(prompts_per_bucket=12), BUCKETS, tok)
    assert len(prompts) == 12 * len(BUCKETS)
    for (lo, hi), i in zip(BUCKETS, range(0, len(prompts), 12)):
        chunk = prompts[i : i + 12]
        assert [p.input_tokens for p in chunk] == spread_targets(lo, hi, 12)
        assert all(p.prompt_id.startswith(f"syn-{bucket_label((lo, hi))}-") for p in chunk)
    assert [tok.count(p.text) for p in prompts] == [p.input_tokens for p in prompts]


@pytest.mark.parametrize("name", ["cl100k", "wordlevel", "bpe"])
def test_exact_lengths_with_template(name: str, wordlevel_json: Path, bpe_json: Path) -> None:
    tok = _tokenizers(wordlevel_json, bpe_json)[name]
    template = "Summarize the following text.\n\n{text}\n\nSummary:"
    prompts = generate_synthetic_prompts(syn(prompts_per_bucket=8, prompt_template=template), BUCKETS, tok)
    assert len(prompts) == 8 * len(BUCKETS)
    assert [tok.count(p.text) for p in prompts] == [p.input_tokens for p in prompts]
    for p in prompts:
        assert p.text.startswith("Summarize the following text.\n\n") and p.text.endswith("\n\nSummary:")
    # The template's own tokens make the shortest lengths unreachable: bucket 1-500 starts above them.
    overhead = tok.count(template.format(text=""))
    assert prompts[0].input_tokens > overhead and prompts[7].input_tokens == 499


def test_default_fifty_per_bucket_and_readable_text(cl100k: Tokenizer) -> None:
    prompts = generate_synthetic_prompts(syn(), BUCKETS, cl100k)
    assert len(prompts) == 200
    assert [cl100k.count(p.text) for p in prompts] == [p.input_tokens for p in prompts]
    long = prompts[-1].text
    assert long[0].isupper() and ". " in long and "  " not in long


def test_long_context_lengths(cl100k: Tokenizer) -> None:
    prompts = generate_synthetic_prompts(syn(prompts_per_bucket=3), [(16384, 32768)], cl100k)
    assert [p.input_tokens for p in prompts] == [16384, 24576, 32767]
    assert [cl100k.count(p.text) for p in prompts] == [16384, 24576, 32767]


def test_deterministic_for_seed_and_varied_across_seeds(cl100k: Tokenizer) -> None:
    a = generate_synthetic_prompts(syn(prompts_per_bucket=5, seed=3), BUCKETS[:2], cl100k)
    b = generate_synthetic_prompts(syn(prompts_per_bucket=5, seed=3), BUCKETS[:2], cl100k)
    c = generate_synthetic_prompts(syn(prompts_per_bucket=5, seed=4), BUCKETS[:2], cl100k)
    assert a == b
    assert [p.text for p in a] != [p.text for p in c]
    assert [p.input_tokens for p in a] == [p.input_tokens for p in c]


def test_prompts_do_not_share_prefixes(cl100k: Tokenizer) -> None:
    prompts = generate_synthetic_prompts(syn(prompts_per_bucket=20), [(1000, 2000)], cl100k)
    assert len({p.text[:80] for p in prompts}) == 20


def test_template_must_use_text_only(cl100k: Tokenizer) -> None:
    # The config refuses it (so `validate` does, before any run directory exists) ...
    with pytest.raises(ValueError, match=r"a synthetic template must use exactly one field"):
        syn(prompt_template="no field here")
    with pytest.raises(ValueError, match=r"use \{text\} itself"):
        syn(prompt_template="{text[0]} {text}")
    # ... and so does the generator, given a dataset built without the config's checks.
    def unchecked(template: str) -> SyntheticDataset:
        return SyntheticDataset.model_construct(name="syn", source="synthetic", prompts_per_bucket=50, seed=0,
                                                prompt_template=template)

    with pytest.raises(DatasetError, match=r"'syn': prompt_template: a synthetic template must use exactly one field"):
        generate_synthetic_prompts(unchecked("no field here"), BUCKETS, cl100k)
    with pytest.raises(DatasetError, match=r"\['text', 'topic'\]"):
        generate_synthetic_prompts(unchecked("{text} about {topic}"), BUCKETS, cl100k)
    with pytest.raises(DatasetError, match=r"'syn': prompt_template: cannot render template"):
        generate_synthetic_prompts(unchecked("{text[0]} {text}"), BUCKETS, cl100k)


def test_bucket_shorter_than_template_gets_no_prompts(cl100k: Tokenizer) -> None:
    template = "Please read the following passage carefully and then answer the question below.\n{text}"
    prompts = generate_synthetic_prompts(syn(prompts_per_bucket=4, prompt_template=template), [(1, 10), (10, 100)], cl100k)
    assert {p.prompt_id.rsplit("-", 1)[0] for p in prompts} == {"syn-10-100"}
    assert [p.input_tokens for p in prompts][-1] == 99

    with pytest.raises(DatasetError) as err:
        generate_synthetic_prompts(syn(prompt_template=template), [(1, 10)], cl100k)
    assert "'syn'" in str(err.value) and "[1, 10)" in str(err.value) and "template" in str(err.value)


@pytest.mark.parametrize("seed", [0, 52])
def test_template_touching_text_reaches_its_shortest_length_for_any_seed(cl100k: Tokenizer, seed: int) -> None:
    """With "'{text}" the first word can merge with the quote ("'A" is one token, "'Meanwhile" three)."""
    ds = SyntheticDataset(name="s", source="synthetic", prompts_per_bucket=50, seed=seed, prompt_template="'{text}")
    prompts = generate_synthetic_prompts(ds, [(1, 500)], cl100k)
    assert len(prompts) == 50
    assert all(cl100k.count(p.text) == p.input_tokens and p.text.startswith("'") for p in prompts)
    assert prompts[0].input_tokens == 1 and prompts[-1].input_tokens == 499
    assert len({p.text.split()[0] for p in prompts}) > 5  # longer prompts still open with varied words
