"""The steps before anything is measured: load and check the config, calibrate the client."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fmbench.config import BenchmarkConfig
from fmbench.errors import ConfigError, FMBenchError
from fmbench.rundir import RunInfo

log = logging.getLogger("fmbench")


def load_benchmark_config(config: str | Path | Mapping[str, Any] | BenchmarkConfig,
                          overrides: list[str] | None = None, experiments: list[str] | None = None,
                          concurrency_levels: list[int] | None = None, requests_per_level: int | None = None,
                          base_dir: str | Path | None = None) -> BenchmarkConfig:
    """Load a config (path, URL, YAML text, a mapping as the YAML would load, or a config model as a
    Prefect form gives it), apply run-time overrides, and check what can be checked before anything
    is measured (pricing resolves for every experiment, every tokenizer exists, the evaluation's
    judges and templates). The one way every entry point (CLI, flow, library) loads a config.

    Args:
        base_dir: where a mapping's relative dataset paths resolve (default: the current directory).

    Raises:
        ConfigError: naming the file or parameter and the field.
    """
    from fmbench.config import apply_overrides, load_config_source, narrow_config, parse_config

    if isinstance(config, BenchmarkConfig):
        data = config.model_dump(mode="python")
        loaded = parse_config(apply_overrides(data, overrides) if overrides else data, source="config")
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
        if overrides:
            data = apply_overrides(data, overrides)
        if data.get("base_dir") is None:
            data["base_dir"] = str(base_dir or Path.cwd())
        loaded = parse_config(data, source="<config>")
    elif isinstance(config, (str, Path)):
        loaded = load_config_source(str(config), overrides=overrides)
    else:
        raise ConfigError(f"config: expected a path, YAML text, a mapping or a BenchmarkConfig, "
                          f"got {type(config).__name__}")
    cfg = narrow_config(loaded, experiments, concurrency_levels, requests_per_level)
    source = config_source_label(str(config)) if isinstance(config, (str, Path)) else "config"
    check_pricing(cfg, source)
    check_tokenizers(cfg, source)
    from fmbench.quality.evaluate import check_evaluation

    check_evaluation(cfg)
    return cfg


def config_source_label(config: str) -> str:
    """How error messages name a config given as a path, a URL or inline YAML text."""
    text = config.strip()
    return "<inline config>" if "\n" in text or text.startswith("{") or re.match(r"^name\s*:", text) else config


def check_tokenizers(cfg: BenchmarkConfig, source: str) -> None:
    """Check the run's and every experiment's tokenizer without downloading anything (a tiktoken
    encoding that exists, a file that exists, a well-formed ``hf:ORG/NAME``).

    Raises:
        ConfigError: ``SOURCE: FIELD: problem``.
    """
    from fmbench.datasets import check_tokenizer_specs

    check_tokenizer_specs(cfg, source)


def check_dataset_files(cfg: BenchmarkConfig, source: str) -> None:
    """Every local dataset file exists (a run's preflight reads them; ``validate`` only looks).

    Raises:
        ConfigError: ``SOURCE: datasets[NAME].path: file not found: PATH`` (or a directory).
    """
    from fmbench.datasets import dataset_location

    for ds in cfg.datasets:
        location = dataset_location(cfg, ds)
        if isinstance(location, Path) and not location.is_file():
            what = "a directory, not a file" if location.is_dir() else "file not found"
            raise ConfigError(f"{source}: datasets[{ds.name}].path: {what}: {location}")


def check_pricing(cfg: BenchmarkConfig, source: str = "config") -> None:
    """Resolve every experiment's pricing now, so an unknown instance type fails before the run
    rather than after it has measured everything.

    Raises:
        ConfigError: ``SOURCE: experiments.NAME.pricing...: problem``, as every config error names it.
    """
    from fmbench.pricing import resolve_pricing

    for experiment in cfg.experiments:
        try:
            resolve_pricing(experiment)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc


def calibrate(run: RunInfo) -> Any:
    """Measure this host's client ceiling into the run (calibration.json, manifest), before the shards.

    A failed calibration is logged, not raised: shards then run in one process each, unflagged.
    """
    from fmbench.calibration import calibrate_run

    try:
        cal = calibrate_run(run.url)
    except FMBenchError as exc:
        log.warning("client calibration failed, shards run unflagged in one process: %s", exc)
        return None
    log.info("client calibration: %s", cal.summary())
    return cal
