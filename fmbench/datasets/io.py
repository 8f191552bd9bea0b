"""Bucketed prompt payloads stored as parquet (local path or s3://) between pipeline steps and runs.

Columns: ``prompt_id``, ``text``, ``input_tokens``, ``dataset``, ``bucket``, ``answers`` (reference
answers, an empty list when the dataset has none).
"""

from __future__ import annotations

import polars as pl

from fmbench.errors import DatasetError
from fmbench.protocol import Prompt
from fmbench.storage import read_parquet, write_parquet

PROMPT_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "prompt_id": pl.String,
    "text": pl.String,
    "input_tokens": pl.Int64,
    "dataset": pl.String,
    "bucket": pl.String,
    "answers": pl.List(pl.String),
}


def prompts_frame(prompts: list[Prompt], dataset: str, bucket: str) -> pl.DataFrame:
    """Prompts as a frame with `PROMPT_SCHEMA` columns."""
    return pl.DataFrame(
        {
            "prompt_id": [p.prompt_id for p in prompts],
            "text": [p.text for p in prompts],
            "input_tokens": [p.input_tokens for p in prompts],
            "dataset": [dataset] * len(prompts),
            "bucket": [bucket] * len(prompts),
            "answers": [list(p.answers) for p in prompts],
        },
        schema=PROMPT_SCHEMA,
    )


def write_prompts(url: str, prompts: list[Prompt], dataset: str, bucket: str) -> None:
    """Write one dataset bucket's prompts as parquet, atomically.

    Raises:
        StorageError: the location cannot be written.
    """
    write_parquet(url, prompts_frame(prompts, dataset, bucket))


def read_prompts(url: str) -> list[Prompt]:
    """Read prompts written by `write_prompts`, in stored order.

    Raises:
        StorageError: the file cannot be read.
        DatasetError: the file lacks the prompt columns.
    """
    df = read_parquet(url)
    missing = [c for c in ("prompt_id", "text", "input_tokens") if c not in df.columns]
    if missing:
        raise DatasetError(f"{url}: not a prompts file (missing columns: {', '.join(missing)})")
    # Files written before prompts carried answers have no answers column.
    answers = df["answers"].to_list() if "answers" in df.columns else [None] * df.height
    return [
        Prompt(prompt_id=str(pid), text=str(text), input_tokens=int(n), answers=tuple(a or ()))
        for pid, text, n, a in zip(df["prompt_id"].to_list(), df["text"].to_list(), df["input_tokens"].to_list(),
                                   answers)
    ]
