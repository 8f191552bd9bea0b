"""FMBENCH_TASK_RUNNER picks the flow's task runner (no server needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.benchmark import _task_runner
from fmbench.errors import ConfigError


def test_threads_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMBENCH_TASK_RUNNER", raising=False)
    assert isinstance(_task_runner(), ThreadPoolTaskRunner)


def test_dask_local_cluster_with_the_configured_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_TASK_RUNNER", "dask")
    monkeypatch.setenv("FMBENCH_DASK_WORKERS", "3")
    runner = _task_runner()
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_kwargs["n_workers"] == 3 and runner.cluster_kwargs["processes"] is True


def test_dask_scheduler_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_TASK_RUNNER", "tcp://127.0.0.1:8786")
    runner = _task_runner()
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:8786"


@pytest.mark.parametrize(("env", "says"), [
    ({"FMBENCH_TASK_RUNNER": "ray"}, "FMBENCH_TASK_RUNNER='ray': use threads, dask or a Dask scheduler's address"),
    ({"FMBENCH_TASK_RUNNER": "tcp://"}, "FMBENCH_TASK_RUNNER='tcp://'"),
    ({"FMBENCH_TASK_RUNNER": "dask", "FMBENCH_DASK_WORKERS": "two"}, "FMBENCH_DASK_WORKERS='two'"),
    ({"FMBENCH_TASK_RUNNER": "dask", "FMBENCH_DASK_WORKERS": "0"}, "FMBENCH_DASK_WORKERS='0'"),
], ids=["unknown", "no-address", "workers-not-a-number", "no-workers"])
def test_a_bad_value_is_a_config_error_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(says)):
        _task_runner()


def test_the_flow_runs_on_the_runner_named_when_each_run_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect starts every run on ``benchmark.task_runner.duplicate()``: that is the runner the
    variable names then, not when flows.benchmark was imported (a notebook sets it later)."""
    from flows.benchmark import benchmark

    monkeypatch.setenv("FMBENCH_TASK_RUNNER", "dask")
    monkeypatch.setenv("FMBENCH_DASK_WORKERS", "3")
    runner = benchmark.task_runner.duplicate()
    assert isinstance(runner, DaskTaskRunner) and runner.cluster_kwargs["n_workers"] == 3
    monkeypatch.setenv("FMBENCH_TASK_RUNNER", "tcp://10.0.0.1:8786")
    runner = benchmark.task_runner.duplicate()
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://10.0.0.1:8786"
    monkeypatch.delenv("FMBENCH_TASK_RUNNER")
    assert type(benchmark.task_runner.duplicate()) is ThreadPoolTaskRunner


def test_a_bad_value_set_after_import_fails_the_run_as_it_starts(
        prefect_harness: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from flows.benchmark import benchmark

    monkeypatch.setenv("FMBENCH_TASK_RUNNER", "ray")
    with pytest.raises(ConfigError, match=re.escape("FMBENCH_TASK_RUNNER='ray': use threads, dask")):
        benchmark(config="configs/quickstart.yml", output=str(tmp_path / "results"), preflight=False, png=False)
    assert not (tmp_path / "results").exists()  # nothing of the run was started
