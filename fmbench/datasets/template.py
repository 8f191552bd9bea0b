"""Prompt templates: Python ``str.format`` templates over a record's fields, checked before use."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from fmbench.errors import DatasetError


def template_fields(template: str, where: str = "prompt_template") -> list[str]:
    """The top-level field names a template uses, in order of first use.

    Raises:
        DatasetError: the template is malformed (unbalanced braces) or uses a positional field ``{}``/``{0}``.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DatasetError(f"{where}: invalid template {_short(template)}: {exc}") from exc
    fields: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        top = name.split(".", 1)[0].split("[", 1)[0]
        if top == "" or top.isdigit():
            raise DatasetError(f"{where}: template {_short(template)} uses a positional field; name a field, e.g. {{text}}")
        if top not in fields:
            fields.append(top)
    return fields


def render_template(template: str, record: Mapping[str, Any], where: str) -> str:
    """Fill a template with a record's fields.

    Args:
        template: a ``str.format`` template, e.g. ``"{context}\\n\\nQuestion: {input}"``.
        record: the field values.
        where: names the record in errors, e.g. ``"dataset 'x': data.jsonl line 3"``.

    Raises:
        DatasetError: the template names a field the record lacks (the message names the field and
            ``where``), or a field cannot be formatted.
    """
    try:
        return template.format_map(record)
    except KeyError as exc:
        field = exc.args[0] if exc.args else "?"
        known = ", ".join(sorted(record)) or "none"
        raise DatasetError(f"{where}: template field {{{field}}} is missing from the record (fields: {known})") from exc
    except (IndexError, AttributeError, ValueError, TypeError) as exc:
        raise DatasetError(f"{where}: cannot render template {_short(template)}: {exc}") from exc


def _short(template: str, limit: int = 60) -> str:
    return repr(template if len(template) <= limit else template[: limit - 3] + "...")
