"""A benchmark config: its pydantic models (`models`) and how a YAML file becomes one (`load`)."""

from __future__ import annotations

from pydantic import SecretStr

from fmbench.config.load import (
    apply_overrides,
    dump_config,
    format_validation_error,
    load_config,
    load_config_source,
    load_config_text,
    narrow_config,
    parse_config,
    parse_override,
    resolve_path,
)
from fmbench.config.models import (
    BedrockEndpoint,
    BenchmarkConfig,
    DatasetConfig,
    EndpointConfig,
    ExperimentConfig,
    InferenceConfig,
    JsonlDataset,
    LongBenchDataset,
    OpenAIEndpoint,
    PricingConfig,
    SageMakerEndpoint,
    SimulatedEndpoint,
    SimulatedFaults,
    SLOConfig,
    SyntheticDataset,
    bucket_label,
)

__all__ = [
    "BedrockEndpoint",
    "BenchmarkConfig",
    "DatasetConfig",
    "EndpointConfig",
    "ExperimentConfig",
    "InferenceConfig",
    "JsonlDataset",
    "LongBenchDataset",
    "OpenAIEndpoint",
    "PricingConfig",
    "SLOConfig",
    "SageMakerEndpoint",
    "SecretStr",
    "SimulatedEndpoint",
    "SimulatedFaults",
    "SyntheticDataset",
    "apply_overrides",
    "bucket_label",
    "dump_config",
    "format_validation_error",
    "load_config",
    "load_config_source",
    "load_config_text",
    "narrow_config",
    "parse_config",
    "parse_override",
    "resolve_path",
]
