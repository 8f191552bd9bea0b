"""The names fmbench accepts and derives: run ids (checked in one place) and slugs of free-form names."""

from __future__ import annotations

import re

from fmbench.errors import ConfigError

#: What a run id may contain: it becomes a directory name and part of resource tags.
RUN_ID_PATTERN = r"^[A-Za-z0-9._-]+$"

_NOT_SLUG = re.compile(r"[^A-Za-z0-9]+")


def check_run_id(run_id: str | None, given_as: str = "--run-id") -> None:
    """Accept None (a new run id is made) or a run id of letters, digits, ``-``, ``_`` and ``.`` that
    names a directory of its own; ``given_as`` says where it came from (the option, or a resource's
    tag for ``fmbench cleanup``).

    Raises:
        ConfigError: naming the run id.
    """
    if run_id is None:
        return
    if not re.fullmatch(RUN_ID_PATTERN, run_id):
        raise ConfigError(f"{given_as} {run_id!r}: use letters, digits, '-', '_' and '.' only")
    if not run_id.strip("."):  # '.' and '..' name the directories above a run's, not a run
        raise ConfigError(f"{given_as} {run_id!r}: give at least one letter, digit, '-' or '_'")


def slug(text: str, *, lower: bool = True) -> str:
    """``text`` with every run of other characters than ASCII letters and digits made one ``-``.

    Args:
        lower: lowercase the result (artifact keys); off where case is kept (SageMaker names).
    """
    out = _NOT_SLUG.sub("-", text).strip("-")
    return out.lower() if lower else out
