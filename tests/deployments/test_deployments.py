"""The fmbench deployments on a real Prefect server and process worker (see conftest.py).

One sequence of runs of configs/nightly-sim.yml under one output directory: a CLI run (the
baseline), a run created the way the UI creates one with a slowed simulated endpoint (a
regression, and the run ends Failed with fail_on_regression), then the nightly deployment
triggered now (compared with the slowed run). Also: invalid parameters are refused, the UI form
starts a run, and a run on a local Dask cluster completes with its shards never overlapping.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = "configs/nightly-sim.yml"
NAME = "nightly-sim"


def _runs(out: Path) -> list[Path]:
    root = out / NAME
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _wait_completed(stack: Any, flow_run_id: Any) -> Any:
    run = stack.wait_for_flow_run(flow_run_id)
    assert run.state.is_completed(), f"{run.state}: {run.state.message}\n{stack.log('worker')}"
    return run


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def baseline(prefect_stack: Any, out: Path) -> tuple[str, Path]:
    """The first run: `prefect deployment run 'fmbench/on-demand' -p ... --watch`, as a user types it."""
    res = prefect_stack.prefect("deployment", "run", "fmbench/on-demand", "-p", f"config={CONFIG}",
                                "-p", f"output={out}", "--watch", timeout=600)
    runs = _runs(out)
    assert len(runs) == 1, f"{res.stdout[-3000:]}\n{prefect_stack.log('worker')}"
    return res.stdout, runs[0]


@pytest.fixture(scope="module")
def slowed(prefect_stack: Any, baseline: tuple[str, Path], out: Path) -> tuple[Any, Path]:
    """The second run, created like the UI does (every form field sent), with TTFT 40 -> 150 ms."""
    parameters = {
        "config": CONFIG, "output": str(out), "run_id": None, "experiments": None, "concurrency_levels": None,
        "requests_per_level": None, "overrides": ["experiments.sim.endpoint.ttft_ms=150"], "command": None,
        "regression_threshold": 0.1, "fail_on_regression": True,
    }
    with prefect_stack.client() as client:
        deployment = client.read_deployment_by_name("fmbench/on-demand")
        flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    run = prefect_stack.wait_for_flow_run(flow_run.id)
    runs = _runs(out)
    assert len(runs) == 2, prefect_stack.log("worker")
    return run, runs[1]


def test_cli_run_completes_and_writes_the_report_where_asked(baseline: tuple[str, Path]) -> None:
    stdout, run_dir = baseline
    assert "Completed" in stdout
    assert (run_dir / "report.md").read_text().strip()
    assert json.loads((run_dir / "manifest.json").read_text())["ended_at"]
    assert pl.read_parquet(run_dir / "metrics.parquet").height == 4  # 2 buckets x 2 concurrency levels
    assert "No previous successful run of `nightly-sim`" in (run_dir / "regression.md").read_text()


def test_ui_style_run_with_a_slower_endpoint_reports_the_regression(
    prefect_stack: Any, baseline: tuple[str, Path], slowed: tuple[Any, Path]
) -> None:
    run, run_dir = slowed
    assert run.state.is_failed(), f"{run.state}\n{prefect_stack.log('worker')}"
    assert "regression(s) since " + baseline[1].name in (run.state.message or "")
    assert (run_dir / "report.md").exists()  # the report is still written
    report = json.loads((run_dir / "regression.json").read_text())
    assert report["status"] == "regressed" and report["previous_run_id"] == baseline[1].name
    flagged = {(c["metric"], c["bucket"], c["concurrency"]) for c in report["changes"] if c["regression"]}
    for bucket in ("1-300", "300-600"):
        for level in (1, 4):
            assert ("ttft_p95_s", bucket, level) in flagged
    md = (run_dir / "regression.md").read_text()
    assert md.startswith(f"## Changes since {baseline[1].name}") and "p95 TTFT" in md
    with prefect_stack.client() as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["fmbench-regressions-nightly-sim"])))
    assert any(a.flow_run_id == run.id and "p95 TTFT" in str(a.data) for a in artifacts)


def test_nightly_schedule_is_stored_with_cron_and_timezone(prefect_stack: Any) -> None:
    with prefect_stack.client() as client:
        deployment = client.read_deployment_by_name("fmbench/nightly")
    assert deployment.enforce_parameter_schema
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
    [schedule] = deployment.schedules
    assert schedule.active
    assert schedule.schedule.cron == "0 2 * * *"
    assert schedule.schedule.timezone == prefect_stack.env["FMBENCH_NIGHTLY_TZ"]
    assert deployment.parameters["output"] == "results/nightly"
    assert deployment.parameters["fail_on_regression"] is True


def test_nightly_run_now_compares_with_the_previous_run(
    prefect_stack: Any, slowed: tuple[Any, Path], out: Path
) -> None:
    with prefect_stack.client() as client:
        deployment = client.read_deployment_by_name("fmbench/nightly")
        # the deployment's own parameters, except that results go to the test's directory
        flow_run = client.create_flow_run_from_deployment(deployment.id, parameters={"output": str(out)})
    _wait_completed(prefect_stack, flow_run.id)  # faster than the slowed run: no regression, not Failed
    run_dir = _runs(out)[-1]
    report = json.loads((run_dir / "regression.json").read_text())
    assert report["previous_run_id"] == slowed[1].name and report["status"] == "ok"
    assert any(c["improvement"] and c["metric"] == "ttft_p95_s" for c in report["changes"])
    md = (run_dir / "regression.md").read_text()
    assert md.startswith(f"## Changes since {slowed[1].name}") and "Improvements" in md
    assert report["trend_runs"] == [p.name for p in _runs(out)]
    assert (run_dir / "plots" / "trend_ttft_p95.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("name", "value", "why"), [
    ("requests_per_level", "0", "less than the minimum of 1"),
    ("concurrency_levels", '["a"]', "is not of type 'integer'"),
    ("run_id", "bad id!", "does not match"),
    ("regression_threshold", "-1", "less than the minimum of 0"),
])
def test_invalid_parameters_are_refused_with_the_field_named(
    prefect_stack: Any, name: str, value: str, why: str
) -> None:
    res = prefect_stack.prefect("deployment", "run", "fmbench/on-demand", "-p", f"{name}={value}", check=False,
                                timeout=120)
    text = res.stdout + res.stderr
    assert res.returncode != 0, text
    assert f"Validation failed for field '{name}" in text and why in text


def test_ui_refuses_invalid_parameters_through_the_api(prefect_stack: Any) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    with prefect_stack.client() as client:
        deployment = client.read_deployment_by_name("fmbench/on-demand")
        with pytest.raises(PrefectHTTPStatusError) as info:
            client.create_flow_run_from_deployment(deployment.id, parameters={"requests_per_level": "many"})
    assert info.value.response.status_code == 409
    assert "requests_per_level" in info.value.response.text


def test_ui_form_shows_our_parameters_and_submitting_it_runs(prefect_stack: Any, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    ui_out = tmp_path / "ui"
    with prefect_stack.client() as client:
        deployment = client.read_deployment_by_name("fmbench/on-demand")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(f"{prefect_stack.url}/deployments/deployment/{deployment.id}/run", wait_until="networkidle",
                      timeout=120_000)
            page.get_by_text("config (Optional)").wait_for(timeout=120_000)
            for label in ("output", "overrides", "requests_per_level", "fail_on_regression", "regression_threshold"):
                assert page.get_by_text(f"{label} (Optional)", exact=True).count() == 1, label
            assert page.get_by_text("Config overrides as key.path=value").count() == 1
            config = page.locator("textarea").first
            assert config.input_value() == "configs/quickstart.yml"  # the flow's default
            config.fill(CONFIG)
            # optional string fields start as None: switch `output` to a string and type the path
            # (the first "str" button is config's: a path or the whole config as a form)
            page.get_by_role("button", name="str", exact=True).nth(1).click()
            page.locator("textarea").nth(1).fill(str(ui_out))
            page.screenshot(path=str(prefect_stack.logs / "ui-form.png"), full_page=True)
            run_id = _submit(page, prefect_stack.logs)
        finally:
            browser.close()
    with prefect_stack.client() as client:
        flow_run = client.read_flow_run(run_id)
    assert flow_run.deployment_id == deployment.id
    assert flow_run.parameters.get("output") == str(ui_out), flow_run.parameters
    assert flow_run.parameters["config"] == CONFIG
    _wait_completed(prefect_stack, flow_run.id)
    [run_dir] = _runs(ui_out)
    assert (run_dir / "report.md").exists()


def _submit(page: Any, logs: Path, attempts: int = 5, wait_ms: int = 60_000) -> str:
    """Click the form's Submit and return the id of the flow run its request created.

    The run is identified by the form's own POST (not by polling the server for a matching run),
    so a failure says which step failed: no request sent, or the server refused it. A click the
    page did not act on (no request within ``wait_ms``, e.g. a busy browser still wiring the form)
    is repeated, as a user would; so is one the server answered 503 (its SQLite database was busy,
    on a loaded machine: it created no run, and Prefect's own client retries these, the UI does not),
    after a wait that doubles.
    Any other answer ends it: a click that created a run is never repeated.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    console: list[str] = []
    busy: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))

    def creates_run(req: Any) -> bool:
        return req.method == "POST" and req.url.endswith("/create_flow_run")

    for attempt in range(1, attempts + 1):
        try:
            with page.expect_response(lambda r: creates_run(r.request), timeout=wait_ms) as created:
                page.get_by_role("button", name="Submit").click()
        except PlaywrightTimeout:
            page.screenshot(path=str(logs / f"ui-form-after-submit-{attempt}.png"), full_page=True)
            continue
        response = created.value
        if response.status == 503 and attempt < attempts:
            busy.append(response.text()[:200])
            page.wait_for_timeout(1000 * 2 ** attempt)  # 2, 4, 8, 16 s: a busy moment, not a dead server
            continue
        assert response.ok, f"the server refused the form's run: {response.status} {response.text()[:2000]}"
        return str(response.json()["id"])
    raise AssertionError(f"the UI form created no run after {attempts} clicks on Submit (see "
                         f"ui-form-after-submit-*.png); server busy: {busy}; browser console: {console[-20:]}")


def test_run_on_a_local_dask_cluster_keeps_shards_apart(prefect_stack: Any, tmp_path: Path) -> None:
    # the quickstart: 2 experiments x 3 buckets x 4 levels = 24 shards, one chain (parallel_endpoints off)
    res = prefect_stack.prefect("deployment", "run", "fmbench/on-demand-dask", "-p", "config=configs/quickstart.yml",
                                "-p", "requests_per_level=5", "-p", f"output={tmp_path}", "--watch", timeout=600)
    assert "Completed" in res.stdout, res.stdout[-3000:]
    assert "Creating a new Dask cluster" in prefect_stack.log("worker", tail=None)
    [run_dir] = sorted((tmp_path / "quickstart").iterdir())
    assert (run_dir / "report.md").exists()
    requests = pl.read_parquet(run_dir / "requests.parquet")
    assert requests.filter(~pl.col("warmup")).group_by("shard_id").len()["len"].to_list() == [5] * 24
    spans = (requests.group_by("shard_id").agg(pl.col("t_start").min().alias("start"),
                                               pl.col("t_end").max().alias("end")).sort("start"))
    assert spans.height == 24
    ends, starts = spans["end"].to_list(), spans["start"].to_list()
    assert all(ends[i] <= starts[i + 1] for i in range(len(starts) - 1)), spans


def test_a_run_waiting_for_its_endpoint_does_not_hold_up_a_run_on_another(
        prefect_stack: Any, fake_openai: Any, tmp_path: Path) -> None:
    """Two on-demand runs at once on two existing endpoints (two models of one server): while endpoint
    A is being measured by someone else (its per-endpoint limit held here, as another run holds it),
    the run on A waits and the run on B completes; then A's run measures."""
    import datetime as dt

    import yaml
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.steps import _ensure_limit
    from fmbench.config import load_config_text
    from fmbench.pipeline import endpoint_lock_name
    from fmbench.rundir import load_manifest

    def config(model: str) -> str:
        return yaml.safe_dump({
            "name": f"ep-{model}", "buckets": [[1, 500]],
            "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 2, "seed": 0}],
            "experiments": [{"name": "o", "endpoint": {"provider": "openai", "base_url": fake_openai.url,
                                                       "model": f"ok:who={model}"},
                             "inference": {"max_tokens": 4}, "requests_per_level": 3, "warmup_requests": 0}]})

    name = endpoint_lock_name(load_config_text(config("a")).experiments[0])
    assert name is not None and name != endpoint_lock_name(load_config_text(config("b")).experiments[0])
    parameters = {name_: {"config": config(name_), "output": str(tmp_path / name_), "png": False}
                  for name_ in ("a", "b")}
    with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
        _ensure_limit(name)
        with concurrency(name, occupy=1, strict=True), prefect_stack.client() as client:
            deployment = client.read_deployment_by_name("fmbench/on-demand")
            run_a = client.create_flow_run_from_deployment(deployment.id, parameters=parameters["a"])
            run_b = client.create_flow_run_from_deployment(deployment.id, parameters=parameters["b"])
            _wait_completed(prefect_stack, run_b.id)
            # A runs beside B (no deployment-wide limit) and gets as far as its prompts, then waits for
            # its endpoint.
            deadline = time.monotonic() + 300
            while not list((tmp_path / "a").glob("ep-a/*/prompts/*.parquet")):
                state_a = client.read_flow_run(run_a.id).state
                assert state_a is not None and not state_a.is_final(), f"{state_a}\n{prefect_stack.log('worker')}"
                assert time.monotonic() < deadline, prefect_stack.log("worker")
                time.sleep(0.5)
            time.sleep(2)
            state_a = client.read_flow_run(run_a.id).state
            assert state_a is not None and state_a.is_running(), state_a
            [run_dir_a] = list((tmp_path / "a" / "ep-a").iterdir())
            assert not list((run_dir_a / "shards").glob("*.json")), "A measured while its endpoint was held"
            released_at = time.time()
    _wait_completed(prefect_stack, run_a.id)
    shards = load_manifest(str(run_dir_a)).shards
    assert shards and all(s["status"] == "ok" for s in shards)
    assert all(dt.datetime.fromisoformat(s["started_at"]).timestamp() >= released_at - 1 for s in shards)
