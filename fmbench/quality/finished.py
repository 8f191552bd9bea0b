"""Evaluate a finished run (``fmbench evaluate RUN_DIR``): its stored answers are scored and judged
with the run's evaluation settings, or those of another config, and its report is rendered again."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import yaml

from fmbench import storage
from fmbench.config import BenchmarkConfig, EvaluationConfig, apply_overrides, load_config, parse_config
from fmbench.deploy.heartbeat import end_heartbeats
from fmbench.errors import ConfigError, StorageError
from fmbench.quality.evaluate import EvaluationOutcome, check_evaluation, finished_evaluation, read_outcome
from fmbench.rundir import RunInfo, has_manifest, hold_live, hold_run, load_manifest, run_uid, utc_now

SETTINGS = "settings.yml"

log = logging.getLogger("fmbench")


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
        names = [e.name for e in cfg.experiments]
        _settle_previous(url, names)
        scratch = url if not storage.is_remote(url) else tempfile.mkdtemp(prefix="fmbench-evaluate-")
        run = RunInfo(name=cfg.name, run_id=run_id, url=url, scratch=scratch, resumed=True, uid=run_uid(manifest))
        # Complete evaluations these settings replace: kept aside until the new ones are complete too
        # (judge calls are paid for, and a partial evaluation is not worth the complete one it replaces).
        replaced = [n for n in names if (o := read_outcome(url, n)) is not None and o.status == "ok"
                    and finished_evaluation(run, cfg, n) is None]
        if replaced:
            _copy_files(url, _evaluation_files(url, names), storage.join(url, PREVIOUS))
        settings = {"evaluation": cfg.evaluation.model_dump(mode="json"), "min_accuracy": cfg.slo.min_accuracy}
        storage.write_text(storage.join(url, "evaluation", SETTINGS), yaml.safe_dump(settings, sort_keys=False))
        with InlineSteps() as steps:
            evaluate_run(steps, run, cfg)
        outcomes = {n: read_outcome(url, n) for n in names}
        short = [n for n in replaced if (o := outcomes[n]) is None or o.status != "ok"]
        if short:
            aside = storage.join(url, ATTEMPTS, utc_now().replace(":", ""))
            _move_files(url, _evaluation_files(url, names), aside)
            _restore(url, names, storage.join(url, PREVIOUS), "")
            log.warning("the evaluation with these settings is incomplete for %s: the earlier, complete evaluation "
                        "of the run is kept (its settings and results, as the report shows); this one's files are "
                        "in %s", ", ".join(short), aside)
        elif replaced:
            storage.remove_tree(storage.join(url, PREVIOUS))
        write_report(run, png=png)
    return outcomes


#: Where `evaluate_run_dir` keeps a run's complete evaluation while it makes one with other settings,
#: and where it keeps a new evaluation that came out incomplete (the complete one stays in place).
PREVIOUS = "evaluation-previous"
ATTEMPTS = "evaluation-attempts"


def _evaluation_files(base: str, experiments: list[str]) -> list[str]:
    """The evaluation files under ``base`` (a run, or a copy of its evaluation), relative to it."""
    found = []
    for sub in ["evaluation", *(f"evaluation/{e}" for e in experiments)]:
        found += [f"{sub}/{u.rsplit('/', 1)[-1]}" for u in storage.list_files(storage.join(base, *sub.split("/")))]
    return found


def _copy_files(base: str, files: list[str], to: str) -> None:
    for f in files:
        storage.write_bytes(storage.join(to, *f.split("/")), storage.read_bytes(storage.join(base, *f.split("/"))))


def _move_files(base: str, files: list[str], to: str) -> None:
    for f in files:
        storage.move(storage.join(base, *f.split("/")), storage.join(to, *f.split("/")))


def _settle_previous(url: str, experiments: list[str]) -> None:
    """An evaluate stopped while it had a complete evaluation kept aside: put it back unless the new
    one was complete for every experiment it had (then the kept one is only dropped)."""
    kept = storage.join(url, PREVIOUS)
    if not _evaluation_files(kept, experiments):
        return
    done = [n for n in experiments if (o := read_outcome(kept, n)) is not None and o.status == "ok"]
    if all((o := read_outcome(url, n)) is not None and o.status == "ok" for n in done):
        storage.remove_tree(kept)
        return
    _restore(url, experiments, kept, "an evaluate stopped before its own was complete")


def _restore(url: str, experiments: list[str], kept: str, why: str) -> None:
    """Put the evaluation kept in ``kept`` back in place of the run's current one (removed first)."""
    files = _evaluation_files(kept, experiments)
    if not files:
        return
    if why:
        log.warning("restoring the run's complete evaluation from %s (%s)", kept, why)
    for f in _evaluation_files(url, experiments):
        storage.remove(storage.join(url, *f.split("/")))
    _move_files(kept, files, url)
