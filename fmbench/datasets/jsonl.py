"""JSONL reading shared by the file sources, and the generic JSONL source (a prompt field or a template).

Every problem in a file is reported as one `DatasetError` line naming the dataset, the file and,
where it applies, the line number and field.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fmbench.config import JsonlDataset
from fmbench.datasets.template import render_template, template_fields
from fmbench.datasets.tokenizer import Tokenizer
from fmbench.errors import DatasetError
from fmbench.protocol import Prompt

Record = dict[str, Any]

# JSON may escape half of a UTF-16 pair ("\\ud83d") alone: valid JSON, but not text a tokenizer or parquet takes.
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start  # in the file, BOM included
        line = data[:offset].count(b"\n") + 1
        raise DatasetError(
            f"dataset {dataset!r}: {source}: not UTF-8 text (invalid byte at line {line}, offset {offset})"
        ) from exc
    records: list[tuple[int, Record]] = []
    # Only "\n" ends a JSONL line: str.splitlines() would also split on U+2028, U+2029, U+0085 and other
    # characters JSON allows unescaped inside strings. A "\r" before it is JSON whitespace.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"dataset {dataset!r}: {source} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
            ) from exc
        except RecursionError as exc:  # the decoder recurses once per level of nesting
            raise DatasetError(
                f"dataset {dataset!r}: {source} line {lineno}: not valid JSON (nested too deeply for a record)"
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
        id_field: field holding the prompt id; when no record has it, line numbers are the ids.
        source: names the file in errors.
        dataset: the dataset name, for errors.
        tokenizer: counts ``input_tokens``.
        answers_of: a record's reference answers (none when not given).

    Raises:
        DatasetError: every record rendered to blank text (no prompts at all), two prompts share an
            id, or some records have an id and others not (a line number could equal a given id).
    """
    ids: list[str] = []
    texts: list[str] = []
    answers: list[tuple[str, ...]] = []
    line_of: dict[str, int] = {}  # prompt id -> the line that gave it
    with_id: int | None = None  # first line with an id, first line without one
    without_id: int | None = None
    n = 0
    for lineno, rec in records:
        n += 1
        text = text_of(lineno, rec)
        if not text.strip():
            continue
        where = f"dataset {dataset!r}: {source} line {lineno}"
        rid = rec.get(id_field)
        if rid in (None, ""):
            pid = str(lineno)
            without_id = without_id or lineno
            if with_id is not None:
                raise DatasetError(f"{where}: no {id_field!r} field, but line {with_id} has one; give every "
                                   f"record an {id_field!r} or none (then line numbers are the prompt ids)")
        else:
            pid = str(rid)
            with_id = with_id or lineno
            if without_id is not None:
                raise DatasetError(f"{where}: {id_field!r} is {pid!r}, but line {without_id} has none; give every "
                                   f"record an {id_field!r} or none (then line numbers are the prompt ids)")
        answer = answers_of(lineno, rec) if answers_of is not None else ()
        if any(_SURROGATE.search(v) for v in (text, pid, *answer)):
            raise DatasetError(f"{where}: {_surrogate_problem(rec)}")
        if pid in line_of:
            raise DatasetError(f"{where}: {id_field!r} {pid!r} repeats the id of line {line_of[pid]} "
                               "(prompt ids must be unique: quality evaluation finds prompts by id)")
        line_of[pid] = lineno
        ids.append(pid)
        texts.append(text)
        answers.append(answer)
    if not texts:
        raise DatasetError(f"dataset {dataset!r}: {source}: no prompts (all {n} records have empty prompt text)")
    counts = tokenizer.count_many(texts)
    return [Prompt(prompt_id=i, text=t, input_tokens=c, answers=a) for i, t, c, a in zip(ids, texts, counts, answers)]


def _surrogate_at(value: Any, path: str) -> tuple[str, str] | None:
    """``(path, character)`` of the first lone surrogate in a JSON value, keys included."""
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return (path, m.group()) if m else None
    if isinstance(value, list):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        children = [(f"{path}.{k}", c) for k, v in value.items() for c in (k, v)]
    else:
        return None
    for child_path, child in children:
        found = _surrogate_at(child, child_path)
        if found:
            return found
    return None


def _surrogate_problem(rec: Record) -> str:
    """Which field of a record holds a lone surrogate, as the end of an error message."""
    for field, value in rec.items():
        found = _surrogate_at(field, field) or _surrogate_at(value, field)
        if found:
            path, char = found
            return (f"field {path!r} holds an unpaired UTF-16 surrogate (\\u{ord(char):04x}), which is not valid "
                    "Unicode text; fix or remove that escape in the file")
    return "the prompt text holds an unpaired UTF-16 surrogate, which is not valid Unicode text"


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

    The prompt id is the record's ``id`` field, or its line number when no record has one.

    Raises:
        DatasetError: for any problem with the file, a record, a field, the template or the ids
            (repeated, or given for some records only).
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
