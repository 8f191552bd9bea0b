"""Refresh instance prices from the AWS Price List API, falling back to the shipped table.

The Price List API (boto3 ``pricing`` client) is served from us-east-1 whatever region is priced.
Without credentials, or on any AWS error, the table price is used and the entry says why.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from typing import Any

from fmbench.pricing.table import DEFAULT_REGION, PriceEntry, instance_price, set_live_price

log = logging.getLogger(__name__)

_API_SOURCE = "AWS Price List API (pricing:GetProducts)"


def _filters(instance_type: str, region: str) -> tuple[str, list[dict[str, str]]]:
    def term(field: str, value: str) -> dict[str, str]:
        return {"Type": "TERM_MATCH", "Field": field, "Value": value}

    if instance_type.startswith("ml."):
        return "AmazonSageMaker", [
            term("instanceName", instance_type),
            term("regionCode", region),
            term("productFamily", "ML Instance"),
            term("platoinstancetype", "Hosting"),
        ]
    return "AmazonEC2", [
        term("instanceType", instance_type),
        term("regionCode", region),
        term("operatingSystem", "Linux"),
        term("tenancy", "Shared"),
        term("preInstalledSw", "NA"),
        term("capacitystatus", "Used"),
    ]


def _hourly_from_price_list(price_list: list[str]) -> float | None:
    """The on-demand hourly USD price in a GetProducts answer, or None when there is none."""
    prices = []
    for item in price_list:
        doc = json.loads(item) if isinstance(item, str) else item
        for term in (doc.get("terms", {}).get("OnDemand") or {}).values():
            for dim in (term.get("priceDimensions") or {}).values():
                usd = (dim.get("pricePerUnit") or {}).get("USD")
                if usd is not None and str(dim.get("unit", "")).lower().startswith("hr") and float(usd) > 0:
                    prices.append(float(usd))
    # Several SKUs can match (e.g. variants by usage type); the lowest is the plain on-demand rate.
    return min(prices) if prices else None


def refresh_from_pricing_api(
    instance_types: list[str],
    region: str | None = None,
    *,
    client: Any | None = None,
    remember: bool = True,
) -> dict[str, PriceEntry]:
    """Fetch current on-demand hourly prices, using the shipped table for any it cannot fetch.

    Args:
        instance_types: SageMaker (``ml.*``) and/or EC2 instance types.
        region: region to price (default us-east-1).
        client: a boto3 ``pricing`` client (default: one created for us-east-1).
        remember: make fetched prices win over the table for the rest of this process.

    Returns:
        ``{instance_type: PriceEntry}``; each entry's ``source`` says whether it came from the API
        or from the table (and why the API was not used).

    Raises:
        ConfigError: an instance type is neither fetchable nor in the table.
    """
    region = region or DEFAULT_REGION
    reason: str | None = None
    if client is None:
        try:
            import boto3
            from botocore.exceptions import BotoCoreError

            session = boto3.session.Session()
            if session.get_credentials() is None:
                reason = "no AWS credentials"
            else:
                client = session.client("pricing", region_name="us-east-1")
        except (ImportError, BotoCoreError) as exc:
            reason = f"{exc.__class__.__name__}: {exc}"
    out: dict[str, PriceEntry] = {}
    for itype in instance_types:
        hourly: float | None = None
        why = reason
        if client is not None:
            service, filters = _filters(itype, region)
            try:
                resp = client.get_products(ServiceCode=service, Filters=filters, MaxResults=100)
                hourly = _hourly_from_price_list(resp.get("PriceList", []))
                if hourly is None:
                    why = "no on-demand price in the API answer"
            except Exception as exc:  # noqa: BLE001  botocore raises many types; any failure -> the table
                why = f"{exc.__class__.__name__}: {exc}"
        if hourly is not None:
            entry = PriceEntry(itype, hourly, region, _API_SOURCE, date.today().isoformat())
            if remember:
                set_live_price(entry)
        else:
            table = instance_price(itype, region)
            entry = PriceEntry(
                table.instance_type, table.hourly_usd, table.region,
                f"{table.source} (shipped table; Pricing API not used: {why})", table.as_of, table.note,
            )
            log.info("pricing: %s from the shipped table (%s)", itype, why)
        out[itype] = entry
    return out
