"""A whole benchmark run (no Prefect) over SageMaker and Bedrock experiments: deploy on moto's
control plane, requests through boto3 to the simulated AWS routes, teardown, report, and the
CloudWatch collection of a shard window."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import boto3
import polars as pl

from fmbench.config import parse_config


def test_benchmark_run_deploys_measures_and_tears_down(moto: str, sim_url: str, tmp_path: Path) -> None:
    from fmbench.pipeline import run_benchmark

    cfg = parse_config(
        {
            "name": "aws-flow",
            "output": str(tmp_path / "results"),
            "buckets": [[1, 200], [200, 400]],
            "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 4}],
            "experiments": [
                {
                    "name": "sm-tgi",
                    "endpoint": {
                        "provider": "sagemaker", "region": "us-east-1", "endpoint_url": moto,
                        "runtime_endpoint_url": sim_url,
                        "image_uri": "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4.0",
                        "hf_model_id": "Qwen/Qwen2.5-7B-Instruct", "instance_type": "ml.g4dn.xlarge",
                        "role_arn": "arn:aws:iam::123456789012:role/r", "payload": "tgi",
                        "cloudwatch_metrics": True, "cloudwatch_delay_s": 0,
                    },
                    "inference": {"max_tokens": 6},
                    "concurrency_levels": [1, 2],
                    "requests_per_level": 4,
                    "warmup_requests": 1,
                    "pricing": {"instance_type": "ml.g4dn.xlarge"},
                },
                {
                    "name": "br-claude",
                    "endpoint": {"provider": "bedrock", "region": "us-east-1", "runtime_endpoint_url": sim_url,
                                 "model_id": "us.anthropic.claude-3-5-haiku-20241022-v1:0"},
                    "inference": {"max_tokens": 6},
                    "concurrency_levels": [1, 2],
                    "requests_per_level": 4,
                    "warmup_requests": 1,
                    "pricing": {"input_per_1k_usd": 0.0008, "output_per_1k_usd": 0.004},
                },
            ],
        },
        source="aws-flow",
        base_dir=tmp_path,
    )
    report = run_benchmark(cfg, run_id="flow-run")
    assert Path(report).is_file()

    sm = boto3.client("sagemaker", endpoint_url=moto, region_name="us-east-1")
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []

    requests = pl.read_parquet(next((tmp_path / "results").rglob("requests.parquet")))
    measured = requests.filter(~pl.col("warmup"))
    assert set(measured["experiment"].unique()) == {"sm-tgi", "br-claude"}
    assert measured["ok"].all(), measured.filter(~pl.col("ok"))["error"].to_list()
    assert measured.height == 2 * 2 * 2 * 4  # experiments x buckets x levels x requests
    assert (measured["output_tokens"] == 6).all() and (measured["chunks"] == 6).all()
    assert (measured["ttft_s"] >= 0.06 * 0.98).all()

    # The run collected CloudWatch metrics per SageMaker shard; moto publishes none: all absent.
    run_dir = Path(report).parent
    cw = pl.read_parquet(run_dir / "cloudwatch.parquet")
    assert set(cw["shard_id"].unique()) == {s for s in measured["shard_id"].unique() if s.startswith("sm-tgi")}
    assert cw["sum"].is_null().all()
    md = (run_dir / "report.md").read_text()
    assert "## Endpoint metrics (CloudWatch)" in md and "| absent |" in md

    # With datapoints in a shard's window, the report shows them beside the client's numbers.
    import json

    from fmbench.deploy.cloudwatch import collect_run_metrics
    from fmbench.report import render_report

    shards = [s for s in json.loads((run_dir / "manifest.json").read_text())["shards"]
              if s["experiment"] == "sm-tgi"]
    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto, region_name="us-east-1")
    dims = [{"Name": "EndpointName", "Value": shards[0]["endpoint_name"]}, {"Name": "VariantName", "Value": "AllTraffic"}]
    when = dt.datetime.fromisoformat(shards[0]["started_at"])
    cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=[
        {"MetricName": "ModelLatency", "Dimensions": dims, "Timestamp": when, "Value": 61000.0, "Unit": "Microseconds"},
        {"MetricName": "Invocations", "Dimensions": dims, "Timestamp": when, "Value": 5.0, "Unit": "Count"},
    ])
    rows = collect_run_metrics(parse_config({**cfg.model_dump(mode="json")}, source="x"), shards)
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(run_dir / "cloudwatch.parquet")
    render_report(str(run_dir))
    md = (run_dir / "report.md").read_text()
    assert "| 61.0 |" in md  # ModelLatency average, ms


def test_prefect_flow_over_sagemaker_image_jumpstart_and_bedrock(prefect_harness: None, moto: str, sim_url: str,
                                                                 jumpstart_local: None, tmp_path: Path) -> None:
    """The real `fmbench` flow: two SageMaker deploys (container image, JumpStart) and Bedrock
    Converse streamed and not; teardown leaves nothing behind."""
    import yaml

    from flows.benchmark import benchmark
    from tests.support.sagemaker import JS_MODEL

    common = {"region": "us-east-1", "endpoint_url": moto, "runtime_endpoint_url": sim_url,
              "role_arn": "arn:aws:iam::123456789012:role/r", "instance_type": "ml.g4dn.xlarge"}
    bedrock = {"provider": "bedrock", "region": "us-east-1", "runtime_endpoint_url": sim_url,
               "model_id": "meta.llama3-8b-instruct-v1:0"}
    level = {"concurrency_levels": [2], "requests_per_level": 3, "warmup_requests": 0}
    cfg = {
        "name": "aws-prefect",
        "output": str(tmp_path / "results"),
        "buckets": [[1, 300]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 3}],
        "experiments": [
            {"name": "sm-image", "inference": {"max_tokens": 5}, **level,
             "endpoint": {"provider": "sagemaker", "payload": "messages", **common,
                          "image_uri": "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.31.0-lmi13.0.0-cu124",
                          "hf_model_id": "meta-llama/Meta-Llama-3-8B-Instruct"}},
            {"name": "sm-jumpstart", "inference": {"max_tokens": 5}, **level,
             "endpoint": {"provider": "sagemaker", "payload": "tgi", "jumpstart_model_id": JS_MODEL,
                          "accept_eula": True, **common}},
            {"name": "br-stream", "inference": {"max_tokens": 5, "stream": True}, "endpoint": bedrock, **level},
            {"name": "br-once", "inference": {"max_tokens": 5, "stream": False}, "endpoint": bedrock, **level},
        ],
    }
    report = benchmark(config=yaml.safe_dump(cfg), run_id="prefect-aws")
    assert Path(report).is_file()
    sm = boto3.client("sagemaker", endpoint_url=moto, region_name="us-east-1")
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    requests = pl.read_parquet(Path(report).parent / "requests.parquet")
    assert requests.height == 4 * 3
    assert requests["ok"].all(), requests.filter(~pl.col("ok"))["error"].to_list()
    assert (requests["output_tokens"] == 5).all()
    # TGI's token stream counts the generated tokens but not the prompt's (counted with the tokenizer);
    # the others report both.
    by_source = dict(requests.group_by("experiment").agg(pl.col("usage_source").unique()).iter_rows())
    assert by_source == {"sm-image": ["server"], "sm-jumpstart": ["server_output"], "br-stream": ["server"],
                         "br-once": ["server"]}
    streamed = requests.filter(pl.col("experiment") != "br-once")
    assert (streamed["chunks"] == 5).all() and (streamed["ttft_s"] < streamed["latency_s"]).all()
    once = requests.filter(pl.col("experiment") == "br-once")
    assert (once["ttft_s"] == once["latency_s"]).all()
    metrics = pl.read_parquet(Path(report).parent / "metrics.parquet")
    assert sorted(metrics["experiment"].to_list()) == ["br-once", "br-stream", "sm-image", "sm-jumpstart"]
