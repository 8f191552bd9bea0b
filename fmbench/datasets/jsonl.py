"""JSONL reading shared by the file sources, and the generic JSONL source (a prompt field or a template).

Every problem in a file is reported as one `DatasetError` line naming the dataset, the file and,
where it applies, the line number and field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fmbench.config import JsonlDataset
from fmbench.datasets.template import render_template, template_fields
from fmbench.datasets.tokenizer import Tokenizer
from fmbench.errors import DatasetError
from fmbench.protocol import Prompt

Record = dict[str, Any]


def read_file_bytes(path: Path, dataset: str) -> bytes:
    """The bytes of a dataset file.

    Raises:
        DatasetError: the file is missing or unreadable (the message names the dataset and path).
    """
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset {dataset!r}: file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise DatasetError(f"dataset {dataset!r}: {path} is a directory, not a JSONL file") from exc
    except OSError as exc:
        raise DatasetError(f"dataset {dataset!r}: cannot read {path}: {exc.strerror or exc}") from exc


def parse_jsonl(data: bytes, source: str, dataset: str) -> list[tuple[int, Record]]:
    """Parse JSONL bytes into ``(line number, object)`` pairs; blank lines are skipped.

    Args:
        data: the file content.
        source: names the file in errors (a path, or ``hf:...`` for a hub file).
        dataset: the dataset name, for errors.

    Raises:
        DatasetError: not UTF-8, a line that is not JSON or not a JSON object, or no JSON lines at all.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"dataset {dataset!r}: {source}: not UTF-8 text (invalid byte at line {line}, offset {exc.start})"
        ) from exc
    records: list[tuple[int, Record]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"dataset {dataset!r}: {source} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
            ) from exc
        if not isinstance(obj, dict):
            raise DatasetError(
                f"dataset {dataset!r}: {source} line {lineno}: expected a JSON object, got {type(obj).__name__}"
            )
        records.append((lineno, obj))
    if not records:
        raise DatasetError(f"dataset {dataset!r}: {source} is empty (no JSON lines)")
    return records


def records_to_prompts(
    records: Iterable[tuple[int, Record]],
    text_of: Callable[[int, Record], str],
    id_field: str,
    source: str,
    dataset: str,
    tokenizer: Tokenizer,
    answers_of: Callable[[int, Record], tuple[str, ...]] | None = None,
) -> list[Prompt]:
    """Turn parsed records into counted prompts; records whose text is blank are skipped.

    Args:
        records: ``(line number, object)`` pairs.
        text_of: renders one record's prompt text (raises DatasetError naming the line).
        id_field: field holding the prompt id; the line number is used when it is absent.
        source: names the file in errors.
        dataset: the dataset name, for errors.
        tokenizer: counts ``input_tokens``.
        answers_of: a record's reference answers (none when not given).

    Raises:
        DatasetError: every record rendered to blank text (no prompts at all).
    """
    ids: list[str] = []
    texts: list[str] = []
    answers: list[tuple[str, ...]] = []
    n = 0
    for lineno, rec in records:
        n += 1
        text = text_of(lineno, rec)
        if not text.strip():
            continue
        rid = rec.get(id_field)
        ids.append(str(rid) if rid not in (None, "") else str(lineno))
        texts.append(text)
        answers.append(answers_of(lineno, rec) if answers_of is not None else ())
    if not texts:
        raise DatasetError(f"dataset {dataset!r}: {source}: no prompts (all {n} records have empty prompt text)")
    counts = tokenizer.count_many(texts)
    return [Prompt(prompt_id=i, text=t, input_tokens=c, answers=a) for i, t, c, a in zip(ids, texts, counts, answers)]


def answer_values(rec: Record, field: str, where: str, *, required: bool) -> tuple[str, ...]:
    """A record's reference answers: a string or a list of strings in ``field``.

    Raises:
        DatasetError: the field holds something else, or is missing while ``required``.
    """
    if field not in rec or rec[field] is None:
        if required:
            raise DatasetError(f"{where}: no field {field!r} in the record (reference answers)")
        return ()
    value = rec[field]
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DatasetError(f"{where}: field {field!r} is {type(value).__name__}, expected a string or a list of strings")


def field_text(rec: Record, field: str, where: str) -> str:
    """The string value of ``field`` in a record.

    Raises:
        DatasetError: the field is missing or not a string (the message names the field and ``where``).
    """
    if field not in rec:
        known = ", ".join(sorted(rec)) or "none"
        raise DatasetError(f"{where}: no field {field!r} in the record (fields: {known})")
    value = rec[field]
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
    return value


def load_jsonl_prompts(dataset: JsonlDataset, path: Path, tokenizer: Tokenizer) -> list[Prompt]:
    """Read a generic JSONL dataset: each record's ``prompt_field``, or its ``prompt_template`` rendered.

    The prompt id is the record's ``id`` field when present, else its line number.

    Raises:
        DatasetError: for any problem with the file, a record, a field or the template.
    """
    source = str(path)
    template = dataset.prompt_template
    if template is not None:
        template_fields(template, where=f"dataset {dataset.name!r}: prompt_template")
    records = parse_jsonl(read_file_bytes(path, dataset.name), source, dataset.name)

    def text_of(lineno: int, rec: Record) -> str:
        where = f"dataset {dataset.name!r}: {source} line {lineno}"
        if template is not None:
            return render_template(template, rec, where)
        return field_text(rec, dataset.prompt_field, where)

    answer_field = dataset.answer_field

    def answers_of(lineno: int, rec: Record) -> tuple[str, ...]:
        assert answer_field is not None
        return answer_values(rec, answer_field, f"dataset {dataset.name!r}: {source} line {lineno}", required=False)

    return records_to_prompts(records, text_of, "id", source, dataset.name, tokenizer,
                              answers_of if answer_field else None)
