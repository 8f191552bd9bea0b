"""fmbench: benchmark foundation-model endpoints for latency, throughput and cost.

The package is a plain library (no Prefect import); `cli/`, `flows/` and `tasks/` use it, never the
reverse. Its public API is `__all__` (pinned by tests/test_exported_members.py): `run_benchmark`,
`load_config`, `report` and `compare` for scripts and notebooks, the config models, errors and the
endpoint protocol. The names load on first use, so ``import fmbench`` stays cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fmbench.api import BenchmarkResult, ReportFiles, compare, load_config, run_benchmark
    from fmbench.config import (
        BedrockEndpoint,
        BenchmarkConfig,
        ExperimentConfig,
        InferenceConfig,
        JsonlDataset,
        LongBenchDataset,
        OpenAIEndpoint,
        PricingConfig,
        SageMakerEndpoint,
        SimulatedEndpoint,
        SLOConfig,
        SyntheticDataset,
    )
    from fmbench.errors import (
        ConfigError,
        CredentialsError,
        DatasetError,
        DeploymentError,
        EndpointError,
        ExitCode,
        FMBenchError,
        StorageError,
        TokenizerError,
    )
    from fmbench.protocol import Completion, EndpointClient, Prompt

#: public name -> the module it lives in (the one table to extend when the API grows). `report` is
#: the `fmbench.report` package itself, which is callable (fmbench/report/__init__.py): a function
#: of that name would be replaced by the package as soon as anything imports it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["run_benchmark", "load_config", "compare", "BenchmarkResult", "ReportFiles"], "fmbench.api"),
    **dict.fromkeys(
        ["BenchmarkConfig", "ExperimentConfig", "SimulatedEndpoint", "OpenAIEndpoint", "SageMakerEndpoint",
         "BedrockEndpoint", "SyntheticDataset", "LongBenchDataset", "JsonlDataset", "InferenceConfig",
         "PricingConfig", "SLOConfig"], "fmbench.config"),
    **dict.fromkeys(
        ["FMBenchError", "ConfigError", "DatasetError", "TokenizerError", "CredentialsError", "EndpointError",
         "DeploymentError", "StorageError", "ExitCode"], "fmbench.errors"),
    **dict.fromkeys(["Prompt", "Completion", "EndpointClient"], "fmbench.protocol"),
}

__all__ = [
    "BedrockEndpoint",
    "BenchmarkConfig",
    "BenchmarkResult",
    "Completion",
    "ConfigError",
    "CredentialsError",
    "DatasetError",
    "DeploymentError",
    "EndpointClient",
    "EndpointError",
    "ExitCode",
    "ExperimentConfig",
    "FMBenchError",
    "InferenceConfig",
    "JsonlDataset",
    "LongBenchDataset",
    "OpenAIEndpoint",
    "PricingConfig",
    "Prompt",
    "ReportFiles",
    "SLOConfig",
    "SageMakerEndpoint",
    "SimulatedEndpoint",
    "StorageError",
    "SyntheticDataset",
    "TokenizerError",
    "__version__",
    "compare",
    "load_config",
    "report",
    "run_benchmark",
]


def __getattr__(name: str) -> Any:
    if name == "report":
        return importlib.import_module("fmbench.report")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fmbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
