"""Turn an experiment's pricing config into the prices used by the cost metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fmbench.config import ExperimentConfig, instance_count
from fmbench.errors import ConfigError
from fmbench.pricing.table import DEFAULT_REGION, instance_price, token_price


@dataclass(frozen=True, slots=True)
class ResolvedPricing:
    """The prices of one experiment.

    ``model`` is ``instance`` (``hourly_usd`` is the total for all instances), ``token``
    (per-1k token prices) or ``none`` (cost unknown). ``source`` says where the numbers came from.
    """

    model: Literal["instance", "token", "none"]
    source: str
    hourly_usd: float | None = None
    hourly_usd_per_instance: float | None = None
    instance_type: str | None = None
    instance_count: int = 1
    region: str | None = None
    input_per_1k_usd: float | None = None
    output_per_1k_usd: float | None = None

    @property
    def known(self) -> bool:
        """True when costs can be computed."""
        return self.model != "none"


NO_PRICING = ResolvedPricing(model="none", source="no pricing configured")


def _endpoint_attr(experiment: Any, *names: str) -> str | None:
    endpoint = getattr(experiment, "endpoint", None)
    for name in names:
        value = getattr(endpoint, name, None)
        if isinstance(value, str) and value:
            return value
    return None


def resolve_pricing(experiment: ExperimentConfig) -> ResolvedPricing:
    """Resolve an `ExperimentConfig`'s pricing.

    Explicit prices in ``pricing`` win; an ``instance_type`` is priced from the shipped table,
    region-adjusted (``pricing.region``, else the endpoint's ``region``, else us-east-1); without a
    ``pricing`` block, a SageMaker endpoint's instance type or a Bedrock endpoint's model id is priced
    from the table when the endpoint config names one.

    Raises:
        ConfigError: both instance and token prices given, only one of the two token prices given,
            a table lookup failed (unknown instance type/model/region), or the pricing's and the
            endpoint's instance counts differ (see `fmbench.config.instance_count`).
    """
    p = getattr(experiment, "pricing", None)
    name = getattr(experiment, "name", "?")
    try:  # one count for the price and the bill (the config refuses two that differ)
        count = instance_count(getattr(experiment, "endpoint", None), p)
    except ValueError as exc:
        raise ConfigError(f"experiments.{name}: {exc}") from exc
    if p is None:
        provider = getattr(getattr(experiment, "endpoint", None), "provider", None)
        itype = _endpoint_attr(experiment, "instance_type")
        if provider == "sagemaker" and itype:
            return _instance(itype, None, count, name, _endpoint_attr(experiment, "region"))
        model_id = _endpoint_attr(experiment, "model_id", "model")
        if provider == "bedrock" and model_id:
            t = token_price(model_id)
            return ResolvedPricing(
                model="token", source=f"Bedrock {t.model_id}: public on-demand list price as of {t.as_of}, "
                f"{DEFAULT_REGION}; verify before purchase ({t.source})",
                input_per_1k_usd=t.input_per_1k_usd, output_per_1k_usd=t.output_per_1k_usd,
                region=DEFAULT_REGION,
            )
        return NO_PRICING
    has_instance = p.hourly_usd is not None or p.instance_type is not None
    has_tokens = p.input_per_1k_usd is not None or p.output_per_1k_usd is not None
    if has_instance and has_tokens:
        raise ConfigError(
            f"experiments.{name}.pricing: give instance prices (hourly_usd/instance_type) or token prices "
            "(input_per_1k_usd/output_per_1k_usd), not both"
        )
    if has_tokens:
        if p.input_per_1k_usd is None or p.output_per_1k_usd is None:
            raise ConfigError(
                f"experiments.{name}.pricing: give both input_per_1k_usd and output_per_1k_usd"
            )
        return ResolvedPricing(
            model="token", source="config: input_per_1k_usd/output_per_1k_usd",
            input_per_1k_usd=p.input_per_1k_usd, output_per_1k_usd=p.output_per_1k_usd, region=p.region,
        )
    if p.hourly_usd is not None:
        return ResolvedPricing(
            model="instance", source="config: hourly_usd", hourly_usd=p.hourly_usd * count,
            hourly_usd_per_instance=p.hourly_usd, instance_type=p.instance_type,
            instance_count=count, region=p.region,
        )
    itype = p.instance_type or _endpoint_attr(experiment, "instance_type")
    if itype:
        return _instance(itype, p.region, count, name, _endpoint_attr(experiment, "region"))
    model_id = _endpoint_attr(experiment, "model_id")
    if getattr(getattr(experiment, "endpoint", None), "provider", None) == "bedrock" and model_id:
        t = token_price(model_id)
        return ResolvedPricing(
            model="token", source=f"Bedrock {t.model_id}: public on-demand list price as of {t.as_of}, "
            f"{DEFAULT_REGION}; verify before purchase ({t.source})",
            input_per_1k_usd=t.input_per_1k_usd, output_per_1k_usd=t.output_per_1k_usd, region=DEFAULT_REGION,
        )
    return NO_PRICING


def _instance(itype: str, region: str | None, count: int, name: str, endpoint_region: str | None) -> ResolvedPricing:
    """``itype`` priced from the table in ``region``, else in the endpoint's own region (where it runs),
    else in us-east-1."""
    try:
        entry = instance_price(itype, region or endpoint_region)
    except ConfigError as exc:
        message = str(exc)
        if region is None and endpoint_region and message.startswith("pricing.region:"):
            message = f"endpoint.region (the region its table price is for){message[len('pricing.region'):]}"
        raise ConfigError(f"experiments.{name}.{message}") from exc
    return ResolvedPricing(
        model="instance",
        source=f"{entry.instance_type}: {entry.disclaimer} ({entry.source})",
        hourly_usd=entry.hourly_usd * count,
        hourly_usd_per_instance=entry.hourly_usd,
        instance_type=entry.instance_type,
        instance_count=count,
        region=entry.region,
    )
