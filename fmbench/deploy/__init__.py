"""Deploy and tear down the endpoint an experiment benchmarks.

`deploy_endpoint` returns a `DeployedEndpoint`, a small serialisable handle passed between
tasks; `teardown_endpoint` removes exactly what the deploy created and nothing else. Each
provider registers a pair of functions in `_PROVIDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from fmbench.config import ExperimentConfig
from fmbench.errors import DeploymentError


class DeployedEndpoint(BaseModel):
    """Where an experiment's requests go, and what the run created to serve them."""

    model_config = ConfigDict(extra="forbid")

    experiment: str = Field(description="Experiment name.")
    provider: str = Field(description="Endpoint provider.")
    url: str | None = Field(default=None, description="Base URL for HTTP providers (simulated: without /v1).")
    endpoint_name: str | None = Field(default=None, description="Provider endpoint name (SageMaker).")
    region: str | None = Field(default=None, description="Region of AWS endpoints.")
    created: list[str] = Field(
        default_factory=list, description="Resources this run created, as 'kind:name' (torn down at the end)."
    )
    pid: int | None = Field(default=None, description="Process id of a local simulated server.")
    keep: bool = Field(default=False, description="Leave the endpoint running after the run.")
    instance_type: str | None = Field(default=None, description="Instance type billed by the hour (SageMaker).")
    instance_count: int = Field(default=1, description="Instances behind the endpoint.")
    created_at: str | None = Field(
        default=None, description="UTC ISO time the endpoint was created (an adopted one: by the earlier run).")
    in_service_at: str | None = Field(default=None, description="UTC ISO time the endpoint took requests.")
    adopted: bool = Field(default=False, description="Created by an interrupted attempt of this run, reused.")
    earlier_gone_at: str | None = Field(
        default=None, description="UTC ISO time the deploy found no endpoint of an earlier attempt of this run "
        "left to adopt (the endpoint's latest possible end), or deleted one that had failed (its end).")
    deleted_failed_earlier: bool = Field(
        default=False, description="The deploy deleted a failed endpoint of an earlier attempt, gone at "
        "earlier_gone_at.")
    found_earlier: bool = Field(
        default=False, description="The deploy found an endpoint of the run's name (an earlier attempt's, or "
        "one with other fmbench tags). Unless it adopted it (``adopted``) or saw it gone (``earlier_gone_at``), "
        "the endpoint is still there: e.g. it, or the endpoint config or model of that name, has other fmbench "
        "tags and is left alone.")


def note_deploy_state(error: BaseException, handle: DeployedEndpoint) -> None:
    """Attach to the error a failed or interrupted deploy raises how far it got: what it adopted or
    found of an earlier attempt's endpoint, and in ``created`` what it could NOT delete (still billed).
    The run records the endpoints' bills from it (`deploy_state`); it survives pickling to a worker."""
    try:
        error.fmbench_deploy_state = handle.model_copy(deep=True)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # pragma: no cover - an exception type that takes no attributes
        pass


def deploy_state(error: BaseException) -> DeployedEndpoint | None:
    """What `note_deploy_state` attached to ``error``; None when the deploy did not say (it failed
    before it had a handle, or its provider does not)."""
    state = getattr(error, "fmbench_deploy_state", None)
    return state if isinstance(state, DeployedEndpoint) else None


ENDED_WITH_ATTEMPT = "the end of the killed attempt's process"
"""``EndpointTimeline.deleted_by`` of a simulated endpoint a killed attempt left: it ended with that process."""


class EndpointTimeline(BaseModel):
    """When an experiment's endpoint was alive, for the bill: the manifest keeps one per experiment.

    Billed time runs from ``created_at`` to ``deleted_at`` (or to now, while it is alive);
    deploying is ``created_at``..``in_service_at``, measuring ``first_shard_at``..``last_shard_at``
    (for a judge: its first to its last evaluation), the rest is idle.
    """

    model_config = ConfigDict(extra="forbid")

    experiment: str
    provider: str
    judge: str | None = Field(default=None, description="The evaluation judge this endpoint served "
                              "(``experiment`` is then judge-<name>); None: an experiment's endpoint.")
    endpoint_name: str | None = None
    region: str | None = None
    instance_type: str | None = None
    instance_count: int = 1
    adopted: bool = False
    created_at: str | None = None
    in_service_at: str | None = None
    first_shard_at: str | None = None
    last_shard_at: str | None = None
    deleted_at: str | None = None
    never_created: bool = Field(
        default=False, description="Its deploy ended before CreateEndpoint returned and left nothing: no "
        "endpoint of this attempt was billed (``created_at`` is then None). Said, not inferred from a missing "
        "``created_at``: a timeline without one that is not marked (an older manifest's) is billed by its "
        "measured shard time.")
    delete_error: str | None = Field(default=None, description="Why the teardown did not finish, if it did not.")
    deleted_by: str | None = Field(default=None, description="Who deleted the endpoint when the run did not "
                                   "(``fmbench cleanup``; for an earlier attempt's: the resumed run, which found "
                                   "it failed, or someone outside fmbench); None: the run itself, or not deleted.")
    gone_by: str | None = Field(
        default=None, description="An earlier attempt's endpoint that ended at an unknown time (deleted outside "
        "fmbench, or a simulated server that ended with the killed attempt's process): when the resumed run found "
        "it gone. ``deleted_at`` is then the last time it was known alive, so its bill is a lower bound, and the "
        "report says how much more it may have been.")
    earlier: list[EndpointTimeline] = Field(
        default_factory=list, description="The experiment's endpoints of earlier attempts of this run, deleted "
        "before this one was deployed (an interrupted attempt's, deleted by its teardown, by fmbench cleanup, by "
        "the resumed run because it had failed, or outside fmbench): billed as well.")

    def lives(self) -> list[EndpointTimeline]:
        """Every endpoint the run billed for this experiment, earliest first: the earlier attempts'
        (`earlier`), then this one."""
        return [*self.earlier, self.model_copy(update={"earlier": []})] if self.earlier else [self]

    @classmethod
    def from_lives(cls, lives: list[EndpointTimeline]) -> EndpointTimeline:
        """The timeline whose `lives` are ``lives`` (earliest first): the last one, with the others
        as its earlier ones."""
        *earlier, last = lives
        return last.model_copy(update={"earlier": earlier})

    @property
    def gone_how(self) -> str:
        """How an endpoint with ``gone_by`` ended."""
        return ("ended with the killed attempt's process" if self.deleted_by == ENDED_WITH_ATTEMPT
                else "deleted outside fmbench")

    @property
    def label(self) -> str:
        """How reports name the endpoint: its experiment, or the judge it served."""
        return judge_label(self.judge) if self.judge else self.experiment


def judge_label(judge: str) -> str:
    """How reports name a judge of the evaluation panel (its cost row, its endpoint)."""
    return f"judge {judge} (evaluation)"


class Deployer(Protocol):
    """Deploys an experiment's endpoint for a run; ``config_name``, and ``run_url`` (where the run is
    stored) when it is S3, go into the resources' tags."""

    def __call__(self, experiment: ExperimentConfig, run_id: str, *,
                 config_name: str | None = None, run_url: str | None = None) -> DeployedEndpoint: ...


TearDowner = Callable[[DeployedEndpoint, ExperimentConfig], list[str]]

_PROVIDERS: dict[str, tuple[Deployer, TearDowner]] = {}


def register_provider(provider: str, deploy: Deployer, teardown: TearDowner) -> None:
    """Register how a provider's endpoints are deployed and torn down."""
    _PROVIDERS[provider] = (deploy, teardown)


def _lookup(provider: str) -> tuple[Deployer, TearDowner]:
    if provider not in _PROVIDERS:
        _load_builtin_providers(provider)
    try:
        return _PROVIDERS[provider]
    except KeyError:
        raise DeploymentError(f"no deployer for provider {provider!r}") from None


def deploy_endpoint(experiment: ExperimentConfig, run_id: str, config_name: str | None = None,
                    run_url: str | None = None) -> DeployedEndpoint:
    """Make the experiment's endpoint ready to take requests.

    A SageMaker endpoint this run already created (an interrupted attempt of the same run id) is
    adopted instead of created again; ``config_name`` is tagged on what is created, so
    ``fmbench cleanup --config-name`` can find it, and so is ``run_url`` when it is S3, so cleanup
    without the config, on any host, records a deletion in the run.

    Raises:
        DeploymentError: the endpoint could not be deployed; the message gives the provider's reason.
    """
    deploy, _ = _lookup(experiment.endpoint.provider)
    return deploy(experiment, run_id, config_name=config_name, run_url=run_url)


def teardown_endpoint(deployed: DeployedEndpoint, experiment: ExperimentConfig) -> list[str]:
    """Remove what the deploy created (unless kept); returns what was removed."""
    _, teardown = _lookup(deployed.provider)
    return teardown(deployed, experiment)


def _load_builtin_providers(provider: str) -> None:
    # Imported lazily so that a config with only local endpoints never imports boto3/sagemaker;
    # importing a provider module registers it.
    from fmbench.deploy import local  # noqa: F401

    if provider in _PROVIDERS:
        return
    try:
        from fmbench.deploy import sagemaker  # noqa: F401
    except ImportError as exc:  # pragma: no cover - only when the module is absent
        if "fmbench.deploy.sagemaker" not in str(exc):
            raise
