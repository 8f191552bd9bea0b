"""The datasets entry point: a config's dataset becomes bucketed, counted prompts, with a cache key.

Flows, the CLI and tests call `build_dataset_prompts` (and `dataset_fingerprint` to decide whether a
stored payload can be reused); the per-source modules are details behind it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fmbench.config import (
    BenchmarkConfig,
    DatasetConfig,
    ExperimentConfig,
    JsonlDataset,
    LongBenchDataset,
    SyntheticDataset,
    resolve_path,
)
from fmbench.datasets.bucketing import BucketedPrompts, split_prompts
from fmbench.datasets.jsonl import load_jsonl_prompts
from fmbench.datasets.longbench import load_longbench_prompts
from fmbench.datasets.synthetic import GENERATOR_VERSION, generate_synthetic_prompts
from fmbench.datasets.tokenizer import Tokenizer, load_tokenizer, tokenizer_spec_problem
from fmbench.errors import ConfigError, DatasetError, TokenizerError
from fmbench.protocol import Prompt

# Bump when the way prompts are derived from the same inputs changes (invalidates cached payloads).
# 2: prompts carry their reference answers; 3: HF counts ignore the file's padding and truncation,
# synthetic max_prompts keeps an evenly spaced subset.
_FINGERPRINT_VERSION = 3


def resolve_tokenizer_spec(cfg: BenchmarkConfig, spec: str) -> str:
    """A tokenizer spec with a relative ``tokenizer.json`` path resolved against the config's directory."""
    spec = spec.strip()
    if not spec.startswith("hf:"):
        candidate = resolve_path(cfg, spec)
        if candidate.is_file():
            return str(candidate)
    return spec


def load_run_tokenizer(cfg: BenchmarkConfig) -> Tokenizer:
    """The config's tokenizer; a relative ``tokenizer.json`` path resolves against the config's directory.

    Raises:
        TokenizerError: see `load_tokenizer`.
    """
    return load_tokenizer(resolve_tokenizer_spec(cfg, cfg.tokenizer))


def load_spec_tokenizer(cfg: BenchmarkConfig, spec: str | None) -> Tokenizer:
    """The tokenizer ``spec`` names (None: the run's), relative paths resolved as in `load_run_tokenizer`.

    Raises:
        TokenizerError: see `load_tokenizer`.
    """
    return load_tokenizer(resolve_tokenizer_spec(cfg, spec or cfg.tokenizer))


def load_experiment_tokenizer(cfg: BenchmarkConfig, experiment: ExperimentConfig) -> Tokenizer:
    """The tokenizer an experiment's prompts are bucketed and its output counted with.

    Raises:
        TokenizerError: see `load_tokenizer` (an ``hf:`` tokenizer not cached on an offline machine).
    """
    return load_spec_tokenizer(cfg, cfg.tokenizer_for(experiment))


def check_tokenizer_specs(cfg: BenchmarkConfig, source: str) -> None:
    """Check every tokenizer the config names without downloading anything: a tiktoken encoding must
    be known, ``hf:`` must read ``hf:ORG/NAME``, and a path must be a tokenizer.json file that loads
    and encodes text (a local file is read now, as cheap as looking at it).

    Raises:
        ConfigError: ``SOURCE: FIELD: problem`` for the first bad tokenizer.
        TokenizerError: ``SOURCE: FIELD: problem`` for a tokenizer.json that does not load or encode.
    """
    fields: list[tuple[str, str]] = [("tokenizer", cfg.tokenizer)]
    for e in cfg.experiments:
        if e.tokenizer is not None:
            fields.append((f"experiments[{e.name}].tokenizer", e.tokenizer))
        sim_tok = getattr(e.endpoint, "tokenizer", None)
        if isinstance(sim_tok, str):
            fields.append((f"experiments[{e.name}].endpoint.tokenizer", sim_tok))
    for where, spec in fields:
        path = resolve_path(cfg, spec.strip())
        problem = tokenizer_spec_problem(spec, path)
        if problem:
            raise ConfigError(f"{source}: {where}: {problem}")
        if not spec.strip().startswith("hf:") and path.is_file():
            try:
                load_tokenizer(str(path))
            except TokenizerError as exc:
                raise TokenizerError(f"{source}: {where}: {exc}") from exc


def dataset_location(cfg: BenchmarkConfig, dataset: DatasetConfig) -> str | Path | None:
    """Where a dataset's data comes from: a resolved local path, an ``hf:`` spec, or None (synthetic)."""
    if isinstance(dataset, SyntheticDataset):
        return None
    if isinstance(dataset, LongBenchDataset) and dataset.path.startswith("hf:"):
        return dataset.path
    return resolve_path(cfg, dataset.path)


def load_dataset_prompts(cfg: BenchmarkConfig, dataset: DatasetConfig, tokenizer: Tokenizer) -> list[Prompt]:
    """Every prompt a dataset yields, counted but not bucketed (synthetic prompts are made per bucket).

    Raises:
        DatasetError: see the source modules; messages name the dataset, file, line and field.
    """
    if isinstance(dataset, SyntheticDataset):
        return generate_synthetic_prompts(dataset, list(cfg.buckets), tokenizer)
    location = dataset_location(cfg, dataset)
    assert location is not None
    if isinstance(dataset, LongBenchDataset):
        return load_longbench_prompts(dataset, location, tokenizer)
    if isinstance(dataset, JsonlDataset):
        return load_jsonl_prompts(dataset, Path(location), tokenizer)
    raise DatasetError(f"dataset {getattr(dataset, 'name', '?')!r}: unsupported source {type(dataset).__name__}")


def build_dataset_prompts(cfg: BenchmarkConfig, dataset: DatasetConfig, tokenizer: Tokenizer) -> BucketedPrompts:
    """Load a dataset, count its prompts with ``tokenizer`` and group them into ``cfg.buckets``.

    At most ``dataset.max_prompts`` prompts are kept per bucket: the first in file order for a file,
    an evenly spaced subset of the bucket's lengths for synthetic prompts; the notes say how many
    were dropped. An individual empty bucket is not an error; the caller decides what to do with it.

    Raises:
        DatasetError: the dataset cannot be read or rendered, or none of its prompts falls in any
            bucket (the message gives the dataset's token-length range and the buckets).
    """
    buckets = sorted(cfg.buckets)
    prompts = load_dataset_prompts(cfg, dataset, tokenizer)
    # Synthetic prompts come in ascending length per bucket: the first N would be its shortest.
    synthetic = isinstance(dataset, SyntheticDataset)
    per_bucket, outside, over = split_prompts(prompts, buckets, dataset.max_prompts, spread=synthetic)
    lengths = [p.input_tokens for p in prompts]
    result = BucketedPrompts(
        dataset=dataset.name,
        buckets=per_bucket,
        total_read=len(prompts),
        dropped_outside=outside,
        dropped_over_max=over,
        min_tokens=min(lengths) if lengths else None,
        max_tokens=max(lengths) if lengths else None,
    )
    if result.total_kept == 0:
        spans = ", ".join(f"[{lo}, {hi})" for lo, hi in buckets)
        raise DatasetError(
            f"dataset {dataset.name!r}: no prompt falls in any bucket: its {len(prompts)} prompts have "
            f"{result.min_tokens}-{result.max_tokens} tokens ({tokenizer.name}); buckets are {spans}"
        )
    for label, kept in per_bucket.items():
        if not kept:
            result.notes.append(f"bucket {label}: no prompts from dataset {dataset.name!r}")
    if outside:
        result.notes.append(f"{outside} of {len(prompts)} prompts fall outside every bucket and were dropped")
    if over:
        kept_which = "evenly spaced over each bucket's lengths" if synthetic else "the first in file order"
        result.notes.append(
            f"{over} of {len(prompts)} prompts were dropped by max_prompts={dataset.max_prompts} per bucket "
            f"(kept: {kept_which})"
        )
    return result


def _file_digest(path: Path, dataset: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset {dataset!r}: file not found: {path}") from exc
    except OSError as exc:
        raise DatasetError(f"dataset {dataset!r}: cannot read {path}: {exc.strerror or exc}") from exc
    return h.hexdigest()


def dataset_fingerprint(cfg: BenchmarkConfig, dataset: DatasetConfig, tokenizer: Tokenizer) -> str:
    """A cache key for a dataset's bucketed prompts across runs.

    It covers the data (the file's content, not its path; for ``hf:`` datasets the spec string, as
    the hub revision is not pinned), every dataset setting (template, prompt field, max_prompts,
    synthetic count and seed, the name used in prompt ids), the buckets and the tokenizer's vocabulary.

    Raises:
        DatasetError: the dataset file is missing or unreadable.
    """
    settings = dataset.model_dump(mode="json", exclude={"path"})
    location = dataset_location(cfg, dataset)
    if location is None:
        content = f"synthetic:v{GENERATOR_VERSION}"
    elif isinstance(location, str):
        content = location
    else:
        content = "sha256:" + _file_digest(location, dataset.name)
    blob = {
        "version": _FINGERPRINT_VERSION,
        "dataset": settings,
        "content": content,
        "buckets": [list(b) for b in sorted(cfg.buckets)],
        "tokenizer": tokenizer.fingerprint,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]
