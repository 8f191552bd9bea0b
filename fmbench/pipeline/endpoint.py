"""The endpoint steps: deploy an experiment's endpoint for the run and tear it down."""

from __future__ import annotations

from fmbench import progress
from fmbench.config import (
    BedrockEndpoint,
    BenchmarkConfig,
    ExperimentConfig,
    OpenAIEndpoint,
    SageMakerEndpoint,
    SimulatedEndpoint,
)
from fmbench.deploy import DeployedEndpoint, deploy_endpoint, teardown_endpoint
from fmbench.interrupts import DeployStopped, deploying, stop_deploy_here
from fmbench.pipeline.shards import find_experiment
from fmbench.rundir import RunInfo

#: A teardown that failed is tried again this many times, this long apart.
TEARDOWN_RETRIES = 2
TEARDOWN_RETRY_DELAY_S = 5.0


def deploy(cfg: BenchmarkConfig, experiment_name: str, run: RunInfo, stop_event: str | None = None) -> DeployedEndpoint:
    """Deploy an experiment's endpoint for this run.

    A simulated server counts prompt tokens with the experiment's tokenizer unless its config names
    another, so its usage (and its prefill time) agrees with the buckets the prompts were put in.
    While it waits, an interrupt of the run reaches this thread (`fmbench.interrupts`); on a Dask
    worker, through the Dask Event ``stop_event`` (`fmbench.interrupts.stop_deploy_here`), and the
    deploy's status goes to the run's live view under that name (`fmbench.progress.to_run`).
    """
    experiment = find_experiment(cfg, experiment_name)
    if isinstance(experiment.endpoint, SimulatedEndpoint):
        from fmbench.datasets import resolve_tokenizer_spec

        # A tokenizer.json beside the config: the server gets its absolute path.
        spec = resolve_tokenizer_spec(cfg, experiment.endpoint.tokenizer or cfg.tokenizer_for(experiment))
        endpoint = experiment.endpoint.model_copy(update={"tokenizer": spec})
        experiment = experiment.model_copy(update={"endpoint": endpoint})
    deployed: DeployedEndpoint | None = None
    try:
        with stop_deploy_here(experiment_name, stop_event), deploying(experiment_name), \
                progress.to_run(stop_event), progress.deploy_scope(experiment_name, experiment.endpoint.provider):
            deployed = deploy_endpoint(experiment, run.run_id, config_name=cfg.name, run_url=run.url)
    except (KeyboardInterrupt, DeployStopped):
        # The interrupt landed after the deployer returned: what it made would be lost, delete it.
        if deployed is not None:
            teardown_endpoint(deployed, experiment)
        raise
    return deployed


def teardown(cfg: BenchmarkConfig, deployed: DeployedEndpoint) -> list[str]:
    """Tear down what `deploy` created."""
    return teardown_endpoint(deployed, find_experiment(cfg, deployed.experiment))


def not_torn_down(deployed: DeployedEndpoint, error: BaseException, label: str | None = None) -> str:
    """What to tell the user about an endpoint whose teardown did not finish (it may cost money);
    ``label`` names its owner (default ``experiment NAME``)."""
    reason = "interrupted" if isinstance(error, KeyboardInterrupt) else (str(error) or type(error).__name__)
    what = ", ".join(deployed.created) or deployed.endpoint_name or deployed.url or "its endpoint"
    message = f"{label or 'experiment ' + deployed.experiment}: teardown did not finish ({reason}); still running: {what}"
    if deployed.provider == "sagemaker" and deployed.endpoint_name:
        message += (f" — it is billed until deleted: aws sagemaker delete-endpoint --endpoint-name "
                    f"{deployed.endpoint_name} (then its endpoint config and model)")
    return message


def endpoint_lock_name(experiment: ExperimentConfig) -> str | None:
    """The name of the lock that keeps two runs from measuring one existing endpoint at once
    (an OpenAI-compatible URL and model, a Bedrock model in a region, a named SageMaker endpoint);
    None for an endpoint the run deploys itself, which no other run measures."""
    import hashlib

    ep = experiment.endpoint
    if isinstance(ep, OpenAIEndpoint):
        key = f"openai|{ep.base_url.rstrip('/')}|{ep.model}"
    elif isinstance(ep, BedrockEndpoint):
        key = f"bedrock|{ep.region or ''}|{ep.model_id}"
    elif isinstance(ep, SageMakerEndpoint) and ep.endpoint_name:
        key = f"sagemaker|{ep.region or ''}|{ep.endpoint_name}"
    else:
        return None
    return f"fmbench-endpoint-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
