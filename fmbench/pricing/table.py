"""The shipped price tables (instances.yml, bedrock.yml, regions.yml) and lookups into them.

Lookups never return a silent zero: an unknown instance type, model or region is a
`ConfigError` naming it and suggesting close matches.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from fmbench.errors import ConfigError

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One hourly instance price with where it came from."""

    instance_type: str
    hourly_usd: float
    region: str
    source: str
    as_of: str
    note: str | None = None

    @property
    def disclaimer(self) -> str:
        """The sentence the report shows next to a cost computed from this price."""
        text = f"public on-demand list price as of {self.as_of}, {self.region}; verify before purchase"
        return f"{text} ({self.note})" if self.note else text


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """Bedrock on-demand price per 1,000 input and output tokens."""

    model_id: str
    input_per_1k_usd: float
    output_per_1k_usd: float
    source: str
    as_of: str
    note: str | None = None


def _load_yaml(name: str) -> dict[str, Any]:
    text = resources.files("fmbench.pricing").joinpath(name).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"fmbench/pricing/{name}: not a YAML mapping")
    return data


@lru_cache(maxsize=1)
def _instances() -> dict[str, Any]:
    return _load_yaml("instances.yml")


@lru_cache(maxsize=1)
def _bedrock() -> dict[str, Any]:
    return _load_yaml("bedrock.yml")


@lru_cache(maxsize=1)
def _regions() -> dict[str, Any]:
    return _load_yaml("regions.yml")


# Prices fetched with `refresh_from_pricing_api` in this process; they win over the table.
_live_prices: dict[tuple[str, str], PriceEntry] = {}


def set_live_price(entry: PriceEntry) -> None:
    """Use ``entry`` for its instance type and region for the rest of this process."""
    _live_prices[(entry.instance_type, entry.region)] = entry


def known_instance_types() -> list[str]:
    """Every instance type in the shipped table (SageMaker ``ml.*`` and EC2)."""
    data = _instances()
    return sorted([*data.get("sagemaker", {}), *data.get("ec2", {})])


def known_regions() -> list[str]:
    """Regions with a price multiplier."""
    return sorted(_regions().get("multipliers", {}))


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if not close and not name.startswith("ml.") and f"ml.{name}" in choices:
        close = [f"ml.{name}"]
    return f"; did you mean {', '.join(close)}?" if close else ""


def _entry(instance_type: str, raw: dict[str, Any], region: str, factor: float = 1.0) -> PriceEntry:
    note = raw.get("note")
    if factor != 1.0:
        extra = f"{region} price estimated as us-east-1 x {factor:g} (regions.yml)"
        note = f"{note}; {extra}" if note else extra
    return PriceEntry(
        instance_type=instance_type,
        hourly_usd=round(float(raw["hourly_usd"]) * factor, 6),
        region=region,
        source=str(raw.get("source", "")),
        as_of=str(raw.get("as_of", "unknown date")),
        note=note,
    )


def instance_price(instance_type: str, region: str | None = None) -> PriceEntry:
    """The hourly price of one instance with its source.

    Args:
        instance_type: a SageMaker (``ml.g5.xlarge``) or EC2 (``g5.xlarge``) instance type.
        region: AWS region; None means us-east-1.

    Raises:
        ConfigError: unknown instance type (with close matches) or unknown region.
    """
    region = region or DEFAULT_REGION
    key = instance_type.strip()
    if (key, region) in _live_prices:
        return _live_prices[(key, region)]
    data = _instances()
    table = {**data.get("ec2", {}), **data.get("sagemaker", {})}
    explicit = (data.get("regions") or {}).get(region, {})
    if key in explicit:
        return _entry(key, explicit[key], region)
    if key not in table:
        raise ConfigError(
            f"pricing.instance_type: unknown instance type {instance_type!r} (not in the shipped price table)"
            f"{_suggest(key, sorted(table))}; set pricing.hourly_usd to price it explicitly"
        )
    if region == DEFAULT_REGION:
        return _entry(key, table[key], region)
    multipliers = _regions().get("multipliers", {})
    if region not in multipliers:
        raise ConfigError(
            f"pricing.region: no prices for region {region!r}{_suggest(region, sorted(multipliers))}; "
            "set pricing.hourly_usd to price it explicitly"
        )
    return _entry(key, table[key], region, float(multipliers[region]))


def instance_hourly_usd(instance_type: str, region: str | None = None) -> float:
    """The hourly on-demand price of one instance, USD.

    Raises:
        ConfigError: the type or region is not in the table; the message suggests close matches.
    """
    return instance_price(instance_type, region).hourly_usd


_ARN = re.compile(r"^arn:aws[\w-]*:bedrock:[^:]*:[^:]*:(?:foundation-model|inference-profile|"
                  r"application-inference-profile|provisioned-model)/(?P<id>.+)$")
_PROFILE_PREFIXES = ("us-gov.", "us.", "eu.", "apac.", "ap.", "jp.", "au.", "ca.", "global.")


def normalize_model_id(model_id: str) -> str:
    """The base model id of a Bedrock model id, inference-profile id or ARN."""
    mid = model_id.strip()
    m = _ARN.match(mid)
    if m:
        mid = m.group("id")
    for prefix in _PROFILE_PREFIXES:
        if mid.startswith(prefix) and "." in mid[len(prefix):]:
            mid = mid[len(prefix):]
            break
    return mid


def token_price(model_id: str) -> TokenPrice:
    """Bedrock on-demand token prices (us-east-1) for a model id, profile id or ARN.

    Raises:
        ConfigError: the model is not in the table; the message suggests close matches.
    """
    base = normalize_model_id(model_id)
    table = _bedrock().get("on_demand", {})
    raw = table.get(base)
    if raw is None:
        # A missing ":0" version suffix is a common slip; accept it when unambiguous.
        versions = [k for k in table if k.split(":")[0] == base.split(":")[0]]
        if len(versions) == 1:
            base, raw = versions[0], table[versions[0]]
    if raw is None:
        raise ConfigError(
            f"pricing: no Bedrock token prices for model {model_id!r}{_suggest(base, sorted(table))}; "
            "set pricing.input_per_1k_usd and pricing.output_per_1k_usd explicitly"
        )
    return TokenPrice(
        model_id=base,
        input_per_1k_usd=float(raw["input_per_1k_usd"]),
        output_per_1k_usd=float(raw["output_per_1k_usd"]),
        source=str(raw.get("source", "")),
        as_of=str(raw.get("as_of", "unknown date")),
        note=raw.get("note"),
    )


def bedrock_token_prices(model_id: str) -> tuple[float, float]:
    """``(input_per_1k_usd, output_per_1k_usd)`` of a Bedrock model on demand in us-east-1.

    Inference-profile prefixes (``us.``, ``eu.``, ...) and ARNs are reduced to the base model id.

    Raises:
        ConfigError: unknown model.
    """
    p = token_price(model_id)
    return p.input_per_1k_usd, p.output_per_1k_usd


def bedrock_provisioned_hourly(model_id: str, term: str = "no_commitment") -> float:
    """Hourly price of one provisioned-throughput model unit for ``term``.

    Args:
        model_id: model id, profile id or ARN.
        term: ``no_commitment``, ``one_month`` or ``six_months``.

    Raises:
        ConfigError: the model or term is not in the table.
    """
    base = normalize_model_id(model_id)
    table = _bedrock().get("provisioned", {})
    raw = table.get(base)
    if raw is None:
        raise ConfigError(
            f"pricing: no provisioned-throughput price for model {model_id!r} in the shipped table "
            f"(known: {', '.join(sorted(table)) or 'none'}); set pricing.hourly_usd explicitly"
        )
    if term not in raw:
        terms = [k for k in ("no_commitment", "one_month", "six_months") if k in raw]
        raise ConfigError(f"pricing: no {term!r} price for {base!r} (known terms: {', '.join(terms)})")
    return float(raw[term])
