"""A judge endpoint the run deploys (SageMaker on moto, the simulated endpoint behind its runtime
routes) lives like an experiment's: deployed for the evaluation, deleted after it on every path,
in the manifest's endpoint timeline, and billed from create to delete in "What this benchmark cost"."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from fmbench.config import parse_config
from fmbench.deploy.sagemaker import resource_name
from fmbench.pipeline import run_benchmark
from tests.support.sagemaker import EMPTY, INSTANCE, ROLE, TGI_IMAGE, sm_inventory

#: One instance-hour of the judge; high, so that seconds of it cost whole cents in the report.
HOURLY_USD = 3600.0


def _config(tmp_path: Path, moto: str, sim_url: str, name: str) -> dict[str, Any]:
    with (tmp_path / "qa.jsonl").open("w") as fh:
        for i in range(6):
            fh.write(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?", "answer": f"Answer {i}"}) + "\n")
    judge = {"name": "sm", "inference": {"max_tokens": 8, "stream": False, "timeout_s": 10},
             "pricing": {"hourly_usd": HOURLY_USD},
             "endpoint": {"provider": "sagemaker", "region": "us-east-1", "endpoint_url": moto,
                          "runtime_endpoint_url": sim_url, "image_uri": TGI_IMAGE, "instance_type": INSTANCE,
                          "role_arn": ROLE, "payload": "tgi"}}
    return {
        "name": name, "output": str(tmp_path / "results"), "buckets": [[1, 200]],
        "datasets": [{"name": "qa", "source": "jsonl", "path": "qa.jsonl", "answer_field": "answer"}],
        "experiments": [{"name": "model", "concurrency_levels": [2], "requests_per_level": 6, "warmup_requests": 0,
                         "endpoint": {"provider": "simulated", "ttft_ms": 2, "tpot_ms": 0.5, "answer_accuracy": 0.5,
                                      "seed": 1}}],
        "evaluation": {"judges": [judge], "evaluate_per_shard": 3},
    }


def _t(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


def _cost_line(md: str, label: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.startswith(f"| {label} |") and "create to delete" in ln]
    assert len(lines) == 1, md
    return lines[0]


def test_a_deployed_judge_is_in_the_timeline_deleted_and_billed_create_to_delete(
    moto: str, sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    raw = _config(tmp_path, moto, sim_url, "judged")
    with caplog.at_level(logging.INFO, logger="fmbench"):
        run = Path(run_benchmark(parse_config(raw, source="judged", base_dir=tmp_path), run_id="j1",
                                 png=False)).parent
    # The run names the judge as the config does, not by its endpoint's name (judge-sm).
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("judge sm: deleted ") for m in said), said
    assert not any("experiment judge-sm" in m for m in said), said

    assert sm_inventory(moto) == EMPTY
    manifest = json.loads((run / "manifest.json").read_text())
    t = manifest["endpoints"]["judge-sm"]
    assert t["judge"] == "sm" and t["provider"] == "sagemaker" and t["delete_error"] is None
    assert t["endpoint_name"] == resource_name("judge-sm", "j1") and t["instance_type"] == INSTANCE
    assert _t(t["created_at"]) <= _t(t["in_service_at"]) <= _t(t["first_shard_at"])
    assert _t(t["first_shard_at"]) <= _t(t["last_shard_at"]) <= _t(t["deleted_at"])
    # The judge was asked after the experiment's endpoint was gone (judging never loads a measurement).
    assert _t(manifest["endpoints"]["model"]["deleted_at"]) <= _t(t["first_shard_at"])
    outcome = json.loads((run / "evaluation" / "model" / "outcome.json").read_text())
    assert outcome["status"] == "ok" and outcome["judge_calls"] == 3

    md = (run / "report.md").read_text()
    hours = (_t(t["deleted_at"]) - _t(t["created_at"])).total_seconds() / 3600.0
    line = _cost_line(md, "judge sm (evaluation)")
    # Billed from create to delete at the judge's price, its 3 calls not billed a second time. The
    # report sums its parts (deploying + measuring + idle) in another float order than this test, so
    # a bill on a half cent may round either way: the dollars are read back and compared to the cent.
    cells = [c.strip() for c in line.split("|")]  # experiment, requests, 3 phases, instance-hours, cost, basis
    assert cells[2] == "3", line
    assert float(cells[6]) == pytest.approx(hours, rel=0.05), line  # (two significant digits below 0.001 h)
    billed = float(cells[7].removeprefix("$").replace(",", ""))
    assert abs(billed - hours * HOURLY_USD) <= 0.005 + 1e-9, (billed, hours * HOURLY_USD)
    assert "deployed for the evaluation" in line
    # In the endpoint timeline too, under the same label.
    assert any(ln.startswith("| judge sm (evaluation) |") and t["endpoint_name"] in ln for ln in md.splitlines())

    # A judge whose endpoint fails to come up: nothing is left behind, the report says what is missing.
    from moto.sagemaker import models

    original = models.FakeEndpoint.__init__

    def failing(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if "judge-sm" in self.endpoint_name:
            self.endpoint_status, self.failure_reason = "Failed", "the judge's container did not pass the ping"

    monkeypatch.setattr(models.FakeEndpoint, "__init__", failing)
    raw = _config(tmp_path, moto, sim_url, "nojudge")
    run = Path(run_benchmark(parse_config(raw, source="nojudge", base_dir=tmp_path), run_id="j2",
                                  png=False)).parent

    assert sm_inventory(moto) == EMPTY
    t = json.loads((run / "manifest.json").read_text())["endpoints"]["judge-sm"]
    assert t["in_service_at"] is None and t["deleted_at"] is not None
    md = (run / "report.md").read_text()
    assert "Missing evaluations" in md and "model: judge sm: not deployed" in md and "ping" in md
    outcome = json.loads((run / "evaluation" / "model" / "outcome.json").read_text())
    assert outcome["status"] == "partial" and outcome["scored"] == 6
