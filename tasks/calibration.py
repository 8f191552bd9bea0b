"""Prefect task that calibrates this host's load-generation client before a run's shards."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from fmbench import pipeline
from fmbench.rundir import RunInfo


@task(name="calibrate-client", cache_policy=NO_CACHE)
def calibrate_task(run: RunInfo) -> Any:
    return pipeline.calibrate(run)
