"""Evaluate a finished run (``fmbench evaluate RUN_DIR``): its stored answers are scored and judged
with the run's evaluation settings, or those of another config, and its report is rendered again."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import yaml

from fmbench import storage
from fmbench.config import BenchmarkConfig, EvaluationConfig, apply_overrides, load_config, parse_config
from fmbench.deploy.heartbeat import end_heartbeats
from fmbench.errors import ConfigError, StorageError
from fmbench.quality.evaluate import EvaluationOutcome, check_evaluation, read_outcome
from fmbench.rundir import RunInfo, has_manifest, hold_live, hold_run, load_manifest, run_uid

SETTINGS = "settings.yml"


def stored_settings(run_url: str) -> tuple[EvaluationConfig, float | None] | None:
    """The evaluation settings (and ``slo.min_accuracy``) `evaluate_run_dir` last used on a run, if any."""
    url = storage.join(run_url, "evaluation", SETTINGS)
    if not storage.exists(url):
        return None
    data = yaml.safe_load(storage.read_text(url)) or {}
    return EvaluationConfig.model_validate(data.get("evaluation") or {}), data.get("min_accuracy")


def _run_config(run_url: str, config: str | None, overrides: list[str] | None) -> BenchmarkConfig:
    curl = storage.join(run_url, "config.yml")
    if not storage.exists(curl):
        raise StorageError(f"{run_url}: no config.yml; not a run directory")
    data: Any = yaml.safe_load(storage.read_text(curl))
    if not isinstance(data, dict):
        raise ConfigError(f"{curl}: the config must be a YAML mapping")
    # Relative paths of config.yml (a judge's ca_bundle, datasets) resolve where the run's config was;
    # a run made before the manifest said so resolves them against the current directory, as before.
    base_dir = load_manifest(run_url).config_dir if has_manifest(run_url) else None
    if config is not None:
        other = load_config(config)
        if other.evaluation is None:
            raise ConfigError(f"{config}: no evaluation section")
        evaluation = other.evaluation.model_dump(mode="json")
        # that config's relative paths are relative to it, not to the run
        if other.evaluation.judge_prompt is not None:
            evaluation["judge_prompt"] = str(Path(other.base_dir or Path(config).parent, other.evaluation.judge_prompt))
        for judge, dumped in zip(other.evaluation.judges, evaluation["judges"], strict=True):
            ca_file = getattr(judge.endpoint, "ca_file", None)
            if ca_file is not None and ca_file():
                dumped["endpoint"]["ca_bundle"] = ca_file()
        data["evaluation"] = evaluation
        data.setdefault("slo", {})["min_accuracy"] = other.slo.min_accuracy
    elif isinstance(data.get("evaluation"), dict) and data["evaluation"].get("judge_prompt"):
        # config.yml does not know the directory of the config it came from; the run kept the template
        # (an s3:// run's copy is read from there).
        kept = storage.join(run_url, "evaluation", "judge_prompt.txt")
        if not Path(data["evaluation"]["judge_prompt"]).is_absolute() and storage.exists(kept):
            data["evaluation"]["judge_prompt"] = kept
    if overrides:
        data = apply_overrides(data, overrides)
    cfg = parse_config(data, source=curl, base_dir=base_dir)
    if cfg.evaluation is None:
        raise ConfigError(f"{curl}: the run has no evaluation section; give --config CONFIG with one "
                          "(or --set evaluation.evaluate_per_shard=20 for reference-answer scores only)")
    try:  # as `run` and `validate` do: a bad template or judge price is refused before any judge is deployed
        check_evaluation(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{config or curl}: {exc}") from exc
    return cfg


def evaluate_run_dir(run_url: str, config: str | None = None, overrides: list[str] | None = None,
                     png: bool = True) -> dict[str, EvaluationOutcome | None]:
    """Evaluate every experiment of a finished run, then render its report again.

    Args:
        run_url: the run directory (local path or s3:// URL).
        config: a config whose ``evaluation`` section and ``slo.min_accuracy`` replace the run's.
        overrides: ``KEY.PATH=VALUE`` changes to the run's config (``evaluation.…``).
        png: export the report's static PNGs (False: no browser is started).

    Returns:
        Each experiment's evaluation outcome (None: not evaluated).

    Raises:
        ConfigError: no evaluation settings, or the run kept no answer text (``store_text`` was off).
        StorageError: not a finished run (no manifest end, no requests.parquet).
    """
    import polars as pl

    from fmbench.inline import InlineSteps
    from fmbench.pipeline import write_report
    from fmbench.sequence import evaluate_run

    url = run_url.rstrip("/") if storage.is_remote(run_url) else str(Path(run_url).resolve())
    if not has_manifest(url):
        raise StorageError(f"{run_url}: no manifest.json; not a run directory")
    manifest = load_manifest(url)
    requests_url = storage.join(url, "requests.parquet")
    if not manifest.ended_at or not storage.exists(requests_url):
        raise StorageError(f"{run_url}: the run has not finished (no requests.parquet); resume it first")
    cfg = _run_config(url, config, overrides)
    req = storage.read_parquet(requests_url)
    if "text" not in req.columns or req.filter(pl.col("text").is_not_null()).height == 0:
        raise ConfigError(f"{run_url}: the run kept no answer text (store_text was off), so there is nothing to "
                          "evaluate; run it again with store_text: true or an evaluation section")
    assert cfg.evaluation is not None
    run_id = manifest.run_id or url.rsplit("/", 1)[-1]
    # Not beside a resume of the run, nor another evaluation of it; and in progress to `fmbench cleanup`
    # while its judges' endpoints are up (what it keeps past its end is no longer in progress).
    with hold_run(url, run_id), hold_live(cfg.name, run_id), contextlib.ExitStack() as ended:
        ended.callback(end_heartbeats, run_id)
        settings = {"evaluation": cfg.evaluation.model_dump(mode="json"), "min_accuracy": cfg.slo.min_accuracy}
        storage.write_text(storage.join(url, "evaluation", SETTINGS), yaml.safe_dump(settings, sort_keys=False))
        scratch = url if not storage.is_remote(url) else tempfile.mkdtemp(prefix="fmbench-evaluate-")
        run = RunInfo(name=cfg.name, run_id=run_id, url=url, scratch=scratch, resumed=True, uid=run_uid(manifest))
        with InlineSteps() as steps:
            evaluate_run(steps, run, cfg)
        write_report(run, png=png)
    return {e.name: read_outcome(url, e.name) for e in cfg.experiments}
