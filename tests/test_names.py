"""Run ids are checked in one place (CLI and flow parameter alike), and free-form names become slugs in one way."""

from __future__ import annotations

import re

import pytest

from fmbench.errors import ConfigError
from fmbench.names import RUN_ID_PATTERN, check_run_id, slug


@pytest.mark.parametrize("run_id", [None, "20260101-000000-abcd", "baseline", "v1.2_rc-3"])
def test_good_run_ids_pass(run_id: str | None) -> None:
    check_run_id(run_id)
    assert run_id is None or re.fullmatch(RUN_ID_PATTERN, run_id)


@pytest.mark.parametrize("run_id", ["", "../up", "a/b", "with space", "café"])
def test_bad_run_ids_name_themselves(run_id: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"--run-id {run_id!r}")):
        check_run_id(run_id)
    assert not re.fullmatch(RUN_ID_PATTERN, run_id)


def test_slug_keeps_ascii_letters_and_digits_and_joins_the_rest_with_one_dash() -> None:
    assert slug("My Bench_v2.1") == "my-bench-v2-1"
    assert slug("--a__b--") == "a-b"
    assert slug("Llama-3 8B", lower=False) == "Llama-3-8B"
    assert slug("...") == ""
