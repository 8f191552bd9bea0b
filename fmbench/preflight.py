"""Cheap checks run before a benchmark starts, so bad input fails in seconds with one clear line
instead of minutes later inside the flow."""

from __future__ import annotations

from fmbench.config import BenchmarkConfig, OpenAIEndpoint, resolve_path
from fmbench.errors import DatasetError


def preflight(cfg: BenchmarkConfig) -> None:
    """Check the tokenizer, the dataset files and the reachability of existing endpoints.

    Raises:
        TokenizerError, DatasetError, EndpointConnectionError: naming what is wrong.
    """
    from fmbench.datasets import load_run_tokenizer
    from fmbench.deploy.local import check_reachable

    load_run_tokenizer(cfg)
    for ds in cfg.datasets:
        path = getattr(ds, "path", None)
        if path and not path.startswith("hf:") and not resolve_path(cfg, path).is_file():
            raise DatasetError(f"datasets[{ds.name}].path: file not found: {resolve_path(cfg, path)}")
    for e in cfg.experiments:
        if isinstance(e.endpoint, OpenAIEndpoint):
            check_reachable(e.endpoint.base_url, f"experiments[{e.name}].endpoint.base_url")
