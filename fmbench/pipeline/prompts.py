"""The prompt steps: render, count and bucket a dataset, and store its prompts in the run."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fmbench.config import BenchmarkConfig, bucket_label
from fmbench.errors import DatasetError
from fmbench.rundir import RunInfo


class PromptSet(BaseModel):
    """Where a dataset's bucketed prompts are stored in a run."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    files: dict[str, str] = Field(default_factory=dict, description="bucket label -> prompts parquet URL")
    counts: dict[str, int] = Field(default_factory=dict, description="bucket label -> prompts")
    hashes: dict[str, str] = Field(default_factory=dict, description="bucket label -> payload sha256")
    dropped: int = Field(default=0, description="Prompts outside every bucket.")


def dataset_cache_key(cfg: BenchmarkConfig, dataset_name: str) -> str:
    """A key that changes when the dataset's content, template, buckets or tokenizer change."""
    from fmbench.datasets import dataset_fingerprint, load_run_tokenizer

    dataset = find_dataset(cfg, dataset_name)
    return dataset_fingerprint(cfg, dataset, load_run_tokenizer(cfg))


def bucket_dataset(cfg: BenchmarkConfig, dataset_name: str) -> dict[str, list[dict[str, Any]]]:
    """Load, render, count and bucket one dataset; returns bucket label -> prompt rows.

    The result is plain data so an orchestrator can cache it across runs by `dataset_cache_key`.
    """
    from fmbench.datasets import build_dataset_prompts, load_run_tokenizer

    dataset = find_dataset(cfg, dataset_name)
    bucketed = build_dataset_prompts(cfg, dataset, load_run_tokenizer(cfg))
    out: dict[str, list[dict[str, Any]]] = {}
    for label, prompts in bucketed.buckets.items():
        out[label] = [{"prompt_id": p.prompt_id, "text": p.text, "input_tokens": p.input_tokens} for p in prompts]
    out["__dropped__"] = [{"count": int(getattr(bucketed, "dropped", 0) or 0)}]
    return out


def store_prompts(run: RunInfo, dataset_name: str, bucketed: dict[str, list[dict[str, Any]]]) -> PromptSet:
    """Write a dataset's bucketed prompts into the run (prompts/<dataset>__<bucket>.parquet)."""
    from fmbench.datasets import write_prompts
    from fmbench.protocol import Prompt

    ps = PromptSet(dataset=dataset_name)
    for label, rows in bucketed.items():
        if label == "__dropped__":
            ps.dropped = int(rows[0]["count"]) if rows else 0
            continue
        if not rows:
            continue
        prompts = [Prompt(r["prompt_id"], r["text"], int(r["input_tokens"])) for r in rows]
        url = run.prompts_file(dataset_name, label)
        write_prompts(url, prompts, dataset=dataset_name, bucket=label)
        digest = hashlib.sha256()
        for p in prompts:
            digest.update(p.prompt_id.encode() + b"\0" + p.text.encode() + b"\0")
        ps.files[label] = url
        ps.counts[label] = len(prompts)
        ps.hashes[label] = digest.hexdigest()
    return ps


def check_buckets(cfg: BenchmarkConfig, prompt_sets: list[PromptSet]) -> list[str]:
    """Fail on a bucket no prompt of any dataset falls into; return warnings for partial coverage.

    Raises:
        DatasetError: naming the empty bucket(s).
    """
    labels = [bucket_label(b) for b in cfg.buckets]
    empty = [lb for lb in labels if not any(ps.counts.get(lb) for ps in prompt_sets)]
    if empty:
        ranges = ", ".join(f"[{lb.replace('-', ', ')})" for lb in empty)
        raise DatasetError(
            f"buckets: no prompt of any dataset falls into {ranges} tokens; remove the bucket or add prompts of "
            "that length"
        )
    return [
        f"dataset {ps.dataset!r} has no prompts in bucket {lb}: its shards are skipped"
        for ps in prompt_sets for lb in labels if not ps.counts.get(lb)
    ]


def find_dataset(cfg: BenchmarkConfig, name: str) -> Any:
    """The dataset of that name (KeyError when there is none)."""
    for d in cfg.datasets:
        if d.name == name:
            return d
    raise KeyError(name)
