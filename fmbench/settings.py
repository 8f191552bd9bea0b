"""fmbench's environment variables that take a value, each read here: a bad value is bad input (a
`ConfigError` naming the variable) wherever it is read, and `check_environment` refuses it before a
run starts anything (the CLI calls it first), rather than hours later in the report step."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fmbench.errors import ConfigError, FMBenchError

#: The variables that hold a number, and what the number is (the error says so).
NUMBERS = {
    "FMBENCH_PREFECT_API_IDLE_S": "seconds the local Prefect API lives on without a run",
    "FMBENCH_PREFECT_API_STARTUP_S": "seconds a run waits for the local Prefect API",
    "FMBENCH_PNG_TIMEOUT_S": "seconds the PNG export may take",
    "FMBENCH_CALIBRATION_LOAD_TOLERANCE": "the change of load per CPU a cached calibration allows",
    "FMBENCH_RUN_HOLD_S": "seconds a run in S3 stays held after its process last renewed the hold",
    "FMBENCH_LIVE_RENEW_S": "seconds between two renewals of the in-progress tags on a run's SageMaker resources",
}


def prefect_api_choice(environ: Mapping[str, str] | None = None) -> str:
    """``FMBENCH_PREFECT_API``: ``reuse`` (default: a local Prefect API kept for later runs) or ``embedded``.

    Raises:
        ConfigError: any other value.
    """
    raw = (os.environ if environ is None else environ).get("FMBENCH_PREFECT_API", "").strip() or "reuse"
    if raw not in ("reuse", "embedded"):
        raise ConfigError(f"FMBENCH_PREFECT_API={raw!r}: use reuse (the default: a local Prefect API that later "
                          "runs reuse) or embedded (Prefect's own, started with each run)")
    return raw


def number(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """The value of the number variable ``name`` (one of `NUMBERS`), or ``default`` when unset or empty.

    Raises:
        ConfigError: it is not a finite number of 0 or more.
    """
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r}: {NUMBERS[name]}, a number of 0 or more")
    return value


def variable_values(names: Mapping[str, str], missing: Callable[[str, str], FMBenchError]) -> dict[str, str]:
    """Each name's value from the environment variable it names (``headers_env``, ``env_from``: the
    secrets a config names but never holds).

    Raises:
        FMBenchError: ``missing(name, variable)`` for the first variable that is unset or empty.
    """
    values = {}
    for name, variable in names.items():
        value = os.environ.get(variable)
        if not value:
            raise missing(name, variable)
        values[name] = value
    return values


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a bad value of any of fmbench's variables, naming the first one found.

    Raises:
        ConfigError: one line naming the variable and what it may be.
    """
    task_runner_choice(environ)
    prefect_api_choice(environ)
    for name in NUMBERS:
        number(name, 0.0, environ)


@dataclass(frozen=True)
class TaskRunnerChoice:
    """Where a run's steps run, from ``FMBENCH_TASK_RUNNER`` (`task_runner_choice`)."""

    kind: str  # "threads", "dask" (a local cluster made for the run) or "address" (an existing one)
    workers: int = 2  # the local cluster's worker processes (FMBENCH_DASK_WORKERS)
    address: str | None = None  # the existing cluster's scheduler


def task_runner_choice(environ: Mapping[str, str] | None = None) -> TaskRunnerChoice:
    """Read ``FMBENCH_TASK_RUNNER`` (threads, the default; dask; or a scheduler's address such as
    ``tcp://host:8786``) and ``FMBENCH_DASK_WORKERS`` (for dask, default 2).

    Raises:
        ConfigError: one line naming the variable and what it may be.
    """
    env = os.environ if environ is None else environ
    choice = env.get("FMBENCH_TASK_RUNNER", "threads").strip()
    if choice in ("", "threads"):
        return TaskRunnerChoice("threads")
    if choice == "dask":
        raw = env.get("FMBENCH_DASK_WORKERS", "2").strip() or "2"
        try:
            workers = int(raw)
        except ValueError:
            workers = 0
        if workers < 1:
            raise ConfigError(f"FMBENCH_DASK_WORKERS={raw!r}: the number of Dask worker processes, 1 or more")
        return TaskRunnerChoice("dask", workers=workers)
    scheme, sep, rest = choice.partition("://")
    if sep and scheme and rest:
        return TaskRunnerChoice("address", address=choice)
    raise ConfigError(f"FMBENCH_TASK_RUNNER={choice!r}: use threads, dask or a Dask scheduler's address "
                      "(tcp://host:8786)")
