"""The public API of `fmbench` is what `fmbench.__all__` says, all of it importable, none of it Prefect.

To grow the API, add the name to ``fmbench._EXPORTS`` and ``fmbench.__all__`` and to `PUBLIC` here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import fmbench

PUBLIC = {
    "__version__",
    # scripts and notebooks (fmbench.api; `report` is the callable fmbench.report package)
    "run_benchmark", "load_config", "compare", "report", "BenchmarkResult", "ReportFiles",
    # config models
    "BenchmarkConfig", "ExperimentConfig", "SimulatedEndpoint", "OpenAIEndpoint", "SageMakerEndpoint",
    "BedrockEndpoint", "SyntheticDataset", "LongBenchDataset", "JsonlDataset", "InferenceConfig",
    "PricingConfig", "SLOConfig",
    # errors and exit codes
    "FMBenchError", "ConfigError", "DatasetError", "TokenizerError", "CredentialsError", "EndpointError",
    "DeploymentError", "StorageError", "ExitCode",
    # what an endpoint client implements
    "Prompt", "Completion", "EndpointClient",
}


def test_all_is_the_public_api() -> None:
    assert set(fmbench.__all__) == PUBLIC
    assert len(fmbench.__all__) == len(set(fmbench.__all__))
    assert set(dir(fmbench)) >= PUBLIC


def test_every_exported_member_is_fmbench_s_own() -> None:
    for name in PUBLIC - {"__version__"}:
        member = getattr(fmbench, name)
        assert member.__module__.startswith("fmbench."), (name, member.__module__)
        assert not member.__module__.rsplit(".", 1)[-1].startswith("_"), (name, member.__module__)
    assert isinstance(fmbench.__version__, str)


def test_the_library_imports_neither_prefect_nor_the_cli() -> None:
    # In a fresh interpreter: every module of the library, then which of the app's were pulled in.
    code = textwrap.dedent("""
        import pkgutil, importlib, sys
        import fmbench
        for m in pkgutil.walk_packages(fmbench.__path__, "fmbench."):
            if not m.name.endswith(".__main__"):
                importlib.import_module(m.name)
        for name in fmbench.__all__:
            getattr(fmbench, name)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "flows", "tasks", "cli"))
        print(",".join(bad))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert proc.stdout.strip() == "", proc.stdout
