"""Evaluate one experiment's answers after its shards: reference-answer scores for every
successful request, and a judge panel's verdicts on a seeded sample per shard.

`evaluate_experiment` writes into the run directory, under ``evaluation/<experiment>/``:
``scores.parquet`` (one row per successful request: scores, panel verdict), ``judge_calls.parquet``
(one row per judge request, recorded like any request: latency, tokens, error, cost, verdict) and
``outcome.json`` (its presence with status ``ok`` means: evaluated, reuse it); the judge template
used is kept as ``evaluation/judge_prompt.txt``. A run's judges are deployed and deleted like an
experiment's endpoint (`fmbench.sequence.evaluate_run`) and billed from create to delete.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from fmbench import storage
from fmbench.config import BenchmarkConfig, EvaluationConfig, JudgeConfig, resolve_path
from fmbench.deploy import DeployedEndpoint
from fmbench.errors import ConfigError, EndpointError, EvaluationError, FMBenchError
from fmbench.interrupts import Stopped, current_stop_scope, run_until_stopped, worker_stop_scope
from fmbench.protocol import Prompt
from fmbench.quality.judge import (
    Verdict,
    check_template,
    default_template,
    majority_vote,
    parse_verdict,
    render_judge_prompt,
)
from fmbench.quality.scores import score_answer
from fmbench.rundir import RunInfo

log = logging.getLogger("fmbench")

SCORES_SCHEMA: dict[str, pl.DataType] = {
    "experiment": pl.String(), "dataset": pl.String(), "bucket": pl.String(), "shard_id": pl.String(),
    "request_id": pl.Int64(), "attempt": pl.Int64(), "prompt_id": pl.String(),
    "has_reference": pl.Boolean(), "exact_match": pl.Float64(), "f1": pl.Float64(), "rouge_l": pl.Float64(),
    "judged": pl.Boolean(), "panel_verdict": pl.String(),  # correct | incorrect | undecided; null: not judged
}

JUDGE_CALL_SCHEMA: dict[str, pl.DataType] = {
    "experiment": pl.String(), "judge": pl.String(), "dataset": pl.String(), "bucket": pl.String(),
    "shard_id": pl.String(), "request_id": pl.Int64(), "attempt": pl.Int64(), "prompt_id": pl.String(),
    "ok": pl.Boolean(), "error_kind": pl.String(), "error": pl.String(),
    "verdict": pl.String(),  # correct | incorrect | unparseable | error
    "latency_s": pl.Float64(), "input_tokens": pl.Int64(), "output_tokens": pl.Int64(),
    "t_start": pl.Float64(), "t_end": pl.Float64(), "cost_usd": pl.Float64(), "reply": pl.String(),
}


class EvaluationOutcome(BaseModel):
    """What evaluating one experiment produced (``outcome.json``)."""

    model_config = ConfigDict(extra="forbid")

    experiment: str = Field(description="Experiment evaluated.")
    status: Literal["ok", "partial", "failed"] = Field(
        description="ok: every judge answered; partial: some judge answered nothing (named in missing); "
        "failed: no evaluation (error says why).")
    key: str = Field(default="", description="Hash of the evaluation settings; a changed setting re-evaluates.")
    answers: str = Field(default="", description="Hash of the answers evaluated; answers added since (a resumed "
                         "run measured more shards) re-evaluate.")
    scored: int = Field(default=0, description="Successful requests scored against a reference.")
    judged: int = Field(default=0, description="Requests sent to the panel.")
    judge_calls: int = Field(default=0, description="Judge requests sent (all judges).")
    judge_errors: int = Field(default=0, description="Judge requests that failed (timeouts, HTTP errors).")
    unparseable: int = Field(default=0, description="Judge replies without a parseable verdict.")
    judge_cost_usd: float | None = Field(default=None, description="What the judge calls cost (None: unpriced).")
    missing: list[str] = Field(default_factory=list, description="Judges that gave no verdict at all, with why.")
    error: str | None = Field(default=None, description="Why the evaluation failed.")
    cached: bool = Field(default=False, description="Reused from an earlier attempt of this run.")


def evaluation_dir(run: RunInfo, experiment: str) -> str:
    """The directory of an experiment's evaluation files."""
    return run.path("evaluation", experiment)


def evaluation_key(cfg: BenchmarkConfig) -> str:
    """A hash of what an evaluation depends on besides the records (settings and judge template)."""
    ev = cfg.evaluation
    settings = ev.model_dump(mode="json") if ev else None
    if settings and settings.get("judge_prompt"):  # its text counts, not where it was read from
        settings["judge_prompt"] = "<file>"
    blob = {"evaluation": settings, "template": judge_template(cfg)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def judge_template(cfg: BenchmarkConfig) -> str:
    """The judge prompt template of a config (its file, or the shipped one), checked.

    A path is relative to the config's directory; an s3:// URL (the copy a run keeps) is read from there.

    Raises:
        ConfigError: the file cannot be read, or the template is malformed.
    """
    ev = cfg.evaluation
    if ev is None or ev.judge_prompt is None:
        return default_template()
    if storage.is_remote(ev.judge_prompt):
        try:
            text = storage.read_text(ev.judge_prompt)
        except (OSError, FMBenchError) as exc:
            raise ConfigError(f"evaluation.judge_prompt: cannot read {ev.judge_prompt}: {exc}") from exc
        return check_template(text, f"evaluation.judge_prompt ({ev.judge_prompt})")
    path = resolve_path(cfg, ev.judge_prompt)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"evaluation.judge_prompt: cannot read {path}: {exc.strerror or exc}") from exc
    return check_template(text, f"evaluation.judge_prompt ({path})")


def keep_judge_template(run: RunInfo, cfg: BenchmarkConfig) -> None:
    """Keep the run's judge template in the run (``evaluation/judge_prompt.txt``), so that evaluating
    it later (`fmbench evaluate`, from anywhere, an s3:// run too) needs not the config's directory.

    Raises:
        ConfigError: the template cannot be read or is malformed.
    """
    if cfg.evaluation is not None:
        storage.write_text(run.path("evaluation", "judge_prompt.txt"), judge_template(cfg))


def check_evaluation(cfg: BenchmarkConfig) -> None:
    """What can be checked of the evaluation before a run: the judge template and every judge's price.

    Raises:
        ConfigError: naming the template file or the judge.
    """
    if cfg.evaluation is None:
        return
    from fmbench.pricing.resolve import resolve_pricing

    judge_template(cfg)
    for i, judge in enumerate(cfg.evaluation.judges):
        try:
            resolve_pricing(judge.as_experiment())
        except ConfigError as exc:
            raise ConfigError(f"evaluation.judges.{i} ({judge.name}): {exc}") from exc


def finished_evaluation(run: RunInfo, cfg: BenchmarkConfig, experiment: str) -> EvaluationOutcome | None:
    """A complete evaluation of this experiment with the same settings and answers (resume), or None."""
    url = storage.join(evaluation_dir(run, experiment), "outcome.json")
    if not storage.exists(url):
        return None
    outcome = EvaluationOutcome.model_validate_json(storage.read_text(url))
    if outcome.status != "ok" or outcome.key != evaluation_key(cfg):
        return None
    if outcome.answers != answers_key(_answer_rows(run, experiment)):
        if not outcome.answers:  # (judge calls are paid for: say why they are made again)
            log.warning("evaluation of %s: its stored outcome predates the record of which answers it scored, "
                        "so it cannot be shown to cover this run's answers; evaluating again", experiment)
        return None
    return outcome.model_copy(update={"cached": True})


def answers_key(rows: pl.DataFrame) -> str:
    """A hash of the answers an evaluation scores (`_answer_rows`): which requests, and what they said."""
    digest = hashlib.sha256()
    for row in rows.select("shard_id", "request_id", "attempt", "text").iter_rows():
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()[:16]


def read_outcome(run_url: str, experiment: str) -> EvaluationOutcome | None:
    """The stored outcome of an experiment's evaluation, or None when there is none."""
    url = storage.join(run_url, "evaluation", experiment, "outcome.json")
    if not storage.exists(url):
        return None
    return EvaluationOutcome.model_validate_json(storage.read_text(url))


@dataclass(slots=True)
class _Item:
    """One successful request to score."""

    dataset: str
    bucket: str
    shard_id: str
    request_id: int
    attempt: int
    prompt_id: str
    question: str
    references: tuple[str, ...]
    candidate: str


def evaluate_experiment(run: RunInfo, cfg: BenchmarkConfig, experiment: str,
                        panel: JudgePanel | None = None) -> EvaluationOutcome:
    """Score an experiment's answers and ask the judge panel; write the evaluation files.

    Never raises for judge problems: a judge that cannot be deployed or never answers is named in
    ``missing``, its calls recorded as errors. An earlier complete evaluation with the same settings
    is reused.

    Args:
        panel: the deployed judges (`deploy_judges`); without it the judges are deployed for this
            experiment and deleted after it.

    Raises:
        ConfigError: no ``evaluation`` section, or an unreadable judge template.
        StorageError: the run's records or prompts cannot be read, or the results not written.
    """
    ev = cfg.evaluation
    if ev is None:
        raise ConfigError("evaluation: the config has no evaluation section")
    done = finished_evaluation(run, cfg, experiment)
    if done is not None:
        log.info("evaluation of %s: already done, reused", experiment)
        return done
    template = judge_template(cfg)
    rows = _answer_rows(run, experiment)
    items = _items(run, cfg, experiment, rows)
    sample = _judge_sample(items, ev)
    calls: list[dict[str, Any]] = []
    missing: list[str] = []
    own = panel is None and bool(sample)
    if panel is None:
        panel = deploy_judges(run, cfg) if sample else JudgePanel()
    try:
        for judge in ev.judges:
            judge_calls, why = _run_judge(panel, ev, experiment, judge, template, sample)
            calls.extend(judge_calls)
            if why is not None:
                missing.append(f"{judge.name}: {why}")
    finally:
        if own:
            teardown_judges(cfg, panel)
    scores = _scores_frame(experiment, items, sample, calls, [j.name for j in ev.judges])
    calls_frame = pl.DataFrame(calls, schema=JUDGE_CALL_SCHEMA)
    base = evaluation_dir(run, experiment)
    # What the judges were asked, beside their answers (the config may name a file outside the run).
    keep_judge_template(run, cfg)
    storage.write_parquet(storage.join(base, "scores.parquet"), scores)
    storage.write_parquet(storage.join(base, "judge_calls.parquet"), calls_frame)
    costs = [c["cost_usd"] for c in calls]
    outcome = EvaluationOutcome(
        experiment=experiment, status="partial" if missing else "ok", key=evaluation_key(cfg), answers=answers_key(rows),
        scored=int(scores["has_reference"].sum()), judged=len(sample), judge_calls=len(calls),
        judge_errors=sum(1 for c in calls if not c["ok"]),
        unparseable=sum(1 for c in calls if c["verdict"] == "unparseable"),
        judge_cost_usd=sum(costs) if calls and all(c is not None for c in costs) else (0.0 if not calls else None),
        missing=missing)
    storage.write_text(storage.join(base, "outcome.json"), outcome.model_dump_json(indent=2))
    return outcome


def evaluate_complete(run: RunInfo, cfg: BenchmarkConfig, experiment: str,
                      panel: JudgePanel | None = None, stop_event: str | None = None) -> EvaluationOutcome:
    """`evaluate_experiment` for an orchestrator that caches only complete results.

    Args:
        stop_event: on a Dask worker, the Dask Event by which the run stops the judge calls
            (`fmbench.interrupts.reach_workers`); in the run's own process its stop scope reaches them.

    Raises:
        EvaluationError: some judge gave no verdict at all; ``outcome.json`` (written) names it, and a
            resumed run evaluates again.
    """
    with worker_stop_scope(stop_event):
        outcome = evaluate_experiment(run, cfg, experiment, panel)
    if outcome.status != "ok":
        raise EvaluationError(f"evaluation of {experiment} incomplete: {'; '.join(outcome.missing)}")
    return outcome


def failed_evaluation(run: RunInfo, experiment: str, error: BaseException | str) -> EvaluationOutcome:
    """Record that an experiment's evaluation failed, so the report can say it is missing."""
    outcome = EvaluationOutcome(experiment=experiment, status="failed", error=str(error) or type(error).__name__)
    try:
        storage.write_text(storage.join(evaluation_dir(run, experiment), "outcome.json"),
                           outcome.model_dump_json(indent=2))
    except FMBenchError as exc:  # the report still says it is missing: no outcome means not evaluated
        log.warning("evaluation of %s: could not record its failure: %s", experiment, exc)
    return outcome


# ---------------------------------------------------------------- what is evaluated


def _answer_rows(run: RunInfo, experiment: str) -> pl.DataFrame:
    """The experiment's successful measured requests that kept their answer, in a fixed order."""
    url = run.path("requests.parquet")
    req = storage.read_parquet(url) if storage.exists(url) else pl.DataFrame()
    if "text" not in req.columns or req.height == 0:
        return pl.DataFrame(schema={"shard_id": pl.String, "request_id": pl.Int64, "attempt": pl.Int64,
                                    "text": pl.String})
    req = req.filter((pl.col("experiment") == experiment) & pl.col("ok") & ~pl.col("warmup")
                     & pl.col("text").is_not_null())
    return req.sort(["shard_id", "request_id", "attempt"])


def _items(run: RunInfo, cfg: BenchmarkConfig, experiment: str, rows: pl.DataFrame) -> list[_Item]:
    from fmbench.pipeline.prompts import PromptSet, experiment_tokenizer
    from fmbench.pipeline.shards import find_experiment

    # The experiment's prompts were stored under its tokenizer's prompt set (dataset@tokenizer).
    tokenizer = experiment_tokenizer(cfg, find_experiment(cfg, experiment))
    from fmbench.datasets import read_prompts

    prompts: dict[tuple[str, str], dict[str, Prompt]] = {}
    items: list[_Item] = []
    for row in rows.iter_rows(named=True):
        key = (row["dataset"], row["bucket"])
        if key not in prompts:
            purl = run.prompts_file(PromptSet(dataset=key[0], tokenizer=tokenizer).key, key[1])
            prompts[key] = {p.prompt_id: p for p in read_prompts(purl)} if storage.exists(purl) else {}
        prompt = prompts[key].get(row["prompt_id"])
        items.append(_Item(row["dataset"], row["bucket"], row["shard_id"], int(row["request_id"]),
                           int(row["attempt"] or 1), row["prompt_id"], prompt.text if prompt else "",
                           prompt.answers if prompt else (), row["text"]))
    return items


def _judge_sample(items: list[_Item], ev: EvaluationConfig) -> list[_Item]:
    """Up to ``evaluate_per_shard`` requests with references per shard, drawn with the seed."""
    if not ev.judges or ev.evaluate_per_shard == 0:
        return []
    by_shard: dict[str, list[_Item]] = {}
    for it in items:
        if it.references:
            by_shard.setdefault(it.shard_id, []).append(it)
    sample: list[_Item] = []
    for sid in sorted(by_shard):
        pool = by_shard[sid]
        rng = random.Random(f"{ev.seed}:{sid}")
        chosen = pool if len(pool) <= ev.evaluate_per_shard else rng.sample(pool, ev.evaluate_per_shard)
        sample.extend(sorted(chosen, key=lambda i: (i.request_id, i.attempt)))
    return sample


def _scores_frame(experiment: str, items: list[_Item], sample: list[_Item], calls: list[dict[str, Any]],
                  judges: list[str]) -> pl.DataFrame:
    verdicts: dict[tuple[str, int, int], dict[str, Verdict]] = {}
    for c in calls:
        verdicts.setdefault((c["shard_id"], c["request_id"], c["attempt"]), {})[c["judge"]] = c["verdict"]
    judged = {(i.shard_id, i.request_id, i.attempt) for i in sample}
    rows = []
    for it in items:
        s = score_answer(it.candidate, it.references)
        key = (it.shard_id, it.request_id, it.attempt)
        panel = None
        if key in judged:
            got = verdicts.get(key, {})
            panel = majority_vote([got.get(j, "error") for j in judges])
        rows.append({"experiment": experiment, "dataset": it.dataset, "bucket": it.bucket, "shard_id": it.shard_id,
                     "request_id": it.request_id, "attempt": it.attempt, "prompt_id": it.prompt_id,
                     "has_reference": s is not None, "exact_match": s.exact_match if s else None,
                     "f1": s.f1 if s else None, "rouge_l": s.rouge_l if s else None,
                     "judged": key in judged, "panel_verdict": panel})
    return pl.DataFrame(rows, schema=SCORES_SCHEMA)


# ---------------------------------------------------------------- one judge


class JudgePanel(BaseModel):
    """The judges of a run, deployed once for every experiment's evaluation."""

    model_config = ConfigDict(extra="forbid")

    deployed: dict[str, DeployedEndpoint] = Field(default_factory=dict, description="Judge name -> its endpoint.")
    failed: dict[str, str] = Field(default_factory=dict, description="Judge name -> why it could not be deployed.")


def deploy_judges(run: RunInfo, cfg: BenchmarkConfig) -> JudgePanel:
    """Deploy every judge (a simulated server, a SageMaker endpoint; nothing for Bedrock or an
    OpenAI-compatible URL), for `evaluate_experiment` called on its own. Never raises for a judge:
    one that cannot start is named in ``failed``. A run deploys its judges through
    `fmbench.sequence.evaluate_run` instead, which records their timelines for the bill."""
    from fmbench.deploy import deploy_endpoint

    panel = JudgePanel()
    for judge in cfg.evaluation.judges if cfg.evaluation else []:
        try:
            panel.deployed[judge.name] = deploy_endpoint(judge.as_experiment(), run.run_id, config_name=cfg.name,
                                                         run_url=run.url)
        except Exception as exc:  # noqa: BLE001 - recorded; the other judges and the scores go on
            panel.failed[judge.name] = f"not deployed: {exc}"
            log.warning("judge %s: not deployed: %s", judge.name, exc)
    return panel


def teardown_judges(cfg: BenchmarkConfig, panel: JudgePanel) -> list[str]:
    """Delete what `deploy_judges` deployed; returns one line per judge whose teardown failed."""
    from fmbench.deploy import teardown_endpoint

    problems = []
    judges = {j.name: j for j in cfg.evaluation.judges} if cfg.evaluation else {}
    for name, deployed in panel.deployed.items():
        try:
            teardown_endpoint(deployed, judges[name].as_experiment())
        except Exception as exc:  # noqa: BLE001 - every judge gets its teardown
            problems.append(f"judge {name}: teardown failed: {exc}")
            log.warning("judge %s: teardown failed: %s", name, exc)
    return problems


def _run_judge(panel: JudgePanel, ev: EvaluationConfig, experiment: str, judge: JudgeConfig,
               template: str, sample: list[_Item]) -> tuple[list[dict[str, Any]], str | None]:
    """Send one judge the sample; returns its call rows and, when it gave no verdict at all, why."""
    if not sample:
        return [], None
    from fmbench.endpoints import make_client
    from fmbench.pricing.resolve import NO_PRICING, resolve_pricing

    try:
        pricing = resolve_pricing(judge.as_experiment())
    except ConfigError as exc:
        log.warning("judge %s: cost unknown: %s", judge.name, exc)
        pricing = NO_PRICING
    deployed = panel.deployed.get(judge.name)
    if deployed is None:
        why = panel.failed.get(judge.name, "not deployed")
        return [_call_row(experiment, judge.name, it, error=("deploy", why)) for it in sample], why
    texts = [render_judge_prompt(template, it.question, it.references, it.candidate) for it in sample]
    endpoint = judge.endpoint
    if deployed.endpoint_name and hasattr(endpoint, "endpoint_name"):
        endpoint = endpoint.model_copy(update={"endpoint_name": deployed.endpoint_name})
    client = make_client(endpoint, judge.inference, url=deployed.url)
    try:
        # The run's stop cancels the calls before their judge is deleted: calls failed by the
        # teardown would otherwise be this evaluation's judge errors, kept as if complete.
        rows = run_until_stopped(_send_all(client, experiment, judge.name, sample, texts, ev.concurrency),
                                 current_stop_scope())
    except Stopped:
        raise EvaluationError(f"evaluation of {experiment}: stopped with the run; nothing of it is kept "
                              "(a resumed run evaluates again)") from None
    _price(rows, pricing)
    answered = [r for r in rows if r["ok"]]
    return rows, None if answered else f"no judge request succeeded ({rows[0]['error']})"


async def _send_all(client: Any, experiment: str, judge: str, sample: list[_Item], texts: list[str],
                    concurrency: int) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(concurrency)

    async def one(it: _Item, text: str) -> dict[str, Any]:
        async with sem:
            t0 = time.monotonic()
            try:
                done = await client.complete(Prompt(prompt_id=f"{it.shard_id}/{it.request_id}", text=text,
                                                    input_tokens=0))
            except EndpointError as exc:
                row = _call_row(experiment, judge, it, error=(exc.kind, str(exc)))
                row.update(t_start=t0, t_end=time.monotonic(), latency_s=time.monotonic() - t0)
                return row
            row = _call_row(experiment, judge, it)
            row.update(ok=True, verdict=parse_verdict(done.text), reply=done.text[:2000],
                       t_start=done.t_start, t_end=done.t_end, latency_s=done.t_end - done.t_start,
                       input_tokens=done.input_tokens, output_tokens=done.output_tokens)
            return row

    await client.open(concurrency)
    try:
        return list(await asyncio.gather(*(one(it, t) for it, t in zip(sample, texts))))
    finally:
        await client.close()


def _call_row(experiment: str, judge: str, it: _Item, error: tuple[str, str] | None = None) -> dict[str, Any]:
    return {"experiment": experiment, "judge": judge, "dataset": it.dataset, "bucket": it.bucket,
            "shard_id": it.shard_id, "request_id": it.request_id, "attempt": it.attempt, "prompt_id": it.prompt_id,
            "ok": False, "error_kind": error[0] if error else None, "error": error[1] if error else None,
            "verdict": "error", "latency_s": None, "input_tokens": None, "output_tokens": None,
            "t_start": None, "t_end": None, "cost_usd": None, "reply": None}


def _price(rows: list[dict[str, Any]], pricing: Any) -> None:
    """Each call's cost: its tokens at token prices, or its share of the judge's busy hours."""
    if pricing.model == "token":
        for r in rows:
            if r["ok"]:
                r["cost_usd"] = ((r["input_tokens"] or 0) * (pricing.input_per_1k_usd or 0.0)
                                 + (r["output_tokens"] or 0) * (pricing.output_per_1k_usd or 0.0)) / 1000
            else:
                r["cost_usd"] = 0.0
    elif pricing.model == "instance" and pricing.hourly_usd is not None:
        # An instance is billed while the judge works: first send to last answer, split over the calls.
        starts = [r["t_start"] for r in rows if r["t_start"] is not None]
        ends = [r["t_end"] for r in rows if r["t_end"] is not None]
        busy_h = (max(ends) - min(starts)) / 3600 if starts and ends else 0.0
        for r in rows:
            r["cost_usd"] = pricing.hourly_usd * busy_h / len(rows)
