"""FMBENCH_TASK_RUNNER picks the flow's task runner (no server needed)."""

from __future__ import annotations

import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.benchmark import _task_runner


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


def test_unknown_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_TASK_RUNNER", "ray")
    with pytest.raises(ValueError, match="FMBENCH_TASK_RUNNER='ray'"):
        _task_runner()
