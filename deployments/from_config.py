"""Create (or update) a deployment of the `fmbench` flow whose run form starts filled in with a YAML
config: the whole benchmark (datasets, experiments, endpoints, SLOs) as the typed `config` form.

    uv run --no-sync python deployments/from_config.py configs/nightly-sim.yml [--name NAME]
        [--template on-demand] [--output DIR_OR_S3]

Run `make deploy` first: the new deployment copies the template deployment's work pool, pull
steps (the worker's FMBENCH_REPO checkout), concurrency limit and parameter schema, with
`enforce_parameter_schema` on, so the server refuses an invalid form naming the field.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def config_parameters(path: str) -> dict[str, object]:
    """The deployment's parameters: the validated config as the form's JSON, and its output."""
    sys.path.insert(0, str(REPO))
    from fmbench.api import load_config

    cfg = load_config(path)
    # Relative dataset paths in the form resolve in the worker's checkout (the flow's working
    # directory), not beside this file: make them relative to the repository root.
    data = cfg.model_dump(mode="json", exclude={"base_dir"})
    base = Path(cfg.base_dir or ".").resolve()
    for dataset in data["datasets"]:
        if dataset.get("path") and not Path(dataset["path"]).is_absolute():
            absolute = (base / dataset["path"]).resolve()
            dataset["path"] = str(absolute.relative_to(REPO)) if absolute.is_relative_to(REPO) else str(absolute)
    return {"config": data}


def create_deployment(path: str, name: str | None = None, template: str = "on-demand",
                      output: str | None = None) -> str:
    """Create or update ``fmbench/NAME`` from ``path``; returns its id."""
    from prefect.client.orchestration import get_client

    parameters = config_parameters(path)
    if output:
        parameters["output"] = output
    name = name or str(parameters["config"]["name"])  # type: ignore[index]
    with get_client(sync_client=True) as client:
        base = client.read_deployment_by_name(f"fmbench/{template}")
        deployment_id = client.create_deployment(
            flow_id=base.flow_id, name=name, parameters=parameters, entrypoint=base.entrypoint,
            work_pool_name=base.work_pool_name, work_queue_name=base.work_queue_name,
            pull_steps=base.pull_steps, parameter_openapi_schema=base.parameter_openapi_schema,
            enforce_parameter_schema=True, job_variables=base.job_variables, tags=[*base.tags, "from-config"],
            concurrency_limit=base.global_concurrency_limit.limit if base.global_concurrency_limit else None,
            description=f"{path}, as a form: change any field under config before Run.",
        )
    return str(deployment_id)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config file")
    p.add_argument("--name", help="deployment name (default: the config's name)")
    p.add_argument("--template", default="on-demand", help="deployment whose pool and pull steps are copied")
    p.add_argument("--output", help="results location (default: the config's output)")
    args = p.parse_args(argv)
    name = args.name or str(config_parameters(args.config)["config"]["name"])  # type: ignore[index]
    deployment_id = create_deployment(args.config, name, args.template, args.output)
    print(f"deployment fmbench/{name}: {deployment_id} (its run form starts with {args.config})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
