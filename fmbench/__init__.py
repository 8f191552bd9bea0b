"""fmbench: benchmark foundation-model endpoints for latency, throughput and cost.

The package is a plain library (no Prefect import); `flows/` and `tasks/` wrap it. Its public API
(`run_benchmark`, `load_config`, `report`, `compare` and the config models) works in scripts and
notebooks; names load on first use, so ``import fmbench`` stays cheap for the command line.
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
    from fmbench.errors import ConfigError, FMBenchError

# name -> module it lives in. `report` is the `fmbench.report` package itself, which is callable
# (see fmbench/report/__init__.py): a function of that name would be replaced by the package as
# soon as anything imports it.
_EXPORTS = {
    "run_benchmark": "fmbench.api", "load_config": "fmbench.api", "compare": "fmbench.api",
    "BenchmarkResult": "fmbench.api", "ReportFiles": "fmbench.api",
    "BenchmarkConfig": "fmbench.config", "ExperimentConfig": "fmbench.config",
    "SimulatedEndpoint": "fmbench.config", "OpenAIEndpoint": "fmbench.config",
    "SageMakerEndpoint": "fmbench.config", "BedrockEndpoint": "fmbench.config",
    "SyntheticDataset": "fmbench.config", "LongBenchDataset": "fmbench.config", "JsonlDataset": "fmbench.config",
    "InferenceConfig": "fmbench.config", "PricingConfig": "fmbench.config", "SLOConfig": "fmbench.config",
    "FMBenchError": "fmbench.errors", "ConfigError": "fmbench.errors",
}

__all__ = [
    "BedrockEndpoint",
    "BenchmarkConfig",
    "BenchmarkResult",
    "ConfigError",
    "ExperimentConfig",
    "FMBenchError",
    "InferenceConfig",
    "JsonlDataset",
    "LongBenchDataset",
    "OpenAIEndpoint",
    "PricingConfig",
    "ReportFiles",
    "SLOConfig",
    "SageMakerEndpoint",
    "SimulatedEndpoint",
    "SyntheticDataset",
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
