"""SageMaker deploy and teardown against moto's SageMaker control plane (and S3 for JumpStart
metadata) over real HTTP: image and JumpStart deploys, failure and timeout clean-up, keep,
existing endpoints, credentials, and the resource names."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import boto3
import pytest

from fmbench.config import ExperimentConfig
from fmbench.deploy import DeployedEndpoint, deploy_state
from fmbench.deploy.sagemaker import (
    deploy_bedrock,
    deploy_sagemaker,
    resource_name,
    teardown_bedrock,
    teardown_sagemaker,
)
from fmbench.errors import ConfigError, DeploymentError
from tests.support.sagemaker import (
    EMPTY,
    INSTANCE,
    JS_MODEL,
    ROLE,
    TGI_IMAGE,
    jumpstart_manifest,
    jumpstart_spec,
    later,
    sagemaker_experiment,
    sm_client,
    sm_inventory,
)

# ---------------------------------------------------------------- names


def test_resource_names_are_valid_unique_and_short() -> None:
    pattern = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
    long_name = "a-very_long.experiment-name-" * 5
    names = {resource_name(exp, run) for exp in ("llama3-8b", long_name, "x.y_z") for run in ("r1", "r2")}
    assert len(names) == 6
    for name in names:
        assert pattern.match(name) and len(name) <= 63 and name.startswith("fmbench-")
    assert resource_name("llama3-8b", "r1") == resource_name("llama3-8b", "r1")


# ---------------------------------------------------------------- image deploys


def test_image_deploy_creates_model_config_endpoint_and_teardown_removes_them(moto: str) -> None:
    exp = sagemaker_experiment(
        moto,
        image_uri="763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.29.0-lmi11.0.0-cu124",
        hf_model_id="meta-llama/Meta-Llama-3-8B-Instruct",
        serving_properties={"option.tensor_parallel_degree": "4", "option.rolling_batch": "lmi-dist"},
        env={"MAX_BATCH_SIZE": "32"},
        instance_type=INSTANCE,
        role_arn=ROLE,
        container_startup_timeout_s=900,
    )
    handle = deploy_sagemaker(exp, "run-20261128-a", poll_s=0.05)
    name = resource_name("llama3-8b", "run-20261128-a")
    assert handle.endpoint_name == name and handle.region == "us-east-1" and handle.provider == "sagemaker"
    assert handle.created == [f"model:{name}", f"endpoint-config:{name}", f"endpoint:{name}"]
    assert sm_inventory(moto) == {"endpoints": [name], "configs": [name], "models": [name]}

    sm = sm_client(moto)
    container = sm.describe_model(ModelName=name)["PrimaryContainer"]
    assert container["Environment"] == {
        "HF_MODEL_ID": "meta-llama/Meta-Llama-3-8B-Instruct",
        "OPTION_TENSOR_PARALLEL_DEGREE": "4",
        "OPTION_ROLLING_BATCH": "lmi-dist",
        "MAX_BATCH_SIZE": "32",
    }
    variant = sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"][0]
    assert variant["InstanceType"] == INSTANCE and variant["InitialInstanceCount"] == 1
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 900

    # the handle survives serialisation between tasks
    handle = DeployedEndpoint.model_validate_json(handle.model_dump_json())
    removed = teardown_sagemaker(handle, exp)
    assert sorted(removed) == sorted(handle.created)
    assert sm_inventory(moto) == EMPTY
    # idempotent: a second teardown finds everything already gone and is fine with it
    assert sorted(teardown_sagemaker(handle, exp)) == sorted(handle.created)


def test_secret_container_variables_come_from_the_environment_at_deploy_time(
        moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``env_from`` (HF_TOKEN for a gated model): the value is read from this machine's environment
    when the model is created and reaches SageMaker only; unset, the deploy creates nothing."""
    exp = sagemaker_experiment(moto, image_uri=TGI_IMAGE, hf_model_id="meta-llama/Meta-Llama-3-8B-Instruct",
                               env={"MAX_INPUT_TOKENS": "4096"}, env_from={"HF_TOKEN": "FMB_TEST_HF_TOKEN"},
                               instance_type=INSTANCE, role_arn=ROLE)
    monkeypatch.delenv("FMB_TEST_HF_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"env_from.HF_TOKEN: environment variable FMB_TEST_HF_TOKEN is not set"):
        deploy_sagemaker(exp, "secret-run", poll_s=0.05)
    assert sm_inventory(moto) == EMPTY
    monkeypatch.setenv("FMB_TEST_HF_TOKEN", "hf_PLANTED_token")
    handle = deploy_sagemaker(exp, "secret-run", poll_s=0.05)
    env = sm_client(moto).describe_model(ModelName=handle.endpoint_name)["PrimaryContainer"]["Environment"]
    assert env == {"HF_MODEL_ID": "meta-llama/Meta-Llama-3-8B-Instruct", "MAX_INPUT_TOKENS": "4096",
                   "HF_TOKEN": "hf_PLANTED_token"}
    assert "hf_PLANTED_token" not in handle.model_dump_json() + exp.model_dump_json()
    teardown_sagemaker(handle, exp)
    assert sm_inventory(moto) == EMPTY


def test_model_data_tarball_and_uncompressed_prefix(moto: str) -> None:
    tar = sagemaker_experiment(moto, name="tar", image_uri=TGI_IMAGE, model_data="s3://bucket/model.tar.gz",
                      instance_type=INSTANCE, role_arn=ROLE)
    prefix = sagemaker_experiment(moto, name="prefix", image_uri=TGI_IMAGE, model_data="s3://bucket/weights/",
                         instance_type=INSTANCE, role_arn=ROLE, accept_eula=True)
    h1, h2 = deploy_sagemaker(tar, "r", poll_s=0.05), deploy_sagemaker(prefix, "r", poll_s=0.05)
    sm = sm_client(moto)
    assert sm.describe_model(ModelName=h1.endpoint_name)["PrimaryContainer"]["ModelDataUrl"] == "s3://bucket/model.tar.gz"
    source = sm.describe_model(ModelName=h2.endpoint_name)["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]
    assert source == {"S3Uri": "s3://bucket/weights/", "S3DataType": "S3Prefix", "CompressionType": "None",
                      "ModelAccessConfig": {"AcceptEula": True}}
    teardown_sagemaker(h1, tar)
    teardown_sagemaker(h2, prefix)
    assert sm_inventory(moto) == EMPTY


def test_keep_endpoint_is_respected(moto: str) -> None:
    exp = sagemaker_experiment(moto, image_uri=TGI_IMAGE, instance_type=INSTANCE, role_arn=ROLE, keep_endpoint=True)
    handle = deploy_sagemaker(exp, "keep-run", poll_s=0.05)
    assert handle.keep
    assert teardown_sagemaker(handle, exp) == []
    name = handle.endpoint_name
    assert sm_inventory(moto) == {"endpoints": [name], "configs": [name], "models": [name]}


def test_teardown_deletes_only_what_the_run_created(moto: str) -> None:
    sm = sm_client(moto)
    sm.create_model(ModelName="someone-elses", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": TGI_IMAGE})
    exp = sagemaker_experiment(moto, image_uri=TGI_IMAGE, instance_type=INSTANCE, role_arn=ROLE)
    handle = deploy_sagemaker(exp, "r-only", poll_s=0.05)
    teardown_sagemaker(handle, exp)
    assert sm_inventory(moto) == {"endpoints": [], "configs": [], "models": ["someone-elses"]}


def test_role_is_required_to_deploy(moto: str) -> None:
    exp = sagemaker_experiment(moto, image_uri=TGI_IMAGE, instance_type=INSTANCE)
    with pytest.raises(DeploymentError, match="role_arn is required") as info:
        deploy_sagemaker(exp, "r")
    assert sm_inventory(moto) == EMPTY
    state = deploy_state(info.value)  # what the run records: nothing made, nothing looked for
    assert state is not None and (state.created, state.created_at, state.earlier_gone_at) == ([], None, None)


# ---------------------------------------------------------------- endpoint states





def test_waits_for_in_service_with_progress_logs(moto: str, endpoint_states: Any, caplog: Any) -> None:
    exp = sagemaker_experiment(moto, image_uri=TGI_IMAGE, instance_type=INSTANCE, role_arn=ROLE, deploy_timeout_s=30)
    name = resource_name("llama3-8b", "wait-run")
    later(0.0, endpoint_states, name, "InService", None, 0.5)
    caplog.set_level(logging.INFO, logger="fmbench.deploy.sagemaker")
    handle = deploy_sagemaker(exp, "wait-run", poll_s=0.05)
    assert handle.endpoint_name == name
    messages = [r.getMessage() for r in caplog.records]
    assert any("Creating" in m for m in messages) and any("InService" in m for m in messages)
    teardown_sagemaker(handle, exp)


def test_failed_endpoint_reports_failure_reason_and_cleans_up(moto: str, endpoint_states: Any) -> None:
    exp = sagemaker_experiment(moto, image_uri=TGI_IMAGE, instance_type=INSTANCE, role_arn=ROLE, deploy_timeout_s=30)
    name = resource_name("llama3-8b", "fail-run")
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    later(0.2, endpoint_states, name, "Failed", reason)
    with pytest.raises(DeploymentError) as info:
        deploy_sagemaker(exp, "fail-run", poll_s=0.05)
    message = str(info.value)
    assert "Failed" in message and "ping health check" in message and "cleaned up" in message
    assert sm_inventory(moto) == EMPTY
    state = deploy_state(info.value)  # the endpoint was created (billed from then), and nothing is left
    assert state is not None and state.created_at is not None and state.created == []


def test_deploy_timeout_cleans_up(moto: str, endpoint_states: Any) -> None:
    exp = sagemaker_experiment(moto, image_uri=TGI_IMAGE, instance_type=INSTANCE, role_arn=ROLE, deploy_timeout_s=0.3)
    with pytest.raises(DeploymentError, match=r"not InService after 0 s \(last status Creating\)"):
        deploy_sagemaker(exp, "slow-run", poll_s=0.05)
    assert sm_inventory(moto) == EMPTY


def test_interrupted_deploy_deletes_what_it_created(moto: str, endpoint_states: Any) -> None:
    import _thread

    exp = sagemaker_experiment(moto, image_uri=TGI_IMAGE, instance_type=INSTANCE, role_arn=ROLE, deploy_timeout_s=30)
    name = resource_name("llama3-8b", "ctrl-c")
    # once the endpoint exists (Creating), press Ctrl-C in the deploying (main) thread
    later(0.0, lambda: (endpoint_states(name, "Creating", None, 0.2), _thread.interrupt_main()))
    with pytest.raises(KeyboardInterrupt) as info:
        deploy_sagemaker(exp, "ctrl-c", poll_s=0.05)
    assert sm_inventory(moto) == EMPTY
    state = deploy_state(info.value)  # the interrupt says so too
    assert state is not None and state.created_at is not None and state.created == []


# ---------------------------------------------------------------- existing endpoints


def test_existing_endpoint_is_used_and_never_deleted(moto: str) -> None:
    sm = sm_client(moto)
    sm.create_model(ModelName="prod-model", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": TGI_IMAGE})
    sm.create_endpoint_config(EndpointConfigName="prod-config", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "prod-model", "InitialInstanceCount": 1, "InstanceType": INSTANCE}])
    sm.create_endpoint(EndpointName="prod-endpoint", EndpointConfigName="prod-config")
    exp = sagemaker_experiment(moto, endpoint_name="prod-endpoint")
    handle = deploy_sagemaker(exp, "r")
    assert handle.endpoint_name == "prod-endpoint" and handle.created == [] and handle.keep
    assert teardown_sagemaker(handle, exp) == []
    # even a handle that claims otherwise cannot make the teardown of an existing endpoint delete it
    assert teardown_sagemaker(handle.model_copy(update={"keep": False}), exp) == []
    assert sm_inventory(moto) == {"endpoints": ["prod-endpoint"], "configs": ["prod-config"], "models": ["prod-model"]}


def test_missing_existing_endpoint_is_a_clear_error(moto: str) -> None:
    with pytest.raises(DeploymentError, match="existing endpoint 'nope' not found in us-east-1"):
        deploy_sagemaker(sagemaker_experiment(moto, endpoint_name="nope"), "r")


def test_missing_credentials_name_the_cause(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    with pytest.raises(DeploymentError) as info:
        deploy_sagemaker(sagemaker_experiment(moto, endpoint_name="prod-endpoint"), "r")
    assert "no AWS credentials found" in str(info.value)


def test_unknown_profile_is_a_clear_error(moto: str) -> None:
    with pytest.raises(DeploymentError, match="AWS profile 'nobody' not found"):
        deploy_sagemaker(sagemaker_experiment(moto, endpoint_name="x", profile="nobody"), "r")


# ---------------------------------------------------------------- JumpStart





def test_jumpstart_deploy_from_local_metadata(moto: str, jumpstart_local: None) -> None:
    exp = sagemaker_experiment(moto, jumpstart_model_id=JS_MODEL, accept_eula=True, instance_type=INSTANCE, role_arn=ROLE)
    handle = deploy_sagemaker(exp, "js-run", poll_s=0.05)
    sm = sm_client(moto)
    container = sm.describe_model(ModelName=handle.endpoint_name)["PrimaryContainer"]
    assert container["Image"] == TGI_IMAGE
    # instance-specific variables override the defaults
    assert container["Environment"] == {"SM_NUM_GPUS": "4", "MAX_INPUT_LENGTH": "4095", "MAX_TOTAL_TOKENS": "8191"}
    assert container["ModelDataSource"]["S3DataSource"] == {
        "S3Uri": f"s3://jumpstart-private-test/meta-textgeneration/{JS_MODEL}/artifacts/inference-prepack/v1.0.0/",
        "S3DataType": "S3Prefix",
        "CompressionType": "None",
        "ModelAccessConfig": {"AcceptEula": True},
    }
    variant = sm.describe_endpoint_config(EndpointConfigName=handle.endpoint_name)["ProductionVariants"][0]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 1200
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 1200
    teardown_sagemaker(handle, exp)
    assert sm_inventory(moto) == EMPTY


def test_jumpstart_default_instance_type_when_none_is_given(moto: str, jumpstart_local: None) -> None:
    exp = sagemaker_experiment(moto, jumpstart_model_id=JS_MODEL, accept_eula=True, instance_type=INSTANCE, role_arn=ROLE)
    # the config requires an instance type today; the library falls back to JumpStart's default
    exp.endpoint = exp.endpoint.model_copy(update={"instance_type": None})
    handle = deploy_sagemaker(exp, "js-default", poll_s=0.05)
    variant = sm_client(moto).describe_endpoint_config(EndpointConfigName=handle.endpoint_name)["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g4dn.12xlarge"
    teardown_sagemaker(handle, exp)


def test_jumpstart_gated_model_needs_the_eula(moto: str, jumpstart_local: None) -> None:
    exp = sagemaker_experiment(moto, jumpstart_model_id=JS_MODEL, instance_type=INSTANCE, role_arn=ROLE)
    with pytest.raises(DeploymentError, match="requires accepting its EULA: set endpoint.accept_eula: true"):
        deploy_sagemaker(exp, "r")
    assert sm_inventory(moto) == EMPTY


def test_jumpstart_unknown_model_or_version(moto: str, jumpstart_local: None) -> None:
    bad_id = sagemaker_experiment(moto, jumpstart_model_id="meta-textgeneration-llama-9", instance_type=INSTANCE,
                         role_arn=ROLE)
    with pytest.raises(DeploymentError, match="meta-textgeneration-llama-9"):
        deploy_sagemaker(bad_id, "r")
    bad_version = sagemaker_experiment(moto, jumpstart_model_id=JS_MODEL, jumpstart_model_version="9.*",
                              instance_type=INSTANCE, role_arn=ROLE, accept_eula=True)
    with pytest.raises(DeploymentError, match="version '9.\\*'"):
        deploy_sagemaker(bad_version, "r")


def test_jumpstart_deploy_from_an_s3_bucket_override(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    s3.create_bucket(Bucket="jumpstart-cache-test")
    s3.put_object(Bucket="jumpstart-cache-test", Key="models_manifest.json", Body=json.dumps(jumpstart_manifest()))
    for version in ("2.1.0", "1.0.0"):
        spec = {**jumpstart_spec(gated=False), "version": version}
        s3.put_object(Bucket="jumpstart-cache-test", Key=f"community_models/{JS_MODEL}/specs_v{version}.json",
                      Body=json.dumps(spec))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto)
    monkeypatch.setenv("AWS_JUMPSTART_CONTENT_BUCKET_OVERRIDE", "jumpstart-cache-test")
    exp = sagemaker_experiment(moto, jumpstart_model_id=JS_MODEL, jumpstart_model_version="1.*", instance_type="ml.g4dn.xlarge",
                      role_arn=ROLE)
    handle = deploy_sagemaker(exp, "js-s3", poll_s=0.05)
    container = sm_client(moto).describe_model(ModelName=handle.endpoint_name)["PrimaryContainer"]
    assert container["Image"] == TGI_IMAGE and container["Environment"]["SM_NUM_GPUS"] == "1"
    assert container["ModelDataSource"]["S3DataSource"]["S3Uri"].startswith("s3://jumpstart-cache-test/meta-textgeneration/")
    assert "ModelAccessConfig" not in container["ModelDataSource"]["S3DataSource"]
    teardown_sagemaker(handle, exp)
    assert sm_inventory(moto) == EMPTY


# ---------------------------------------------------------------- registry and bedrock


def test_providers_are_registered_with_the_deploy_registry(moto: str) -> None:
    from fmbench.deploy import _PROVIDERS, deploy_endpoint, teardown_endpoint

    assert _PROVIDERS["sagemaker"] == (deploy_sagemaker, teardown_sagemaker)
    assert _PROVIDERS["bedrock"] == (deploy_bedrock, teardown_bedrock)
    exp = ExperimentConfig.model_validate(
        {"name": "claude", "endpoint": {"provider": "bedrock", "model_id": "us.anthropic.claude-3-5-haiku-20241022-v1:0"}}
    )
    handle = deploy_endpoint(exp, "r")
    assert handle.provider == "bedrock" and handle.region == "us-east-1" and handle.created == []
    assert teardown_endpoint(handle, exp) == []


def test_preflight_sagemaker_check_passes_on_a_working_control_plane_and_names_a_missing_region(
        moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fmbench.config import SageMakerEndpoint
    from fmbench.errors import ConfigError
    from fmbench.preflight import check_sagemaker_access

    ep = SageMakerEndpoint(provider="sagemaker", region="us-east-1", endpoint_url=moto, instance_type="ml.g4dn.xlarge",
                           image_uri="763104351884.dkr.ecr.us-east-1.amazonaws.com/tgi:2.4.0",
                           role_arn="arn:aws:iam::123456789012:role/r")
    check_sagemaker_access(ep, "experiments[e].endpoint")  # moto: no such endpoint -> accepted
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(ConfigError, match=r"experiments\[e\]\.endpoint\.region: no AWS region"):
        check_sagemaker_access(ep.model_copy(update={"region": None}), "experiments[e].endpoint")
