"""Group prompts into token-length buckets: half-open ``[min, max)`` ranges keyed by ``"min-max"``."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from fmbench.config import bucket_label
from fmbench.protocol import Prompt


@dataclass(slots=True)
class BucketedPrompts:
    """One dataset's prompts per bucket, with what was read and dropped.

    ``buckets`` has every configured bucket label in bucket order, empty lists included.
    """

    dataset: str
    buckets: dict[str, list[Prompt]]
    total_read: int  # prompts the source produced
    dropped_outside: int  # prompts outside every bucket
    dropped_over_max: int = 0  # prompts past max_prompts in their bucket
    min_tokens: int | None = None  # shortest prompt read
    max_tokens: int | None = None  # longest prompt read
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Prompts kept per bucket label."""
        return {label: len(ps) for label, ps in self.buckets.items()}

    @property
    def dropped(self) -> int:
        """Prompts outside every bucket (same as ``dropped_outside``)."""
        return self.dropped_outside

    @property
    def total_kept(self) -> int:
        """Prompts kept over all buckets."""
        return sum(len(ps) for ps in self.buckets.values())

    def stats(self) -> dict[str, object]:
        """A JSON-friendly summary for logs and run metadata."""
        return {
            "dataset": self.dataset,
            "total_read": self.total_read,
            "dropped_outside": self.dropped_outside,
            "dropped_over_max": self.dropped_over_max,
            "min_tokens": self.min_tokens,
            "max_tokens": self.max_tokens,
            "counts": self.counts,
            "notes": list(self.notes),
        }


def find_bucket(tokens: int, buckets: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The bucket ``[lo, hi)`` holding ``tokens``, or None (buckets must be sorted and disjoint)."""
    i = bisect.bisect_right([lo for lo, _ in buckets], tokens) - 1
    if i >= 0 and tokens < buckets[i][1]:
        return buckets[i]
    return None


def _spread_positions(n: int, k: int) -> list[int]:
    """``k`` of the positions ``0..n-1`` spread evenly, both ends included (the middle one when k is 1)."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [(n - 1) // 2]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def split_prompts(
    prompts: Iterable[Prompt], buckets: list[tuple[int, int]], max_prompts: int | None = None, *, spread: bool = False
) -> tuple[dict[str, list[Prompt]], int, int]:
    """Bucket prompts and count what was dropped.

    Args:
        prompts: counted prompts.
        buckets: sorted, disjoint ``(min, max)`` pairs; ``min`` is inclusive, ``max`` exclusive.
        max_prompts: keep at most this many per bucket: the first ones in input order, or with
            ``spread`` an evenly spaced subset by position (for prompts ordered by length, such as
            synthetic ones, that keeps the bucket's range of lengths).
        spread: how ``max_prompts`` picks, see above.

    Returns:
        ``(per-bucket prompts, dropped as outside every bucket, dropped past max_prompts)``.
    """
    ordered = sorted(buckets)
    out: dict[str, list[Prompt]] = {bucket_label(b): [] for b in ordered}
    outside = over = 0
    for p in prompts:
        b = find_bucket(p.input_tokens, ordered)
        if b is None:
            outside += 1
            continue
        kept = out[bucket_label(b)]
        if max_prompts is not None and not spread and len(kept) >= max_prompts:
            over += 1
            continue
        kept.append(p)
    if max_prompts is not None and spread:
        for label, kept in out.items():
            over += max(0, len(kept) - max_prompts)
            out[label] = [kept[i] for i in _spread_positions(len(kept), max_prompts)]
    return out, outside, over


def bucket_prompts(
    prompts: Iterable[Prompt], buckets: list[tuple[int, int]], max_prompts: int | None = None, *, spread: bool = False
) -> dict[str, list[Prompt]]:
    """Group prompts by bucket label, keeping input order; prompts outside every bucket are dropped.

    Args:
        prompts: counted prompts.
        buckets: sorted, disjoint ``(min, max)`` pairs; ``min`` is inclusive, ``max`` exclusive.
        max_prompts: keep at most this many per bucket (see `split_prompts`).
        spread: keep an evenly spaced subset rather than the first ones.

    Returns:
        Every bucket's label mapped to its prompts (empty buckets included), in bucket order.
    """
    return split_prompts(prompts, buckets, max_prompts, spread=spread)[0]
