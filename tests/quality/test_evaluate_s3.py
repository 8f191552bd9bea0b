"""`fmbench evaluate` on a run stored in S3 (moto) whose judge template is a path relative to its
config file: the run keeps the template, so evaluating it again needs not the config's directory;
a template of another config (``--config``) is found relative to that config, from any directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main
from fmbench import storage
from fmbench.config import load_config
from fmbench.pipeline import run_benchmark

pytestmark = pytest.mark.integration

SIM = {"provider": "simulated", "ttft_ms": 1, "tpot_ms": 0.2}
TEMPLATE = ("Grade it.\n<question>\n{question}\n</question>\n<reference>\n{references}\n</reference>\n"
            "<candidate>\n{candidate}\n</candidate>\nEnd with VERDICT: CORRECT or VERDICT: INCORRECT\n")


def _config(cfg_dir: Path, output: str, template: str) -> dict[str, Any]:
    return {
        "name": "s3eval", "output": output, "buckets": [[1, 200]],
        "datasets": [{"name": "qa", "source": "jsonl", "path": "qa.jsonl", "answer_field": "answer"}],
        "experiments": [{"name": "model", "concurrency_levels": [2], "requests_per_level": 8, "warmup_requests": 0,
                         "endpoint": {**SIM, "answer_accuracy": 0.5, "seed": 1}}],
        "evaluation": {"judge_prompt": template, "evaluate_per_shard": 3,
                       "judges": [{"name": "sim", "endpoint": {**SIM, "seed": 7},
                                   "inference": {"max_tokens": 32, "stream": False, "timeout_s": 10}}]},
    }


def _calls(run: str) -> list[dict[str, Any]]:
    return storage.read_parquet(storage.join(run, "evaluation", "model", "judge_calls.parquet")).to_dicts()


def test_evaluate_an_s3_run_whose_judge_template_is_relative_to_its_config(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_png: None,
) -> None:
    cfg_dir = tmp_path / "configs"
    (cfg_dir / "prompts").mkdir(parents=True)
    with (cfg_dir / "qa.jsonl").open("w") as fh:
        for i in range(8):
            fh.write(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?", "answer": f"Answer {i}"}) + "\n")
    (cfg_dir / "prompts" / "judge.txt").write_text(TEMPLATE)
    (cfg_dir / "prompts" / "other.txt").write_text("Second template.\n" + TEMPLATE)
    (cfg_dir / "bench.yml").write_text(yaml.safe_dump(_config(cfg_dir, f"{s3_bucket}/results", "prompts/judge.txt")))
    (cfg_dir / "other.yml").write_text(yaml.safe_dump(_config(cfg_dir, f"{s3_bucket}/results", "prompts/other.txt")))
    report = run_benchmark(load_config(cfg_dir / "bench.yml"), run_id="r1", png=False)
    run = report.rsplit("/", 1)[0]
    assert run.startswith("s3://")
    kept = storage.join(run, "evaluation", "judge_prompt.txt")
    assert storage.read_text(kept) == TEMPLATE

    # From another directory, with the run's own settings changed: its kept template is used.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", run, "--set", "evaluation.evaluate_per_shard=5", "--no-png"]) == 0
    calls = _calls(run)
    assert len(calls) == 5 and all(c["verdict"] in ("correct", "incorrect") for c in calls)
    assert storage.read_text(kept) == TEMPLATE

    # Another config's template, given relative to that config (the config itself relative to the cwd).
    assert main(["evaluate", run, "--config", "../configs/other.yml", "--no-png"]) == 0
    assert storage.read_text(kept).startswith("Second template.")
    calls = _calls(run)
    assert len(calls) == 3 and all(c["verdict"] in ("correct", "incorrect") for c in calls)
    assert "## Answer quality" in storage.read_text(storage.join(run, "report.md"))
