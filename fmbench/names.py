"""The names fmbench accepts and derives: run ids (checked in one place) and slugs of free-form names."""

from __future__ import annotations

import re

from fmbench.errors import ConfigError

#: What a run id may contain: it becomes a directory name and part of resource tags.
RUN_ID_PATTERN = r"^[A-Za-z0-9._-]+$"

_NOT_SLUG = re.compile(r"[^A-Za-z0-9]+")


def check_run_id(run_id: str | None) -> None:
    """Accept None (a new run id is made) or a run id of letters, digits, ``-``, ``_`` and ``.``.

    Raises:
        ConfigError: naming the run id.
    """
    if run_id is not None and not re.fullmatch(RUN_ID_PATTERN, run_id):
        raise ConfigError(f"--run-id {run_id!r}: use letters, digits, '-', '_' and '.' only")


def slug(text: str, *, lower: bool = True) -> str:
    """``text`` with every run of other characters than ASCII letters and digits made one ``-``.

    Args:
        lower: lowercase the result (artifact keys); off where case is kept (SageMaker names).
    """
    out = _NOT_SLUG.sub("-", text).strip("-")
    return out.lower() if lower else out
