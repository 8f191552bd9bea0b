"""SageMaker test helpers: names moto accepts, boto3 clients of its control plane, and what exists there."""

from __future__ import annotations

import threading
import time
from typing import Any

import boto3

from fmbench.config import ExperimentConfig

ROLE = "arn:aws:iam::123456789012:role/fmbench-sagemaker"
JS_MODEL = "meta-textgeneration-llama-3-8b-instruct"
TGI_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.1.1-tgi2.0.0-gpu-py310-cu121-ubuntu22.04"
# moto validates instance types against an older list; g4dn is in it.
INSTANCE = "ml.g4dn.12xlarge"


def sagemaker_experiment(url: str, **endpoint: Any) -> ExperimentConfig:
    """A SageMaker experiment against the control plane at ``url`` (moto)."""
    return ExperimentConfig.model_validate(
        {
            "name": endpoint.pop("name", "llama3-8b"),
            "endpoint": {"provider": "sagemaker", "endpoint_url": url, "region": "us-east-1", **endpoint},
        }
    )


def sm_client(url: str) -> Any:
    """A boto3 SageMaker client of the control plane at ``url``."""
    return boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1")


def sm_inventory(url: str) -> dict[str, list[str]]:
    """The names of the endpoints, endpoint configs and models that exist."""
    sm = sm_client(url)
    return {
        "endpoints": [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]],
        "configs": [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]],
        "models": [m["ModelName"] for m in sm.list_models()["Models"]],
    }


EMPTY = {"endpoints": [], "configs": [], "models": []}


def moto_endpoint(name: str) -> Any:
    """moto's endpoint object ``name`` now, None when there is none. moto's server runs in the test
    process (`ThreadedMotoServer`), so its backend is reachable: how tests play SageMaker's endpoint
    states (Creating, Failed) that moto itself never goes through."""
    from moto.sagemaker import models

    for account in list(models.sagemaker_backends.keys()):
        found = models.sagemaker_backends[account]["us-east-1"].endpoints.get(name)
        if found is not None:
            return found
    return None


def endpoint_set(url: str, name: str, tags: list[dict[str, str]], *, config_tags: list[dict[str, str]] | None = None,
                 endpoint_tags: list[dict[str, str]] | None = None) -> Any:
    """A model, endpoint config and endpoint of ``name`` with ``tags`` (the config's and endpoint's
    own when given), as a killed attempt of a run leaves them; returns the SageMaker client."""
    sm = sm_client(url)
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": TGI_IMAGE}, Tags=tags)
    sm.create_endpoint_config(EndpointConfigName=name, Tags=tags if config_tags is None else config_tags,
                              ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name,
                                                   "InitialInstanceCount": 1, "InstanceType": INSTANCE}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name, Tags=tags if endpoint_tags is None else endpoint_tags)
    return sm


def by_hand(url: str, name: str) -> None:
    """An endpoint (with config and model) that fmbench did not create: no fmbench tags."""
    endpoint_set(url, name, [], endpoint_tags=[{"Key": "team", "Value": "prod"}])


def later(delay: float, fn: Any, *args: Any) -> threading.Thread:
    """Call ``fn(*args)`` after ``delay`` seconds in a daemon thread."""
    def run() -> None:
        time.sleep(delay)
        fn(*args)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def jumpstart_spec(gated: bool = True) -> dict[str, Any]:
    """A JumpStart model spec (TGI image, g4dn/g5 variants) as the SageMaker SDK reads it."""
    alias = "$gpu_ecr_uri_1"
    return {
        "model_id": JS_MODEL,
        "version": "2.1.0",
        "min_sdk_version": "2.49.0",
        "hosting_use_script_uri": False,
        "gated_bucket": gated,
        "hosting_eula_key": "fmhMetadata/eula/llama3Eula.txt" if gated else None,
        "hosting_prepacked_artifact_key": f"meta-textgeneration/{JS_MODEL}/artifacts/inference-prepack/v1.0.0/",
        "hosting_artifact_key": f"meta-textgeneration/{JS_MODEL}/artifacts/inference/v1.0.0/",
        "default_inference_instance_type": "ml.g4dn.12xlarge",
        "supported_inference_instance_types": ["ml.g4dn.12xlarge", "ml.g5.2xlarge", "ml.g5.12xlarge"],
        "inference_environment_variables": [
            {"name": "SM_NUM_GPUS", "type": "text", "default": "1", "scope": "container",
             "required_for_model_class": True},
            {"name": "MAX_INPUT_LENGTH", "type": "text", "default": "4095", "scope": "container",
             "required_for_model_class": True},
            {"name": "MAX_TOTAL_TOKENS", "type": "text", "default": "8191", "scope": "container",
             "required_for_model_class": True},
        ],
        "deploy_kwargs": {"model_data_download_timeout": 1200, "container_startup_health_check_timeout": 1200},
        "hosting_instance_type_variants": {
            "regional_aliases": {"us-east-1": {"gpu_ecr_uri_1": TGI_IMAGE}},
            "variants": {
                "g4dn": {"regional_properties": {"image_uri": alias}},
                "g5": {"regional_properties": {"image_uri": alias}},
                "ml.g4dn.12xlarge": {"properties": {"environment_variables": {"SM_NUM_GPUS": "4"}}},
            },
        },
    }


def jumpstart_manifest() -> list[dict[str, str]]:
    """A JumpStart models manifest listing two versions of `JS_MODEL`."""
    return [
        {"model_id": JS_MODEL, "version": "2.1.0", "min_version": "2.49.0",
         "spec_key": f"community_models/{JS_MODEL}/specs_v2.1.0.json"},
        {"model_id": JS_MODEL, "version": "1.0.0", "min_version": "2.49.0",
         "spec_key": f"community_models/{JS_MODEL}/specs_v1.0.0.json"},
    ]
