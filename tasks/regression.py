"""Prefect task of the regression check: compare the run with the previous one, publish the result
as a markdown artifact (one stable key per benchmark name, so the UI shows its history), and emit
the event `fmbench.regression.detected` when something regressed (what the automation of
deployments/automations.yaml notifies on)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from fmbench import regression
from fmbench.names import slug
from fmbench.regression import RegressionReport
from fmbench.rundir import RunInfo

#: Emitted (with the summary in its payload) by a run that found a regression.
REGRESSION_EVENT = "fmbench.regression.detected"


def _slug(name: str) -> str:
    return slug(name) or "run"


def artifact_key(name: str) -> str:
    """The artifact key of a benchmark's regression reports (lowercase letters, digits, dashes)."""
    return "fmbench-regressions-" + _slug(name)


@task(name="check-regressions", cache_policy=NO_CACHE)
def check_regressions_task(run: RunInfo, threshold: float = 0.10, trend_runs: int = 10,
                           png: bool = True) -> RegressionReport:
    report = regression.check_regressions(run.url, regression.Thresholds.uniform(threshold), trend_runs=trend_runs,
                                          plots=png)
    body = regression.render_markdown(report, images=False)
    create_markdown_artifact(markdown=f"{body}\n\nRun directory: `{run.url}`\n", key=artifact_key(run.name),
                             description=report.summary())
    if report.status == "regressed":
        emit_event(
            event=REGRESSION_EVENT,
            resource={"prefect.resource.id": f"fmbench.benchmark.{_slug(run.name)}", "prefect.resource.name": run.name},
            payload={"summary": report.summary(), "regressions": len(report.regressions), "run_id": run.run_id,
                     "previous_run_id": report.previous_run_id, "run_dir": run.url, "report": run.path("report.md")},
        )
    return report
