"""The whole config as the Prefect run form, on a real Prefect server and process worker: a
deployment created from a YAML config starts with that config filled in, the server refuses an
invalid config naming the field, and a run submitted from the form in headless Chromium measures
the concurrency levels typed into it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]


def _from_config(stack: Any, config: str, name: str, output: Path) -> Any:
    """`python deployments/from_config.py CONFIG --name NAME --output OUT`, as a user runs it."""
    res = subprocess.run([sys.executable, str(REPO / "deployments" / "from_config.py"), config, "--name", name,
                          "--output", str(output)], env=stack.env, cwd=REPO, capture_output=True, text=True,
                         timeout=180, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    with stack.client() as client:
        return client.read_deployment_by_name(f"fmbench/{name}")


@pytest.fixture(scope="module")
def form_deployment(prefect_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("form-results")
    return _from_config(prefect_stack, "configs/nightly-sim.yml", f"form-{uuid.uuid4().hex[:6]}", out), out


def test_deployment_from_a_yaml_config_starts_with_it_and_a_form_per_provider(
        form_deployment: tuple[Any, Path]) -> None:
    deployment, out = form_deployment
    assert deployment.enforce_parameter_schema
    assert deployment.parameters["output"] == str(out)
    config = deployment.parameters["config"]
    assert config["name"] == "nightly-sim" and config["buckets"] == [[1, 300], [300, 600]]
    assert config["experiments"][0]["concurrency_levels"] == [1, 4]
    assert config["experiments"][0]["endpoint"]["ttft_ms"] == 40
    schema = deployment.parameter_openapi_schema
    choices = [c.get("$ref", c.get("type")) for c in schema["properties"]["config"]["anyOf"]]
    assert choices == ["string", "#/definitions/BenchmarkConfig"]
    endpoint = schema["definitions"]["ExperimentConfig"]["properties"]["endpoint"]
    assert [c["$ref"].rsplit("/", 1)[-1] for c in endpoint["anyOf"]] == [
        "SimulatedEndpoint", "OpenAIEndpoint", "SageMakerEndpoint", "BedrockEndpoint"]
    levels = schema["definitions"]["ExperimentConfig"]["properties"]["concurrency_levels"]
    assert levels["anyOf"][0]["items"]["minimum"] == 1 and "one shard per level" in levels["description"]


@pytest.mark.parametrize(("change", "field"), [
    (lambda c: c["experiments"][0].update(concurrency_levels=[0]), "config.experiments[0].concurrency_levels[0]"),
    # an endpoint that matches no provider's form is named as a whole (JSON Schema anyOf)
    (lambda c: c["experiments"][0]["endpoint"].update(provider="nope"), "config.experiments[0].endpoint"),
    (lambda c: c["experiments"][0]["endpoint"].update(ttft_ms="slow"), "config.experiments[0].endpoint"),
])
def test_the_server_refuses_an_invalid_config_naming_the_field(prefect_stack: Any, form_deployment: tuple[Any, Path],
                                                               change: Any, field: str) -> None:
    import copy

    from prefect.exceptions import PrefectHTTPStatusError

    deployment, _ = form_deployment
    config = copy.deepcopy(deployment.parameters["config"])
    change(config)
    with prefect_stack.client() as client, pytest.raises(PrefectHTTPStatusError) as info:
        client.create_flow_run_from_deployment(deployment.id, parameters={"config": config})
    assert info.value.response.status_code == 409
    assert f"Validation failed for field '{field}'" in info.value.response.text


def test_concurrency_levels_typed_into_the_ui_form_are_what_the_run_measures(
        prefect_stack: Any, form_deployment: tuple[Any, Path]) -> None:
    from playwright.sync_api import sync_playwright

    deployment, out = form_deployment
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(f"{prefect_stack.url}/deployments/deployment/{deployment.id}/run", wait_until="networkidle",
                      timeout=120_000)
            page.get_by_text("config (Optional)").wait_for(timeout=120_000)
            # the config is shown as a form (not a path), with one button per provider
            for provider in ("SimulatedEndpoint", "OpenAIEndpoint", "SageMakerEndpoint", "BedrockEndpoint"):
                assert page.get_by_role("button", name=provider, exact=True).count() == 1, provider
            label = page.locator("span.schema-form-property__label", has_text=re.compile(r"^Concurrency Levels"))
            levels = page.locator("div.schema-form-property", has=label).last  # the innermost: the field itself
            items = levels.locator("input")
            assert [items.nth(i).input_value() for i in range(items.count())] == ["1", "4"]  # from the YAML
            items.nth(1).fill("2")
            items.nth(1).press("Tab")
            levels.get_by_role("button", name="Add item").click()
            items.nth(2).fill("3")
            items.nth(2).press("Tab")
            page.screenshot(path=str(prefect_stack.logs / "config-form.png"), full_page=True)
            # The form validates against the server before it creates the run; on a busy host a click
            # can land while that is still pending and do nothing, so click again if no run appears.
            flow_run = None
            for _ in range(3):
                page.get_by_role("button", name="Submit").click()
                try:
                    flow_run = _wait_created(prefect_stack, deployment.id, timeout_s=60)
                    break
                except AssertionError:
                    page.screenshot(path=str(prefect_stack.logs / "config-form-submitted.png"), full_page=True)
            assert flow_run is not None, "the UI form did not create a flow run (see config-form-submitted.png)"
        finally:
            browser.close()
    assert flow_run.parameters["config"]["experiments"][0]["concurrency_levels"] == [1, 2, 3]
    run = prefect_stack.wait_for_flow_run(flow_run.id)
    assert run.state.is_completed(), f"{run.state}: {run.state.message}\n{prefect_stack.log('worker')}"
    [run_dir] = [p for p in (out / "nightly-sim").iterdir() if p.is_dir()]
    metrics = pl.read_parquet(run_dir / "metrics.parquet")
    assert sorted(set(metrics["concurrency"].to_list())) == [1, 2, 3]
    assert metrics.height == 6  # 2 buckets x 3 levels


def _wait_created(stack: Any, deployment_id: Any, timeout_s: float = 120) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    with stack.client() as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
            if runs:
                return runs[0]
            time.sleep(0.5)
    raise AssertionError("the UI form did not create a flow run (see config-form.png)")
