"""The prompt steps: render, count and bucket a dataset with a tokenizer, and store its prompts in the run.

A dataset is bucketed once per tokenizer of the experiments that run it (`bucketing_jobs`); experiments
that share a tokenizer share its buckets.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fmbench.config import BenchmarkConfig, ExperimentConfig, bucket_label
from fmbench.errors import DatasetError
from fmbench.rundir import RunInfo


class PromptSet(BaseModel):
    """Where a dataset's bucketed prompts are stored in a run."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    tokenizer: str | None = Field(
        default=None, description="The tokenizer that counted and bucketed them (None: the run's tokenizer).")
    files: dict[str, str] = Field(default_factory=dict, description="bucket label -> prompts parquet URL")
    counts: dict[str, int] = Field(default_factory=dict, description="bucket label -> prompts")
    hashes: dict[str, str] = Field(default_factory=dict, description="bucket label -> payload sha256")
    dropped: int = Field(default=0, description="Prompts outside every bucket.")

    @property
    def key(self) -> str:
        """How the run names this set (manifest keys, file names): the dataset, plus its tokenizer
        when that is not the run's."""
        return self.dataset if self.tokenizer is None else f"{self.dataset}@{tokenizer_slug(self.tokenizer)}"


def bucketing_jobs(cfg: BenchmarkConfig) -> list[tuple[str, str | None]]:
    """What the bucket step builds: (dataset, tokenizer) for every dataset and every tokenizer of the
    experiments that run it, in config order; tokenizer None is the run's own.

    Experiments that share a tokenizer share its buckets; one dataset is bucketed once per tokenizer.
    """
    wanted: set[tuple[str, str | None]] = set()
    tokenizers: list[str | None] = []
    for e in cfg.experiments:
        tok = experiment_tokenizer(cfg, e)
        if tok not in tokenizers:
            tokenizers.append(tok)
        wanted.update((d.name, tok) for d in cfg.datasets_for(e))
    return [(d.name, tok) for d in cfg.datasets for tok in tokenizers if (d.name, tok) in wanted]


def experiment_tokenizer(cfg: BenchmarkConfig, experiment: ExperimentConfig) -> str | None:
    """The tokenizer of an experiment's prompt sets (`PromptSet.tokenizer`): None when it is the run's."""
    spec = cfg.tokenizer_for(experiment)
    return None if spec == cfg.tokenizer else spec


def tokenizer_slug(spec: str) -> str:
    """A file-name-safe, unique short name of a tokenizer spec (prompt file names, manifest keys)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.removeprefix("hf:")).strip("-.")[-40:]
    return f"{readable}-{hashlib.sha256(spec.encode()).hexdigest()[:6]}"


def dataset_cache_key(cfg: BenchmarkConfig, dataset_name: str, tokenizer: str | None = None) -> str:
    """A key that changes when the dataset's content, template, buckets or tokenizer change
    (``tokenizer``: a spec, None for the run's)."""
    from fmbench.datasets import dataset_fingerprint, load_spec_tokenizer

    dataset = find_dataset(cfg, dataset_name)
    return dataset_fingerprint(cfg, dataset, load_spec_tokenizer(cfg, tokenizer))


def bucket_dataset(cfg: BenchmarkConfig, dataset_name: str,
                   tokenizer: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Load, render, count and bucket one dataset with ``tokenizer`` (a spec; None: the run's);
    returns bucket label -> prompt rows.

    The result is plain data so an orchestrator can cache it across runs by `dataset_cache_key`.
    """
    from fmbench.datasets import build_dataset_prompts, load_spec_tokenizer

    dataset = find_dataset(cfg, dataset_name)
    bucketed = build_dataset_prompts(cfg, dataset, load_spec_tokenizer(cfg, tokenizer))
    out: dict[str, list[dict[str, Any]]] = {}
    for label, prompts in bucketed.buckets.items():
        out[label] = [{"prompt_id": p.prompt_id, "text": p.text, "input_tokens": p.input_tokens,
                       "answers": list(p.answers)} for p in prompts]
    out["__dropped__"] = [{"count": int(getattr(bucketed, "dropped", 0) or 0)}]
    return out


def store_prompts(run: RunInfo, dataset_name: str, bucketed: dict[str, list[dict[str, Any]]],
                  tokenizer: str | None = None) -> PromptSet:
    """Write a dataset's bucketed prompts into the run (prompts/<dataset>__<bucket>.parquet, or
    prompts/<dataset>@<tokenizer>__<bucket>.parquet for a tokenizer other than the run's).

    Raises:
        DatasetError: a resumed run's dataset no longer gives the prompts its shards were measured
            with (the file changed since the run started); its measured shards stay as they were.
    """
    from fmbench import storage
    from fmbench.datasets import read_prompts, write_prompts
    from fmbench.protocol import Prompt

    ps = PromptSet(dataset=dataset_name, tokenizer=tokenizer)
    for label, rows in bucketed.items():
        if label == "__dropped__":
            ps.dropped = int(rows[0]["count"]) if rows else 0
            continue
        url = run.prompts_file(ps.key, label)
        prompts = [Prompt(r["prompt_id"], r["text"], int(r["input_tokens"]), tuple(r.get("answers") or ()))
                   for r in rows]
        if run.resumed and storage.exists(url):
            # Its shards may have been measured with the stored prompts: the rest must be too, or one
            # bucket's numbers would mix two sets of prompts.
            if [(p.prompt_id, p.text) for p in read_prompts(url)] != [(p.prompt_id, p.text) for p in prompts]:
                raise DatasetError(
                    f"datasets[{dataset_name}]: bucket {label} no longer has the prompts run {run.run_id} was "
                    "measured with (the dataset's file changed since the run started); resume it with the same "
                    "data, or start a new run without --run-id")
            ps.files[label], ps.counts[label], ps.hashes[label] = url, len(prompts), _payload_hash(prompts)
            continue
        if not rows:
            continue
        write_prompts(url, prompts, dataset=dataset_name, bucket=label)
        ps.files[label] = url
        ps.counts[label] = len(prompts)
        ps.hashes[label] = _payload_hash(prompts)
    return ps


def _payload_hash(prompts: list[Any]) -> str:
    digest = hashlib.sha256()
    for p in prompts:
        digest.update(p.prompt_id.encode() + b"\0" + p.text.encode() + b"\0")
    return digest.hexdigest()


def check_buckets(cfg: BenchmarkConfig, prompt_sets: list[PromptSet]) -> list[str]:
    """Fail on a bucket no prompt of any dataset falls into (per tokenizer: the experiments of that
    tokenizer would measure nothing there); return warnings for partial coverage.

    Raises:
        DatasetError: naming the empty bucket(s) (and the tokenizer, when the run uses several).
    """
    labels = [bucket_label(b) for b in cfg.buckets]
    tokenizers = list(dict.fromkeys(ps.tokenizer for ps in prompt_sets))

    def counted(tok: str | None) -> str:
        return f" (counted with tokenizer {tok or cfg.tokenizer})" if tokenizers != [None] else ""

    warnings = []
    for tok in tokenizers:
        sets = [ps for ps in prompt_sets if ps.tokenizer == tok]
        empty = [lb for lb in labels if not any(ps.counts.get(lb) for ps in sets)]
        if empty:
            ranges = ", ".join(f"[{lb.replace('-', ', ')})" for lb in empty)
            raise DatasetError(
                f"buckets: no prompt of any dataset falls into {ranges} tokens{counted(tok)}; remove the bucket "
                "or add prompts of that length"
            )
        warnings += [f"dataset {ps.dataset!r} has no prompts in bucket {lb}{counted(tok)}: its shards are skipped"
                     for ps in sets for lb in labels if not ps.counts.get(lb)]
    return warnings


def find_dataset(cfg: BenchmarkConfig, name: str) -> Any:
    """The dataset of that name (KeyError when there is none)."""
    for d in cfg.datasets:
        if d.name == name:
            return d
    raise KeyError(name)
