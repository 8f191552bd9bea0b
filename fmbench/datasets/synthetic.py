"""Synthetic prompts of exact token lengths, spread evenly over each bucket.

Text is built from a fixed English word list, one single-token piece at a time, and checked with
the tokenizer it is given (the run's or an experiment's), so the rendered prompt (template
included) has exactly the target length.
Each prompt draws its own word sequence, so no two prompts share a long prefix (server prefix
caches would otherwise flatter TTFT).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache

from fmbench.config import SyntheticDataset, bucket_label
from fmbench.datasets.template import render_template, template_fields
from fmbench.datasets.tokenizer import Tokenizer
from fmbench.errors import DatasetError
from fmbench.protocol import Prompt

# Bump when the generated text changes for the same parameters: it is part of the dataset fingerprint.
GENERATOR_VERSION = 2  # 2: the shortest length measured over every starter a template's {text} can take

_WORD_TEXT = """
the of and to in is was for on that with as by at from his her their our your its this these those
which who what when where while after before during under over between through about into across along
around near behind beyond within without against among toward upon a an one two three four five six seven
eight nine ten first second third last next many several few some all each every other another same
different small large great long short high low old new young early late good better best little much more
most less least simple clear strong open close full empty warm cold bright dark quiet loud quick slow
careful gentle time year day week month morning evening night season moment hour minute history story
report letter paper book page chapter word line voice sound music song river mountain valley forest field
garden road street bridge city town village house room door window table chair wall floor roof kitchen
market school church station harbor island coast ocean lake sea sky wind rain snow cloud storm light fire
water stone wood iron glass gold silver bread milk tea coffee fruit apple tree flower grass bird horse dog
cat fish animal people person man woman child family friend teacher student doctor farmer worker king
queen leader member group team company government country nation state world office system project
question answer problem reason result example idea plan method process change power energy money price
value trade travel journey work study play game rule law order number part place point side end case fact
area make made take took give gave find found keep kept hold held bring brought build built begin began
become became leave left feel felt show showed tell told write wrote read speak spoke hear heard walk
walked move moved carry carried follow followed watch watched learn learned remember remembered describe
described explain explained consider considered decide decided return returned arrive arrived remain
remained visit visited reach reached opened closed turn turned start started finish finished also often
still always never sometimes already again soon later together almost perhaps rather quite very then
there here now today slowly quickly
"""
_WORDS = tuple(dict.fromkeys(_WORD_TEXT.split()))
_STARTER_TEXT = """
The A This That Every Some Many Most Each Our Their Later Then Today Yesterday Soon Often After Before
During When While Although Because Meanwhile However
"""
_STARTERS = tuple(_STARTER_TEXT.split())
# Suffixes tried, in order, to add the last token or two when whole words overshoot.
_FILLERS = (",", ".", ";", ":", "!", "?", " a", " I", "-", "'", " x", "0", "\n")
_MIN_PIECES = 8


class _Pieces:
    """The single-token pieces a tokenizer offers: words (with a leading space), sentence starters, period."""

    def __init__(self, words: list[str], starters: list[str], period: str | None) -> None:
        self.words = words
        self.starters = starters or [w.strip() for w in words[:1]]
        self.period = period


@lru_cache(maxsize=16)
def _pieces_for(tokenizer: Tokenizer) -> _Pieces:
    spaced = [" " + w for w in _WORDS]
    counts = tokenizer.count_many(spaced)
    words = [s for s, c in zip(spaced, counts) if c == 1]
    if len(words) < _MIN_PIECES:
        # A tokenizer without single-token English words: use the cheapest words; the fit still checks.
        ranked = sorted(zip(counts, range(len(spaced))))
        words = [spaced[i] for _, i in ranked[: max(_MIN_PIECES, len(words))]]
    starters = [s for s in _STARTERS if tokenizer.count(s) == 1 and tokenizer.count(" " + s) == 1]
    if not starters:  # no capitalised single tokens (small vocabularies): start sentences in lower case
        starters = [w[1:] for w in words if tokenizer.count(w[1:]) == 1]
    period = "." if tokenizer.count(".") == 1 else None
    return _Pieces(words, starters, period)


def _piece_stream(pieces: _Pieces, rng: random.Random, firsts: list[str]) -> Callable[[int], list[str]]:
    """A function returning the first n pieces of one prompt's deterministic sentence stream, which
    opens with one of ``firsts``."""
    out: list[str] = []
    left_in_sentence = 0

    def take(n: int) -> list[str]:
        nonlocal left_in_sentence
        while len(out) < n:
            if left_in_sentence == 0:
                start = rng.choice(pieces.starters if out else firsts)
                out.append(start if not out else " " + start)
                left_in_sentence = rng.randint(6, 16)
            elif left_in_sentence == 1 and pieces.period is not None:
                out.append(pieces.period)
                left_in_sentence = 0
            else:
                out.append(rng.choice(pieces.words))
                left_in_sentence -= 1
        return out[:n]

    return take


def spread_targets(lo: int, hi: int, n: int) -> list[int]:
    """``n`` token lengths spread evenly over ``[lo, hi - 1]`` (both ends included when n > 1)."""
    top = hi - 1
    if n == 1:
        return [lo + (top - lo) // 2]
    return [lo + round(i * (top - lo) / (n - 1)) for i in range(n)]


def _fit_text(
    target: int, take: Callable[[int], list[str]], measure: Callable[[str], int], overhead: int, what: str
) -> str:
    """Text whose measured length is exactly ``target``: whole pieces first, then one-token fillers."""
    k = max(1, target - overhead)
    best_under: tuple[int, int] | None = None  # (count, k) of the longest fit below target
    seen: set[int] = set()
    for _ in range(12):
        text = "".join(take(k))
        c = measure(text)
        if c == target:
            return text
        if c < target and (best_under is None or c > best_under[0]):
            best_under = (c, k)
        seen.add(k)
        step = target - c
        nk = max(1, k + step)
        while nk in seen and 1 < nk:  # not additive here: walk one piece at a time instead of jumping
            nk += 1 if step > 0 else -1
        if nk in seen:
            break
        k = nk
    if best_under is None:
        raise DatasetError(f"{what}: cannot build a prompt of {target} tokens (the shortest text is longer)")
    c, k = best_under
    text = "".join(take(k))
    for _ in range(target - c + 4):
        for filler in _FILLERS:
            candidate = text + filler
            cc = measure(candidate)
            if c < cc <= target:
                text, c = candidate, cc
                break
        else:
            break
        if c == target:
            return text
    raise DatasetError(f"{what}: cannot build a prompt of exactly {target} tokens with this tokenizer (got {c})")


def generate_synthetic_prompts(
    dataset: SyntheticDataset, buckets: list[tuple[int, int]], tokenizer: Tokenizer
) -> list[Prompt]:
    """Generate ``dataset.prompts_per_bucket`` prompts per bucket, of exact token lengths.

    For a bucket ``[lo, hi)`` the target lengths are spread evenly over ``[lo, hi - 1]``; when the
    template alone is longer than ``lo``, over the lengths the template leaves reachable. A bucket
    the template cannot fit at all gets no prompts. The same seed gives the same prompts.

    Returns:
        Prompts in bucket order; ids are ``NAME-LO-HI-INDEX``.

    Raises:
        DatasetError: the template lacks ``{text}`` or names another field, no bucket can be reached,
            or the tokenizer cannot produce some exact length.
    """
    template = dataset.prompt_template
    if template is not None:
        where = f"dataset {dataset.name!r}: prompt_template"
        fields = template_fields(template, where=where)
        if fields != ["text"]:
            raise DatasetError(f"{where}: a synthetic template must use exactly one field, {{text}} (it uses {fields})")

        def render(text: str) -> str:
            return render_template(template, {"text": text}, where)
    else:

        def render(text: str) -> str:
            return text

    def measure(text: str) -> int:
        return tokenizer.count(render(text))

    pieces = _pieces_for(tokenizer)
    overhead = measure("")
    # A template's text can merge with the first word ("'{text}": "'A" is 1 token, "'Meanwhile" 3): the
    # shortest prompt opens with the shortest starter, and a prompt opens only with starters that fit it.
    opening = {s: measure(s) for s in pieces.starters}
    shortest = min(opening.values())
    prompts: list[Prompt] = []
    reachable = False
    for lo, hi in buckets:
        low = max(lo, shortest)
        if low > hi - 1:
            continue
        reachable = True
        label = bucket_label((lo, hi))
        for i, target in enumerate(spread_targets(low, hi, dataset.prompts_per_bucket)):
            rng = random.Random(f"fmbench-synthetic:{dataset.seed}:{lo}:{hi}:{i}")
            what = f"dataset {dataset.name!r}: bucket {label} prompt {i}"
            firsts = [s for s, c in opening.items() if c <= target]
            text = _fit_text(target, _piece_stream(pieces, rng, firsts), measure, overhead, what)
            rendered = render(text)
            prompts.append(Prompt(prompt_id=f"{dataset.name}-{label}-{i:04d}", text=rendered, input_tokens=target))
    if not reachable:
        spans = ", ".join(f"[{lo}, {hi})" for lo, hi in buckets)
        raise DatasetError(
            f"dataset {dataset.name!r}: the shortest synthetic prompt has {shortest} tokens "
            f"(template {overhead} tokens); no bucket can hold it ({spans})"
        )
    return prompts
