"""Answer quality end to end against the simulated endpoint: its seeded answer model, a panel of
simulated judges (one honest, one that always errs, one with malformed verdicts and timeouts), the
Prefect flow's evaluation step, the report, the recommendation, and `fmbench evaluate`."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from cli.main import main
from fmbench.config import parse_config
from fmbench.pipeline import run_benchmark
from fmbench.quality.scores import wilson_interval
from fmbench.rundir import hold_run

pytestmark = pytest.mark.integration

N_PROMPTS = 150
PER_SHARD = 40
SIM = {"provider": "simulated", "ttft_ms": 2, "tpot_ms": 0.5, "max_batch": 16}


def _dataset(tmp: Path) -> Path:
    path = tmp / "qa.jsonl"
    with path.open("w") as fh:
        for i in range(N_PROMPTS):
            # Some records carry several acceptable answers; the model and the metrics use any of them.
            answer: Any = [f"Zanzibar {i}", f"Zanzibar number {i}"] if i % 3 == 0 else f"Zanzibar {i}"
            fh.write(json.dumps({"id": f"q{i}", "prompt": f"Question {i}: which code name was used?",
                                 "answer": answer}) + "\n")
    return path


def _judge(name: str, seed: int, **extra: Any) -> dict[str, Any]:
    inference = extra.pop("inference", {"max_tokens": 64, "stream": False, "timeout_s": 10})
    return {"name": name, "endpoint": {**SIM, "seed": seed, **extra}, "inference": inference,
            "pricing": {"input_per_1k_usd": 0.003, "output_per_1k_usd": 0.015}}


PANEL = [
    _judge("honest", 11),
    _judge("contrarian", 12, judge_error_rate=1.0),
    _judge("flaky", 13, judge_malformed_rate=0.3, faults={"hang_rate": 0.2},
           inference={"max_tokens": 64, "stream": False, "timeout_s": 1.0}),
]


def _config(tmp: Path, *, evaluation: dict[str, Any] | None, min_accuracy: float | None = None,
            name: str = "quality") -> dict[str, Any]:
    _dataset(tmp)
    slo: dict[str, Any] = {"latency_p95_s": 10.0}
    if min_accuracy is not None:
        slo["min_accuracy"] = min_accuracy
    cfg: dict[str, Any] = {
        "name": name, "output": str(tmp / "results"), "buckets": [[1, 200]],
        "datasets": [{"name": "qa", "source": "jsonl", "path": "qa.jsonl", "answer_field": "answer"}],
        "experiments": [
            {"name": "big", "endpoint": {**SIM, "answer_accuracy": 0.9, "seed": 1},
             "concurrency_levels": [4], "requests_per_level": N_PROMPTS, "warmup_requests": 0,
             "pricing": {"hourly_usd": 40.0}},
            {"name": "small", "endpoint": {**SIM, "answer_accuracy": 0.5, "seed": 2},
             "concurrency_levels": [4], "requests_per_level": N_PROMPTS, "warmup_requests": 0,
             "pricing": {"hourly_usd": 1.0}},
        ],
        "slo": slo,
    }
    if evaluation is not None:
        cfg["evaluation"] = evaluation
    return cfg


def _write(tmp: Path, cfg: dict[str, Any], name: str) -> Path:
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def flow_run(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect flow run with evaluation: two experiments, a three-judge panel, min accuracy 0.75."""
    from flows.benchmark import benchmark

    tmp = tmp_path_factory.mktemp("quality-flow")
    cfg = _config(tmp, evaluation={"judges": PANEL, "evaluate_per_shard": PER_SHARD, "concurrency": 8},
                  min_accuracy=0.75)
    report = benchmark(config=str(_write(tmp, cfg, "quality")), run_id="q1")
    return Path(report).parent


def _scores(run: Path, experiment: str) -> pl.DataFrame:
    return pl.read_parquet(run / "evaluation" / experiment / "scores.parquet")


def _calls(run: Path, experiment: str) -> pl.DataFrame:
    return pl.read_parquet(run / "evaluation" / experiment / "judge_calls.parquet")


@pytest.mark.parametrize(("experiment", "p"), [("big", 0.9), ("small", 0.5)])
def test_measured_accuracy_matches_the_configured_probability(flow_run: Path, experiment: str, p: float) -> None:
    scores = _scores(flow_run, experiment)
    assert scores.height == N_PROMPTS and scores["has_reference"].all()
    hits = int(scores["exact_match"].sum())
    lo, hi = wilson_interval(hits, scores.height)
    assert lo <= p <= hi, (hits, scores.height, lo, hi)
    # The simulator answers a reference or unrelated words, so F1 and ROUGE-L agree with exact match.
    assert scores.filter(pl.col("exact_match") == 1.0)["f1"].min() == 1.0
    assert scores.filter(pl.col("exact_match") == 0.0)["f1"].max() == 0.0


def test_majority_vote_with_disagreeing_judges(flow_run: Path) -> None:
    for experiment in ("big", "small"):
        scores = _scores(flow_run, experiment)
        calls = _calls(flow_run, experiment)
        judged = scores.filter(pl.col("judged"))
        assert judged.height == PER_SHARD
        verdicts = calls.pivot(on="judge", index=["shard_id", "request_id", "attempt"], values="verdict")
        rows = judged.join(verdicts, on=["shard_id", "request_id", "attempt"])
        assert rows.height == PER_SHARD
        for r in rows.iter_rows(named=True):
            truth = "correct" if r["exact_match"] == 1.0 else "incorrect"
            assert r["honest"] == truth
            assert r["contrarian"] == ("incorrect" if truth == "correct" else "correct")
            # honest and contrarian cancel out: the flaky judge decides, or nobody does
            expected = truth if r["flaky"] == truth else "undecided"
            assert r["panel_verdict"] == expected, r


def test_judge_faults_are_counted_not_dropped(flow_run: Path) -> None:
    calls = pl.concat([_calls(flow_run, e) for e in ("big", "small")])
    flaky = calls.filter(pl.col("judge") == "flaky")
    assert flaky.height == 2 * PER_SHARD  # every sampled request was sent, whatever became of it
    timeouts = flaky.filter(pl.col("error_kind") == "timeout").height
    unparseable = flaky.filter(pl.col("verdict") == "unparseable").height
    valid = flaky.filter(pl.col("verdict").is_in(["correct", "incorrect"])).height
    assert timeouts > 0 and unparseable > 0
    assert timeouts + unparseable + valid == flaky.height
    assert flaky.filter(pl.col("verdict") == "error").height == timeouts
    outcome = json.loads((flow_run / "evaluation" / "big" / "outcome.json").read_text())
    assert outcome["status"] == "ok"
    big_flaky = _calls(flow_run, "big").filter(pl.col("judge") == "flaky")
    assert outcome["judge_errors"] == big_flaky.filter(~pl.col("ok")).height
    assert outcome["unparseable"] == big_flaky.filter(pl.col("verdict") == "unparseable").height
    # Every judge call is billed like a request: tokens at the judge's token prices.
    ok = calls.filter(pl.col("ok"))
    assert (ok["input_tokens"] > 0).all() and (ok["cost_usd"] > 0).all()
    assert outcome["judge_cost_usd"] == pytest.approx(_calls(flow_run, "big")["cost_usd"].sum())


def test_report_shows_quality_and_judge_cost_and_the_recommendation_says_why(flow_run: Path) -> None:
    md = (flow_run / "report.md").read_text()
    assert "## Answer quality" in md and "Missing evaluations" not in md
    assert "Judges: correct [95% CI]" in md and "Pairwise agreement" in md
    assert "judge honest (evaluation)" in md and "judge flaky (evaluation)" in md
    # small is 40x cheaper but answers about half the questions: not eligible at min accuracy 0.75
    assert "big at concurrency 4 meets every SLO" in md
    assert "Not eligible because it answers below the minimum accuracy of 75%: small (accuracy" in md
    assert "answer accuracy (see Answer quality)" in md
    html = (flow_run / "report.html").read_text()
    assert "fig-quality_vs_cost" in html


def _kept_answers_run(tmp: Path, name: str, requests: int) -> Path:
    """A finished run ``r1`` without evaluation that kept its answers (`fmbench evaluate` evaluates it)."""
    raw = _config(tmp, evaluation=None, name=name)
    for e in raw["experiments"]:
        e["store_text"] = True
        e["requests_per_level"] = requests
    return Path(run_benchmark(parse_config(raw, source=name, base_dir=tmp), run_id="r1")).parent


def test_fmbench_evaluate_on_a_finished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _kept_answers_run(tmp_path, "later", 30)
    assert not (run / "evaluation").exists()
    assert "## Answer quality" not in (run / "report.md").read_text()
    evaluation = {"judges": [PANEL[0]], "evaluate_per_shard": 10}
    other = _write(tmp_path, _config(tmp_path, evaluation=evaluation, min_accuracy=0.75, name="later"), "eval")
    with hold_run(str(run.resolve()), "r1"):  # the run is being resumed (or evaluated) by another process
        assert main(["evaluate", str(run), "--config", str(other)]) == 2
        assert "fmbench: error: run r1 is in progress (pid " in capsys.readouterr().err
    assert not (run / "evaluation").exists()  # it wrote nothing
    assert main(["evaluate", str(run), "--config", str(other)]) == 0
    out = capsys.readouterr().out
    assert "big: 30 answers scored, 10 judged, 0 judge errors, 0 unparseable verdicts" in out
    md = (run / "report.md").read_text()
    assert "## Answer quality" in md and "Not eligible because it answers below the minimum accuracy" in md
    calls = run / "evaluation" / "big" / "judge_calls.parquet"
    before = calls.stat().st_mtime_ns
    # Evaluating again with the same settings reuses the evaluation; `fmbench report` keeps showing it.
    assert main(["evaluate", str(run), "--config", str(other), "--no-png"]) == 0
    assert calls.stat().st_mtime_ns == before
    assert "PNG export skipped (--no-png)" in (run / "report.md").read_text()
    assert main(["report", str(run), "--no-png"]) == 0
    assert "## Answer quality" in (run / "report.md").read_text()


def test_an_evaluation_with_other_settings_that_comes_out_incomplete_keeps_the_complete_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _kept_answers_run(tmp_path, "keep", 10)
    good = _write(tmp_path, _config(tmp_path, evaluation={"judges": [PANEL[0]], "evaluate_per_shard": 5},
                                    name="keep"), "good")
    assert main(["evaluate", str(run), "--config", str(good), "--no-png"]) == 0
    files = {p.relative_to(run): p.read_bytes() for p in (run / "evaluation").rglob("*") if p.is_file()}
    assert run.joinpath("evaluation", "big", "judge_calls.parquet") in [run / f for f in files]
    capsys.readouterr()

    # Other settings whose judge cannot be reached: paid calls of the complete evaluation are not lost.
    dead = {"name": "gone", "endpoint": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}}
    assert main(["evaluate", str(run), "--set", f"evaluation={json.dumps({'judges': [dead]})}", "--no-png"]) == 1
    captured = capsys.readouterr()
    assert "big: " in captured.out and "missing: gone: not deployed" in captured.out
    assert "the earlier, complete evaluation of the run is kept" in captured.err
    assert {p.relative_to(run): p.read_bytes() for p in (run / "evaluation").rglob("*") if p.is_file()} == files
    [attempt] = list((run / "evaluation-attempts").iterdir())  # the incomplete one, for a look
    assert json.loads((attempt / "evaluation" / "big" / "outcome.json").read_text())["status"] == "partial"
    assert not [p for p in (run / "evaluation-previous").rglob("*") if p.is_file()]
    md = (run / "report.md").read_text()
    assert "## Answer quality" in md and "Missing evaluations" not in md  # the complete one, as before

    # Other settings that come out complete replace it.
    other = _write(tmp_path, _config(tmp_path, evaluation={"judges": [PANEL[0]], "evaluate_per_shard": 3},
                                     name="keep"), "other")
    assert main(["evaluate", str(run), "--config", str(other), "--no-png"]) == 0
    assert "3 judged" in capsys.readouterr().out
    assert _calls(run, "big").height == 3  # (its one shard: 3 answers judged by one judge)
    assert not [p for p in (run / "evaluation-previous").rglob("*") if p.is_file()]


def test_failing_judges_still_give_a_report_that_names_what_is_missing(tmp_path: Path) -> None:
    run = _kept_answers_run(tmp_path, "nojudge", 10)
    dead = {"name": "gone", "endpoint": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}}
    assert main(["evaluate", str(run), "--set", f"evaluation={json.dumps({'judges': [dead]})}", "--no-png"]) == 1
    md = (run / "report.md").read_text()
    assert "Missing evaluations" in md and "big: judge gone: not deployed" in md
    # Reference-answer scores do not need the judges.
    assert _scores(run, "big").height == 10


def test_the_override_evaluate_suggests_for_a_run_without_evaluation_works(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _kept_answers_run(tmp_path, "hint", 6)
    assert main(["evaluate", str(run)]) == 2
    hint = re.search(r"--set (\S+)", capsys.readouterr().err)
    assert hint is not None
    assert main(["evaluate", str(run), "--set", hint.group(1), "--no-png"]) == 0, capsys.readouterr().err
    assert "big: 6 answers scored, 0 judged" in capsys.readouterr().out
    assert _scores(run, "big").height == 6


def test_evaluate_refuses_a_bad_judge_template_before_deploying_a_judge(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _kept_answers_run(tmp_path, "badtemplate", 4)
    (tmp_path / "judge.txt").write_text("Judge {question} {nope} {candidate}")
    evaluation = {"judges": [PANEL[0]], "judge_prompt": "judge.txt"}
    other = _write(tmp_path, _config(tmp_path, evaluation=evaluation, name="badtemplate"), "eval")
    capsys.readouterr()  # the run's own log lines
    assert main(["evaluate", str(run), "--config", str(other), "--no-png"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"fmbench: error: {other}: evaluation.judge_prompt ({tmp_path / 'judge.txt'}): "
                                "unknown template field(s) nope"), errors
    assert not (run / "evaluation").exists()  # no judge deployed, nothing written


def test_evaluate_refuses_a_run_without_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _config(tmp_path, evaluation=None, name="notext")
    for e in raw["experiments"]:
        e["requests_per_level"] = 4
    run = Path(run_benchmark(parse_config(raw, source="notext", base_dir=tmp_path), run_id="r1")).parent
    assert main(["evaluate", str(run), "--set", "evaluation={}"]) == 2
    assert "kept no answer text (store_text was off)" in capsys.readouterr().err


def test_an_incomplete_evaluation_is_redone_and_a_complete_one_reused(tmp_path: Path) -> None:
    import socket

    from fmbench.config import SimulatedEndpoint
    from fmbench.simulator.process import SimulatedServerProcess

    with socket.socket() as s:  # a port where nothing listens yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = {"name": "later", "endpoint": {"provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                                           "model": "fmbench-sim"},
             "inference": {"max_tokens": 64, "stream": False, "timeout_s": 10}}
    raw = _config(tmp_path, evaluation={"judges": [judge], "evaluate_per_shard": 5}, name="resume")
    for e in raw["experiments"]:
        e["requests_per_level"] = 8
    run = Path(run_benchmark(parse_config(raw, source="resume", base_dir=tmp_path), run_id="r1")).parent
    first = json.loads((run / "evaluation" / "big" / "outcome.json").read_text())
    assert first["status"] == "partial" and first["missing"][0].startswith("later: not deployed")
    assert "big: judge later: not deployed" in (run / "report.md").read_text()
    with SimulatedServerProcess(SimulatedEndpoint(provider="simulated", seed=5), port=port):
        assert main(["evaluate", str(run)]) == 0  # the run's own settings; the judge is up now
    again = json.loads((run / "evaluation" / "big" / "outcome.json").read_text())
    assert again["status"] == "ok" and again["judged"] == 5 and again["judge_errors"] == 0
    calls = _calls(run, "big")
    assert calls.height == 5 and calls["verdict"].is_in(["correct", "incorrect"]).all()
    assert "Missing evaluations" not in (run / "report.md").read_text()


def test_an_evaluation_is_redone_when_the_run_has_answers_it_did_not_score(tmp_path: Path) -> None:
    """A resumed run that measures more shards writes more answers to requests.parquet. An earlier
    complete evaluation with the same settings stood for them before, so they were never scored."""
    from fmbench.quality.evaluate import evaluate_experiment
    from fmbench.rundir import RunInfo

    raw = _config(tmp_path, evaluation={"judges": [PANEL[0]], "evaluate_per_shard": 5}, name="grown")
    raw["experiments"] = raw["experiments"][:1]
    raw["experiments"][0]["requests_per_level"] = 40
    cfg = parse_config(raw, source="grown", base_dir=tmp_path)
    run_dir = Path(run_benchmark(cfg, run_id="r1")).parent
    assert json.loads((run_dir / "evaluation" / "big" / "outcome.json").read_text())["scored"] == 40
    full = pl.read_parquet(run_dir / "requests.parquet")
    # As the run stood before its resume: half of the answers.
    full.filter(pl.col("request_id") < 20).write_parquet(run_dir / "requests.parquet")
    shutil.rmtree(run_dir / "evaluation")
    run = RunInfo(name="grown", run_id="r1", url=str(run_dir), scratch=str(run_dir), resumed=True)
    half = evaluate_experiment(run, cfg, "big")
    assert (half.status, half.scored, half.cached) == ("ok", 20, False)
    assert evaluate_experiment(run, cfg, "big").cached  # nothing new: reused
    full.write_parquet(run_dir / "requests.parquet")  # what the resumed run's finalize writes
    again = evaluate_experiment(run, cfg, "big")
    assert (again.status, again.scored, again.cached) == ("ok", 40, False)
    assert _scores(run_dir, "big").height == 40


def test_a_stored_judge_ca_bundle_resolves_where_the_runs_config_was(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """config.yml keeps a judge's ``ca_bundle`` as written (relative to the config); `fmbench evaluate`
    run from elsewhere, long after, must still trust that judge's private CA through it."""
    import socket

    from fmbench.config import SimulatedEndpoint
    from fmbench.simulator.certs import self_signed
    from fmbench.simulator.process import SimulatedServerProcess

    cert, key = self_signed(tmp_path / "tls")
    with socket.socket() as s:  # a port where nothing listens yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = {"name": "private", "endpoint": {"provider": "openai", "base_url": f"https://127.0.0.1:{port}/v1",
                                             "model": "fmbench-sim", "ca_bundle": "tls/cert.pem"},
             "inference": {"max_tokens": 64, "stream": False, "timeout_s": 10}}
    raw = _config(tmp_path, evaluation={"judges": [judge], "evaluate_per_shard": 5}, name="private-ca")
    for e in raw["experiments"]:
        e["requests_per_level"] = 8
    run = Path(run_benchmark(parse_config(raw, source="private-ca", base_dir=tmp_path), run_id="r1")).parent
    assert yaml.safe_load((run / "config.yml").read_text())["evaluation"]["judges"][0]["endpoint"][
        "ca_bundle"] == "tls/cert.pem"
    assert json.loads((run / "manifest.json").read_text())["config_dir"] == str(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where tls/cert.pem is not
    with SimulatedServerProcess(SimulatedEndpoint(provider="simulated", seed=5), port=port,
                                extra_args=["--tls-cert", str(cert), "--tls-key", str(key)]):
        assert main(["evaluate", str(run), "--no-png"]) == 0
        outcome = json.loads((run / "evaluation" / "big" / "outcome.json").read_text())
        assert outcome["status"] == "ok" and outcome["judged"] == 5 and outcome["judge_errors"] == 0
        # Another config's evaluation: its relative ca_bundle is relative to that config, not to the run.
        other_dir = tmp_path / "other"
        (other_dir / "certs").mkdir(parents=True)
        (other_dir / "certs" / "ca.pem").write_bytes(cert.read_bytes())
        judge2 = {**judge, "name": "other", "endpoint": {**judge["endpoint"], "ca_bundle": "certs/ca.pem"}}
        other = _write(other_dir, _config(other_dir, evaluation={"judges": [judge2], "evaluate_per_shard": 5},
                                          name="private-ca"), "eval")
        assert main(["evaluate", str(run), "--config", str(other), "--no-png"]) == 0
    calls = _calls(run, "big")
    assert calls.filter(pl.col("judge") == "other").height == 5
    assert calls.filter(pl.col("judge") == "other")["verdict"].is_in(["correct", "incorrect"]).all()


def test_an_experiment_with_its_own_tokenizer_is_scored_against_its_own_prompts(tmp_path: Path) -> None:
    """Prompts counted in an experiment's own tokenizer are stored as their own prompt set
    (dataset@tokenizer); its evaluation must find their reference answers there."""
    from tests.datasets.test_experiment_tokenizer import write_words_tokenizer

    write_words_tokenizer(tmp_path / "words.json")
    raw = _config(tmp_path, evaluation={"judges": [PANEL[0]], "evaluate_per_shard": 5}, name="tok")
    for e in raw["experiments"]:
        e["requests_per_level"] = 30
        e["tokenizer"] = "words.json"
    run = Path(run_benchmark(parse_config(raw, source="tok", base_dir=tmp_path), run_id="r1")).parent
    assert all("@" in p.name for p in (run / "prompts").iterdir())
    for experiment in ("big", "small"):
        scores = _scores(run, experiment)
        assert scores.height == 30 and scores["has_reference"].all(), experiment
        assert int(scores["exact_match"].sum()) > 0


def test_judge_calls_stop_with_the_run_and_keep_nothing(tmp_path: Path) -> None:
    """A run that stops while its judges answer (interrupted: its judges are about to be deleted)
    cancels the judge calls first and keeps nothing of that evaluation: calls failed by the teardown
    would otherwise count as the judge's errors in an evaluation kept as complete."""
    import threading

    from fmbench.config import EvaluationConfig
    from fmbench.deploy import DeployedEndpoint
    from fmbench.errors import EvaluationError
    from fmbench.interrupts import StopScope, stop_scope
    from fmbench.quality.evaluate import JudgePanel, _Item, _run_judge
    from tests.support.fake_openai import FakeOpenAI

    srv = FakeOpenAI().start()
    try:
        judge = {"name": "slow", "endpoint": {"provider": "openai", "base_url": srv.url, "model": "hang"},
                 "inference": {"max_tokens": 8, "stream": False, "timeout_s": 600}}
        ev = EvaluationConfig.model_validate({"judges": [judge], "concurrency": 2})
        panel = JudgePanel(deployed={"slow": DeployedEndpoint(experiment="judge-slow", provider="openai")})
        sample = [_Item("qa", "1-200", "s", i, 1, f"q{i}", f"Question {i}?", (f"Answer {i}",), f"Answer {i}")
                  for i in range(4)]
        scope, box = StopScope(), {}

        def evaluate() -> None:
            with stop_scope(scope):
                try:
                    box["rows"] = _run_judge(panel, ev, "big", ev.judges[0], "{question} {references} {candidate}", sample)
                except BaseException as exc:  # noqa: BLE001 - handed to the test
                    box["exc"] = exc

        thread = threading.Thread(target=evaluate, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while len(srv.stats()["arrivals"]) < 2:  # the judge holds the calls in flight
            assert time.monotonic() < deadline and thread.is_alive(), box
            time.sleep(0.05)
        assert scope.stop(wait_s=120) == 1
        thread.join(60)
    finally:
        srv.stop()
    assert isinstance(box.get("exc"), EvaluationError) and "stopped with the run" in str(box["exc"]), box
