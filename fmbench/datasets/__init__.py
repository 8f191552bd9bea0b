"""Prompt datasets: load (synthetic, LongBench, JSONL), render templates, count tokens, bucket by length.

The entry points are `build_dataset_prompts` (a config's dataset -> `BucketedPrompts`),
`dataset_fingerprint` (its cross-run cache key) and `load_tokenizer` (`load_experiment_tokenizer`: the one
an experiment buckets and counts with).
"""

from __future__ import annotations

from fmbench.datasets.bucketing import BucketedPrompts, bucket_prompts, find_bucket
from fmbench.datasets.build import (
    build_dataset_prompts,
    check_tokenizer_specs,
    dataset_fingerprint,
    dataset_location,
    load_dataset_prompts,
    load_experiment_tokenizer,
    load_run_tokenizer,
    load_spec_tokenizer,
    resolve_tokenizer_spec,
)
from fmbench.datasets.io import read_prompts, write_prompts
from fmbench.datasets.jsonl import load_jsonl_prompts
from fmbench.datasets.longbench import load_longbench_prompts
from fmbench.datasets.synthetic import generate_synthetic_prompts, spread_targets
from fmbench.datasets.template import render_template, template_fields
from fmbench.datasets.tokenizer import Tokenizer, clear_tokenizer_cache, load_tokenizer

__all__ = [
    "BucketedPrompts",
    "Tokenizer",
    "bucket_prompts",
    "build_dataset_prompts",
    "check_tokenizer_specs",
    "clear_tokenizer_cache",
    "dataset_fingerprint",
    "dataset_location",
    "find_bucket",
    "generate_synthetic_prompts",
    "load_dataset_prompts",
    "load_experiment_tokenizer",
    "load_jsonl_prompts",
    "load_longbench_prompts",
    "load_run_tokenizer",
    "load_spec_tokenizer",
    "load_tokenizer",
    "read_prompts",
    "render_template",
    "resolve_tokenizer_spec",
    "spread_targets",
    "template_fields",
    "write_prompts",
]
