"""Prices for cost metrics: shipped tables of public list prices, a loader, and a Pricing API refresh.

Tables (package data): ``instances.yml`` (SageMaker real-time inference and EC2 hourly prices,
us-east-1), ``bedrock.yml`` (token and provisioned-throughput prices), ``regions.yml`` (approximate
multipliers for other regions). Every price carries its source URL and date.
"""

from __future__ import annotations

from fmbench.pricing.api import refresh_from_pricing_api
from fmbench.pricing.resolve import NO_PRICING, ResolvedPricing, resolve_pricing
from fmbench.pricing.table import (
    PriceEntry,
    TokenPrice,
    bedrock_provisioned_hourly,
    bedrock_token_prices,
    instance_hourly_usd,
    instance_price,
    known_instance_types,
    known_regions,
    normalize_model_id,
    token_price,
)

__all__ = [
    "NO_PRICING",
    "PriceEntry",
    "ResolvedPricing",
    "TokenPrice",
    "bedrock_provisioned_hourly",
    "bedrock_token_prices",
    "instance_hourly_usd",
    "instance_price",
    "known_instance_types",
    "known_regions",
    "normalize_model_id",
    "refresh_from_pricing_api",
    "resolve_pricing",
    "token_price",
]
