"""fmbench's environment variables: a bad value is one clear ConfigError naming the variable."""

from __future__ import annotations

import pytest

from fmbench.errors import ConfigError
from fmbench.settings import NUMBERS, check_environment, number, prefect_api_choice, task_runner_choice


def test_a_number_variable_is_its_value_or_the_default_when_unset_or_empty() -> None:
    assert number("FMBENCH_PNG_TIMEOUT_S", 180.0, {}) == 180.0
    assert number("FMBENCH_PNG_TIMEOUT_S", 180.0, {"FMBENCH_PNG_TIMEOUT_S": " "}) == 180.0
    assert number("FMBENCH_PNG_TIMEOUT_S", 180.0, {"FMBENCH_PNG_TIMEOUT_S": "2.5"}) == 2.5
    assert number("FMBENCH_PREFECT_API_IDLE_S", 1800.0, {"FMBENCH_PREFECT_API_IDLE_S": "0"}) == 0.0


@pytest.mark.parametrize("name", sorted(NUMBERS))
@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf"])
def test_a_bad_number_names_the_variable_and_what_it_holds(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        number(name, 1.0, {name: raw})
    assert str(caught.value) == f"{name}={raw!r}: {NUMBERS[name]}, a number of 0 or more"
    with pytest.raises(ConfigError, match=name):
        check_environment({name: raw})


def test_the_task_runner_choices() -> None:
    assert task_runner_choice({}).kind == "threads"
    assert task_runner_choice({"FMBENCH_TASK_RUNNER": " threads "}).kind == "threads"
    local = task_runner_choice({"FMBENCH_TASK_RUNNER": "dask", "FMBENCH_DASK_WORKERS": "3"})
    assert (local.kind, local.workers) == ("dask", 3)
    assert task_runner_choice({"FMBENCH_TASK_RUNNER": "dask"}).workers == 2
    remote = task_runner_choice({"FMBENCH_TASK_RUNNER": "tls://scheduler:8786"})
    assert (remote.kind, remote.address) == ("address", "tls://scheduler:8786")
    # the workers variable is read only for a local cluster
    assert task_runner_choice({"FMBENCH_TASK_RUNNER": "threads", "FMBENCH_DASK_WORKERS": "x"}).kind == "threads"


def test_a_good_environment_passes() -> None:
    check_environment({"FMBENCH_TASK_RUNNER": "dask", "FMBENCH_DASK_WORKERS": "4", "FMBENCH_PNG_TIMEOUT_S": "30",
                       "FMBENCH_PREFECT_API_IDLE_S": "3", "FMBENCH_CALIBRATION_LOAD_TOLERANCE": "0.5"})


def test_the_prefect_api_choices_and_a_typo() -> None:
    assert prefect_api_choice({}) == "reuse" and prefect_api_choice({"FMBENCH_PREFECT_API": " "}) == "reuse"
    assert prefect_api_choice({"FMBENCH_PREFECT_API": "embedded"}) == "embedded"
    with pytest.raises(ConfigError, match=r"^FMBENCH_PREFECT_API='embeded': use reuse .* or embedded"):
        check_environment({"FMBENCH_PREFECT_API": "embeded"})
