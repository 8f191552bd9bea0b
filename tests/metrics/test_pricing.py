"""The shipped price tables, their loader, pricing resolution and the Pricing API refresh."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from fmbench.config import parse_config
from fmbench.errors import ConfigError
from fmbench.pricing import (
    bedrock_provisioned_hourly,
    bedrock_token_prices,
    instance_hourly_usd,
    instance_price,
    known_instance_types,
    normalize_model_id,
    refresh_from_pricing_api,
    resolve_pricing,
)
from fmbench.pricing import table as price_table


def test_every_table_entry_has_a_positive_price_a_source_url_and_a_date() -> None:
    for name in ("instances.yml", "bedrock.yml"):
        data = yaml.safe_load(resources.files("fmbench.pricing").joinpath(name).read_text())
        sections = ("sagemaker", "ec2") if name == "instances.yml" else ("on_demand", "provisioned")
        for section in sections:
            assert data[section], f"{name}:{section} is empty"
            for key, entry in data[section].items():
                assert str(entry["source"]).startswith("https://aws.amazon.com/"), key
                assert str(entry["as_of"])[:4].isdigit(), key
                prices = [v for k, v in entry.items() if k.endswith("_usd") or k in ("no_commitment", "one_month",
                                                                                     "six_months")]
                assert prices and all(float(p) > 0 for p in prices), key


def test_required_instance_families_are_priced() -> None:
    known = set(known_instance_types())
    for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"):
        for fam in ("g5", "g6", "g6e"):
            assert f"ml.{fam}.{size}" in known and f"{fam}.{size}" in known
    for t in ("ml.p4d.24xlarge", "ml.p5.48xlarge", "ml.inf2.xlarge", "ml.inf2.48xlarge", "ml.trn1.32xlarge",
              "p4d.24xlarge", "p5.48xlarge", "inf2.xlarge", "trn1.32xlarge"):
        assert t in known
    # SageMaker hosting carries a premium over the same EC2 instance
    assert instance_hourly_usd("ml.g5.xlarge") > instance_hourly_usd("g5.xlarge")


def test_unknown_instance_type_names_it_and_suggests_close_matches() -> None:
    with pytest.raises(ConfigError) as exc:
        instance_hourly_usd("ml.g5.2xlarg")
    assert "'ml.g5.2xlarg'" in str(exc.value) and "did you mean ml.g5.2xlarge" in str(exc.value)
    with pytest.raises(ConfigError, match="did you mean ml.g5.xlarge"):
        instance_hourly_usd("ml.g5.xlargex")


def test_regions_use_the_multiplier_and_unknown_regions_fail() -> None:
    base = instance_hourly_usd("ml.g5.xlarge")
    assert instance_hourly_usd("ml.g5.xlarge", "us-west-2") == pytest.approx(base)
    assert instance_hourly_usd("ml.g5.xlarge", "eu-central-1") == pytest.approx(base * 1.2)
    assert "eu-central-1 price estimated" in (instance_price("ml.g5.xlarge", "eu-central-1").note or "")
    with pytest.raises(ConfigError, match="no prices for region 'eu-centrall-1'; did you mean eu-central-1"):
        instance_hourly_usd("ml.g5.xlarge", "eu-centrall-1")


def test_explicit_regional_entries_win_over_the_multiplier(monkeypatch: pytest.MonkeyPatch) -> None:
    data = dict(price_table._instances())
    data["regions"] = {"eu-west-1": {"ml.g5.xlarge": {"hourly_usd": 1.57, "source": "https://x", "as_of": "2025"}}}
    monkeypatch.setattr(price_table, "_instances", lambda: data)
    assert instance_hourly_usd("ml.g5.xlarge", "eu-west-1") == pytest.approx(1.57)


@pytest.mark.parametrize("model_id", [
    "anthropic.claude-3-7-sonnet-20250219-v1:0",
    "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "eu.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "arn:aws:bedrock:us-west-2::foundation-model/anthropic.claude-3-7-sonnet-20250219-v1:0",
])
def test_bedrock_ids_profiles_and_arns_resolve_to_the_base_model(model_id: str) -> None:
    assert normalize_model_id(model_id) == "anthropic.claude-3-7-sonnet-20250219-v1:0"
    assert bedrock_token_prices(model_id) == (0.003, 0.015)


def test_bedrock_common_models_and_unknown_model() -> None:
    for mid in ("meta.llama3-8b-instruct-v1:0", "meta.llama3-1-70b-instruct-v1:0", "meta.llama3-3-70b-instruct-v1:0",
                "anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-5-haiku-20241022-v1:0",
                "anthropic.claude-3-5-sonnet-20240620-v1:0", "anthropic.claude-sonnet-4-20250514-v1:0",
                "mistral.mistral-7b-instruct-v0:2", "amazon.titan-text-express-v1", "amazon.nova-pro-v1:0"):
        pin, pout = bedrock_token_prices(mid)
        assert 0 < pin <= pout
    assert bedrock_token_prices("amazon.nova-lite-v1") == bedrock_token_prices("amazon.nova-lite-v1:0")
    with pytest.raises(ConfigError, match="no Bedrock token prices for model 'meta.llama9-1t-v1:0'"):
        bedrock_token_prices("meta.llama9-1t-v1:0")
    assert bedrock_provisioned_hourly("amazon.titan-text-express-v1", "one_month") > 0
    with pytest.raises(ConfigError, match="no provisioned-throughput price"):
        bedrock_provisioned_hourly("anthropic.claude-3-haiku-20240307-v1:0")


def _experiment(endpoint: dict[str, Any], pricing: dict[str, Any] | None) -> Any:
    cfg = parse_config({
        "name": "t", "buckets": [[1, 10]], "datasets": [{"name": "d", "source": "synthetic"}],
        "experiments": [{"name": "e", "endpoint": endpoint, **({"pricing": pricing} if pricing else {})}],
    })
    return cfg.experiments[0]


SIM = {"provider": "simulated"}


def test_resolve_pricing_variants() -> None:
    p = resolve_pricing(_experiment(SIM, {"hourly_usd": 2.5, "instance_count": 3}))
    assert (p.model, p.hourly_usd, p.hourly_usd_per_instance, p.source) == ("instance", 7.5, 2.5, "config: hourly_usd")
    p = resolve_pricing(_experiment(SIM, {"instance_type": "ml.g5.12xlarge", "instance_count": 2}))
    assert p.hourly_usd == pytest.approx(2 * 7.09) and "verify before purchase" in p.source
    p = resolve_pricing(_experiment(SIM, {"input_per_1k_usd": 0.001, "output_per_1k_usd": 0.002}))
    assert (p.model, p.input_per_1k_usd, p.output_per_1k_usd) == ("token", 0.001, 0.002)
    assert resolve_pricing(_experiment(SIM, None)).model == "none"
    with pytest.raises(ConfigError, match="not both"):
        resolve_pricing(_experiment(SIM, {"hourly_usd": 1.0, "input_per_1k_usd": 0.1, "output_per_1k_usd": 0.1}))
    with pytest.raises(ConfigError, match="both input_per_1k_usd and output_per_1k_usd"):
        resolve_pricing(_experiment(SIM, {"input_per_1k_usd": 0.1}))
    with pytest.raises(ConfigError, match=r"experiments\.e\.pricing\.instance_type: unknown instance type"):
        resolve_pricing(_experiment(SIM, {"instance_type": "ml.g9.xlarge"}))


def test_resolve_pricing_from_the_endpoint_config() -> None:
    sm = {"provider": "sagemaker", "endpoint_name": "my-ep", "instance_type": "ml.g5.2xlarge", "instance_count": 2}
    p = resolve_pricing(_experiment(sm, None))
    assert (p.model, p.instance_type, p.instance_count) == ("instance", "ml.g5.2xlarge", 2)
    assert p.hourly_usd == pytest.approx(2 * 1.515)
    br = {"provider": "bedrock", "model_id": "us.meta.llama3-3-70b-instruct-v1:0"}
    p = resolve_pricing(_experiment(br, None))
    assert (p.model, p.input_per_1k_usd, p.output_per_1k_usd) == ("token", 0.00072, 0.00072)
    p = resolve_pricing(_experiment(sm, {"region": "eu-west-1"}))
    assert p.hourly_usd == pytest.approx(2 * 1.515 * 1.12)


def test_an_hourly_price_or_a_priced_type_is_multiplied_by_the_endpoints_own_count() -> None:
    # The endpoint deploys 2 instances: a price of one instance per hour (hourly_usd, or a type from the
    # table) is for each of them, as the run's bill counts them.
    deployed = {"provider": "sagemaker", "jumpstart_model_id": "m", "instance_type": "ml.g5.2xlarge",
                "instance_count": 2}
    p = resolve_pricing(_experiment(deployed, {"hourly_usd": 1.515}))
    assert (p.instance_count, p.hourly_usd, p.hourly_usd_per_instance) == (2, pytest.approx(3.03), 1.515)
    p = resolve_pricing(_experiment(deployed, {"instance_type": "ml.g5.2xlarge", "region": "us-east-1"}))
    assert (p.instance_count, p.hourly_usd) == (2, pytest.approx(2 * 1.515))
    # an existing endpoint's count, given on it or in its pricing
    existing = {"provider": "sagemaker", "endpoint_name": "my-ep", "instance_count": 3}
    assert resolve_pricing(_experiment(existing, {"hourly_usd": 1.0})).hourly_usd == 3.0
    existing = {"provider": "sagemaker", "endpoint_name": "my-ep"}
    assert resolve_pricing(_experiment(existing, {"hourly_usd": 1.0, "instance_count": 4})).hourly_usd == 4.0
    assert resolve_pricing(_experiment(existing, {"hourly_usd": 1.0})).hourly_usd == 1.0


def test_a_table_price_is_for_the_endpoints_own_region_unless_pricing_names_one() -> None:
    eu = {"provider": "sagemaker", "jumpstart_model_id": "m", "instance_type": "ml.g5.2xlarge", "region": "eu-west-1"}
    us = instance_price("ml.g5.2xlarge", "us-east-1").hourly_usd
    for pricing in (None, {"instance_type": "ml.g5.2xlarge"}):
        p = resolve_pricing(_experiment(eu, pricing))
        assert (p.region, p.hourly_usd) == ("eu-west-1", pytest.approx(us * 1.12))
    p = resolve_pricing(_experiment(eu, {"instance_type": "ml.g5.2xlarge", "region": "us-west-2"}))
    assert p.region == "us-west-2"
    assert resolve_pricing(_experiment({**eu, "region": None}, None)).region == "us-east-1"  # none known
    with pytest.raises(ConfigError, match=r"experiments\.e\.endpoint\.region \(the region its table price is "
                                          r"for\): no prices for region 'mars-north-1'"):
        resolve_pricing(_experiment({**eu, "region": "mars-north-1"}, None))


@pytest.mark.parametrize("endpoint", [
    {"provider": "sagemaker", "jumpstart_model_id": "m", "instance_type": "ml.g5.2xlarge"},  # deploys 1
    {"provider": "sagemaker", "jumpstart_model_id": "m", "instance_type": "ml.g5.2xlarge", "instance_count": 2},
    {"provider": "sagemaker", "endpoint_name": "my-ep", "instance_count": 2},
], ids=["deployed-default", "deployed", "existing"])
def test_a_pricing_count_that_differs_from_the_endpoints_is_refused_in_one_line(endpoint: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        _experiment(endpoint, {"hourly_usd": 1.0, "instance_count": 3})
    message = str(err.value)
    assert "experiments[0]" in message or "experiments.0" in message, message
    assert "pricing.instance_count (3) differs from endpoint.instance_count" in message, message
    # the same count twice is one count
    assert resolve_pricing(_experiment({**endpoint, "instance_count": 3},
                                       {"hourly_usd": 1.0, "instance_count": 3})).hourly_usd == 3.0


@pytest.mark.parametrize("endpoint", [
    {"provider": "sagemaker", "jumpstart_model_id": "m", "instance_type": "ml.g5.12xlarge", "instance_count": 2},
    {"provider": "sagemaker", "endpoint_name": "my-ep", "instance_type": "ml.g5.12xlarge"},
], ids=["deployed", "existing"])
def test_a_table_price_for_another_instance_type_than_the_endpoints_is_refused(endpoint: dict[str, Any]) -> None:
    # As a count that differs: the bill would be another instance's (here about a fifth of it).
    with pytest.raises(ConfigError) as err:
        _experiment(endpoint, {"instance_type": "ml.g5.xlarge"})
    assert "pricing.instance_type (ml.g5.xlarge) differs from endpoint.instance_type (ml.g5.12xlarge)" in str(err.value)
    same = resolve_pricing(_experiment(endpoint, {"instance_type": "ml.g5.12xlarge"}))
    assert same.hourly_usd == resolve_pricing(_experiment(endpoint, None)).hourly_usd


def test_a_judges_counts_are_checked_too() -> None:
    judge = {"name": "j", "endpoint": {"provider": "sagemaker", "jumpstart_model_id": "m",
                                       "instance_type": "ml.g5.2xlarge", "instance_count": 2},
             "pricing": {"hourly_usd": 1.0, "instance_count": 1}}
    with pytest.raises(ConfigError, match=r"pricing\.instance_count \(1\) differs"):
        parse_config({"name": "t", "buckets": [[1, 10]], "datasets": [{"name": "d", "source": "synthetic"}],
                      "experiments": [{"name": "e", "endpoint": SIM}], "evaluation": {"judges": [judge]}})


def _product(usd: str) -> str:
    return json.dumps({
        "product": {"attributes": {"instanceName": "ml.g5.xlarge", "regionCode": "us-east-1"}},
        "terms": {"OnDemand": {"SKU.TERM": {"priceDimensions": {"SKU.TERM.DIM": {
            "unit": "Hrs", "pricePerUnit": {"USD": usd}, "description": "$1.5 per hour"}}}}},
    })


def test_refresh_from_pricing_api_parses_get_products() -> None:
    # moto has no Pricing API, so the AWS answer is stubbed at the botocore level (real client, real
    # request validation); this checks our filters and our parsing of the price list JSON.
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_response("get_products", {"PriceList": [_product("1.5000000000"), _product("1.6")],
                                           "FormatVersion": "aws_v1"},
                          {"ServiceCode": "AmazonSageMaker", "MaxResults": 100, "Filters": [
                              {"Type": "TERM_MATCH", "Field": "instanceName", "Value": "ml.g5.xlarge"},
                              {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"},
                              {"Type": "TERM_MATCH", "Field": "productFamily", "Value": "ML Instance"},
                              {"Type": "TERM_MATCH", "Field": "platoinstancetype", "Value": "Hosting"}]})
        stub.add_client_error("get_products", service_error_code="AccessDeniedException", http_status_code=403)
        out = refresh_from_pricing_api(["ml.g5.xlarge", "g5.xlarge"], client=client, remember=False)
    assert out["ml.g5.xlarge"].hourly_usd == pytest.approx(1.5)
    assert "Price List API" in out["ml.g5.xlarge"].source
    assert out["g5.xlarge"].hourly_usd == pytest.approx(1.006)
    assert "AccessDenied" in out["g5.xlarge"].source and "shipped table" in out["g5.xlarge"].source


def test_refresh_without_credentials_falls_back_to_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    out = refresh_from_pricing_api(["ml.inf2.xlarge"])
    assert out["ml.inf2.xlarge"].hourly_usd == pytest.approx(0.99)
    assert "no AWS credentials" in out["ml.inf2.xlarge"].source
    with pytest.raises(ConfigError, match="unknown instance type"):
        refresh_from_pricing_api(["ml.nope.xlarge"])
