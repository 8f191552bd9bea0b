"""A table of bad inputs through the real `fmbench` command line: each ends with exactly one line
``fmbench: error: ...`` naming the cause and where, the exit code of its cause (2: the config, a
dataset, a tokenizer or the command line; 3: an endpoint, credentials or storage), no traceback,
and nothing written.

The cases run as subprocesses, several at a time. Most fail in `validate` or in `run`'s preflight
(before Prefect starts), so the table stays fast; the CLI's own argument errors come from argparse.
"""

from __future__ import annotations

import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fmbench.config import SimulatedEndpoint
from fmbench.errors import (
    ConfigError,
    CredentialsError,
    DatasetError,
    EndpointError,
    ExitCode,
    FMBenchError,
    StorageError,
    TokenizerError,
)
from fmbench.simulator.process import SimulatedServerProcess
from tests.support.cli import ROOT, fmbench_argv

GOOD = """\
name: bad
output: {out}
buckets: [[1, 100]]
datasets:
  - {{name: syn, source: synthetic, prompts_per_bucket: 2}}
experiments:
  - name: e
    endpoint: {{provider: simulated, ttft_ms: 5, tpot_ms: 1, output_tokens: 4}}
    inference: {{max_tokens: 4}}
    concurrency_levels: [1]
    requests_per_level: 2
    warmup_requests: 0
"""
SYN = "{{name: syn, source: synthetic, prompts_per_bucket: 2}}"
SIM = "{{provider: simulated, ttft_ms: 5, tpot_ms: 1, output_tokens: 4}}"

# A tokenizer.json that loads but cannot encode: its WordLevel model's unknown-word token is not in its vocabulary.
EMPTY_VOCAB = (b'{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null, '
               b'"pre_tokenizer": null, "post_processor": null, "decoder": null, '
               b'"model": {"type": "WordLevel", "vocab": {}, "unk_token": "[UNK]"}}')


@dataclass
class Ctx:
    tmp: Path
    sim_url: str
    odd_url: str
    moto_url: str
    closed_port: int


@dataclass
class Case:
    """One bad input: the command, a config text (or None for a missing file), what the error says."""

    name: str
    command: str
    expect: str
    config: str | None = GOOD
    extra: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # more files beside the config
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] | None = None  # the whole command line (CLI argument cases)
    category: str = "config"


def _jsonl(name: str, path: str = "d.jsonl", extra: str = "") -> str:
    return GOOD.replace(SYN, f"{{{{name: {name}, source: jsonl, path: {path}{extra}}}}}")


def _openai(url: str, model: str = "fmbench-sim") -> str:
    return GOOD.replace(SIM, f"{{{{provider: openai, base_url: '{url}', model: {model}}}}}")


AWS_KEYS = {"AWS_ACCESS_KEY_ID": "AKIAFMBENCHTEST", "AWS_SECRET_ACCESS_KEY": "s"}


def _sagemaker_deploy(control_url: str) -> str:
    return GOOD.replace(SIM, "{{provider: sagemaker, region: us-east-1, instance_type: ml.g4dn.xlarge, "
                        "image_uri: 763104351884.dkr.ecr.us-east-1.amazonaws.com/tgi:2.4.0, hf_model_id: m/m, "
                        f"role_arn: 'arn:aws:iam::123456789012:role/r', endpoint_url: '{control_url}'}}}}")


def _bedrock(extra: str = "") -> str:
    return GOOD.replace(SIM, "{{provider: bedrock, region: us-east-1, model_id: meta.llama3-8b-instruct-v1:0"
                        + extra + "}}")


def cases(c: Ctx) -> list[Case]:
    g = GOOD
    one_line = b'{"prompt": "hello there"}\n'
    return [
        # ---- config: syntax, unknown keys, types, ranges, contradictions
        Case("yaml-syntax", "validate", "invalid YAML", g + "\n  : : [\n"),
        Case("yaml-not-mapping", "validate", "cfg.yml", "- just\n- a list\n"),
        Case("empty-config", "validate", "cfg.yml", ""),
        Case("unknown-top-key", "validate", "colour: unknown key", g.replace("name: bad", "name: bad\ncolour: red")),
        Case("unknown-nested-key", "validate", "experiments[0].inference.max_token",
             g.replace("{{max_tokens: 4}}", "{{max_token: 4}}")),
        Case("wrong-type", "validate", "experiments[0].endpoint.ttft_ms", g.replace("ttft_ms: 5", "ttft_ms: soon")),
        Case("wrong-type-list", "validate", "experiments[0].concurrency_levels",
             g.replace("concurrency_levels: [1]", "concurrency_levels: one")),
        Case("max-tokens-zero", "validate", "experiments[0].inference.max_tokens",
             g.replace("{{max_tokens: 4}}", "{{max_tokens: 0}}")),
        Case("max-tokens-negative", "validate", "experiments[0].inference.max_tokens",
             g.replace("{{max_tokens: 4}}", "{{max_tokens: -5}}")),
        Case("temperature-range", "validate", "experiments[0].inference.temperature",
             g.replace("{{max_tokens: 4}}", "{{max_tokens: 4, temperature: 3}}")),
        Case("timeout-zero", "validate", "experiments[0].inference.timeout_s",
             g.replace("{{max_tokens: 4}}", "{{max_tokens: 4, timeout_s: 0}}")),
        # accepted once, then every request failed as the endpoint's error, the shard hung, $inf recommended
        Case("max-tokens-beyond-32-bits", "validate", "experiments[0].inference.max_tokens: Input should be less",
             g.replace("{{max_tokens: 4}}", "{{max_tokens: 100000000000000000000}}")),
        Case("concurrency-absurd", "validate", "experiments[0].concurrency_levels[0]: Input should be less",
             g.replace("concurrency_levels: [1]", "concurrency_levels: [2147483648]")),
        Case("experiment-datasets-empty", "validate", "experiments[0].datasets: List should have at least 1 item",
             g.replace("    inference:", "    datasets: []\n    inference:")),
        Case("pricing-infinite", "validate", "experiments[0].pricing.hourly_usd: Input should be a finite number",
             g.replace("    inference:", "    pricing: {{hourly_usd: .inf}}\n    inference:")),
        Case("synthetic-template-format-spec", "validate",
             "cfg.yml: datasets[0].prompt_template: Value error, cannot render {text} with this template: Unknown "
             "format code 'd'", g.replace(SYN, "{{name: syn, source: synthetic, prompt_template: 'Q: {{text:d}}'}}")),
        Case("synthetic-template-index", "validate", "datasets[0].prompt_template: Value error, use {text} itself",
             g.replace(SYN, "{{name: syn, source: synthetic, prompt_template: '{{text[0]}} {{text}}'}}")),
        Case("synthetic-template-other-field", "validate", "must use exactly one field, {text}",
             g.replace(SYN, "{{name: syn, source: synthetic, prompt_template: '{{foo}} {{text}}'}}")),
        Case("cli-run-id-dots", "run", "--run-id '..': give at least one letter", extra=["--run-id", ".."],
             category="cli"),
        Case("requests-zero", "validate", "experiments[0].requests_per_level",
             g.replace("requests_per_level: 2", "requests_per_level: 0")),
        Case("buckets-overlap", "validate", "overlap", g.replace("[[1, 100]]", "[[1, 100], [50, 200]]")),
        Case("bucket-inverted", "validate", "empty or inverted", g.replace("[[1, 100]]", "[[100, 1]]")),
        Case("duplicate-levels", "validate", "unique", g.replace("concurrency_levels: [1]", "concurrency_levels: [1, 1]")),
        Case("unknown-provider", "validate", "experiments[0].endpoint",
             g.replace(SIM, "{{provider: tgi, url: x}}")),
        Case("fault-rates-over-1", "validate", "fault rates add up to",
             g.replace("output_tokens: 4}}", "output_tokens: 4, faults: {{http_500_rate: 0.7, hang_rate: 0.6}}}}")),
        Case("sagemaker-contradiction", "validate", "instance_type is required",
             g.replace(SIM, "{{provider: sagemaker, image_uri: 'x.dkr.ecr.us-east-1.amazonaws.com/i:1'}}")),
        Case("missing-experiments", "validate", "experiments", g.split("experiments:")[0]),
        Case("pricing-unknown-type", "validate", "cfg.yml: experiments.e.pricing.instance_type: unknown instance type",
             g.replace("    inference:", "    pricing: {{instance_type: ml.nope.xlarge}}\n    inference:")),
        Case("pricing-count-differs", "validate",
             "cfg.yml: experiments[0]: Value error, pricing.instance_count (2) differs from endpoint.instance_count (1",
             _sagemaker_deploy("http://127.0.0.1:9").replace(
                 "    inference:", "    pricing: {{hourly_usd: 1.0, instance_count: 2}}\n    inference:")),
        Case("retries-too-many", "validate", "experiments[0].request_retries",
             g.replace("warmup_requests: 0", "warmup_requests: 0\n    request_retries: 99")),
        # ---- CLI arguments
        Case("cli-no-config", "run", "the following arguments are required: config", argv=["run"], category="cli"),
        Case("cli-unknown-command", "frobnicate", "invalid choice", argv=["frobnicate"], category="cli"),
        Case("cli-unknown-option", "run", "unrecognized arguments: --concurrency",
             extra=["--concurrency", "4"], category="cli"),
        Case("cli-set-no-equals", "validate", "--set", extra=["--set", "experiments.0.name"], category="cli"),
        Case("cli-set-bad-index", "validate", "index 9 out of range", extra=["--set", "experiments.9.name=x"],
             category="cli"),
        Case("cli-set-bad-value", "validate", "experiments[0].requests_per_level",
             extra=["--set", "experiments.0.requests_per_level=-3"], category="cli"),
        Case("cli-missing-config", "validate", "config file not found", config=None, category="cli"),
        Case("cli-config-is-dir", "validate", "cfgdir", argv=["validate", str(c.tmp / "cfgdir")], category="cli"),
        Case("cli-bad-run-id", "run", "--run-id '../up'", extra=["--run-id", "../up"], category="cli"),
        Case("cli-serve-sim-bad-port", "serve-sim", "argument --port: '99999' is not a port",
             argv=["serve-sim", "--port", "99999"], category="cli"),
        Case("serve-sim-busy-port", "serve-sim", "cannot listen on 127.0.0.1",
             argv=["serve-sim", "--port", c.sim_url.rsplit(":", 1)[1]], category="endpoint"),
        Case("cli-bad-task-runner", "run", "FMBENCH_TASK_RUNNER='ray': use threads, dask or a Dask scheduler's",
             env={"FMBENCH_TASK_RUNNER": "ray"}, category="cli"),
        Case("cli-bad-png-timeout", "run", "FMBENCH_PNG_TIMEOUT_S='soon': seconds the PNG export may take",
             env={"FMBENCH_PNG_TIMEOUT_S": "soon"}, category="cli"),
        # ---- datasets
        Case("dataset-missing-file", "run", "nope.jsonl", _jsonl("d", "nope.jsonl"), category="dataset"),
        Case("dataset-missing-file-validate", "validate", "cfg.yml: datasets[d].path: file not found: ",
             _jsonl("d", "nope.jsonl"), category="dataset"),
        Case("dataset-path-is-a-directory", "run", "datasets[d].path: a directory, not a file", _jsonl("d", "sub"),
             files={"sub/x.jsonl": b'{"prompt": "hi"}\n'}, category="dataset"),
        Case("dataset-hub-path-without-subset", "validate", "'hf:THUDM/LongBench': expected hf:ORG/REPO/SUBSET",
             GOOD.replace(SYN, "{{name: lb, source: longbench, path: 'hf:THUDM/LongBench'}}")),
        Case("dataset-hub-unreachable", "run", "dataset 'lb': hf:THUDM/LongBench/hotpotqa: THUDM/LongBench/data.zip "
             "(dataset repository on the Hugging Face hub): not in the local hub cache and the hub",
             GOOD.replace(SYN, "{{name: lb, source: longbench, path: 'hf:THUDM/LongBench/hotpotqa'}}"),
             env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{c.closed_port}",
                  "HF_HUB_CACHE": "/nonexistent/hf-cache"}, category="dataset"),
        Case("dataset-wrong-schema", "run", "no field 'prompt'", _jsonl("d"),
             files={"d.jsonl": b'{"question": "where is the prompt?"}\n'}, category="dataset"),
        Case("dataset-empty", "run", "is empty", _jsonl("d"), files={"d.jsonl": b""}, category="dataset"),
        Case("dataset-not-utf8", "run", "not UTF-8", _jsonl("d"),
             files={"d.jsonl": b'{"prompt": "caf\xe9"}\n'}, category="dataset"),
        Case("dataset-bad-json-line", "run", "line 2: not valid JSON", _jsonl("d"),
             files={"d.jsonl": one_line + b"{oops\n"}, category="dataset"),
        Case("dataset-line-nested-too-deeply", "run", "d.jsonl line 2: not valid JSON (nested too deeply", _jsonl("d"),
             files={"d.jsonl": one_line + b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"},
             category="dataset"),
        Case("dataset-prompt-not-string", "run", "expected a string", _jsonl("d"),
             files={"d.jsonl": b'{"prompt": 42}\n'}, category="dataset"),
        Case("dataset-template-missing-field", "run", "{context}", _jsonl("d", extra=", prompt_template: '{{context}}: {{prompt}}'"),
             files={"d.jsonl": one_line}, category="dataset"),
        Case("dataset-prompt-larger-than-buckets", "run", "no prompt falls in any bucket",
             _jsonl("d").replace("[[1, 100]]", "[[1, 5]]"),
             files={"d.jsonl": b'{"prompt": "' + b"many words " * 200 + b'"}\n'}, category="dataset"),
        # ---- tokenizer
        Case("tokenizer-unknown", "run", "no_such_encoding", g.replace("name: bad", "name: bad\ntokenizer: no_such_encoding"),
             category="tokenizer"),
        Case("tokenizer-bad-json", "run", "not a valid tokenizer.json",
             g.replace("name: bad", "name: bad\ntokenizer: tok/tokenizer.json"),
             files={"tok/tokenizer.json": b'{"version": "1.0", "model": 7}'}, category="tokenizer"),
        # loads, then fails on every word (a WordLevel model without its unknown-word token): refused
        # before the run directory is made, synthetic dataset or not
        Case("tokenizer-cannot-encode", "run", "cfg.yml: tokenizer: tokenizer '",
             g.replace("name: bad", "name: bad\ntokenizer: tok/tokenizer.json"),
             files={"tok/tokenizer.json": EMPTY_VOCAB}, category="tokenizer"),
        Case("tokenizer-experiment-cannot-encode", "validate", "loads but cannot encode text (WordLevel error",
             g.replace("    inference:", "    tokenizer: tok/tokenizer.json\n    inference:"),
             files={"tok/tokenizer.json": EMPTY_VOCAB}, category="tokenizer"),
        Case("tokenizer-experiment-unknown", "validate", "cfg.yml: experiments[e].tokenizer: unknown tokenizer 'cl100k'",
             g.replace("    inference:", "    tokenizer: cl100k\n    inference:"), category="tokenizer"),
        Case("tokenizer-experiment-missing-file", "validate", "experiments[e].tokenizer: tokenizer file not found: ",
             g.replace("    inference:", "    tokenizer: models/llama/tokenizer.json\n    inference:"),
             category="tokenizer"),
        Case("tokenizer-hf-offline", "run", "experiments[e].tokenizer: tokenizer 'hf:org/model': tokenizer.json is not "
             "in the Hugging Face cache", g.replace("    inference:", "    tokenizer: hf:org/model\n    inference:"),
             env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "/nonexistent/hf-cache"}, category="tokenizer"),
        Case("tokenizer-simulated-endpoint-bad-json", "run",
             "experiments[e].endpoint.tokenizer: tokenizer '",
             g.replace("output_tokens: 4}}", "output_tokens: 4, tokenizer: tok/tokenizer.json}}"),
             files={"tok/tokenizer.json": b'{"version": "1.0", "trunc'}, category="tokenizer"),
        # ---- endpoints
        Case("endpoint-unreachable", "run", "unreachable", _openai(f"http://127.0.0.1:{c.closed_port}/v1"),
             category="endpoint"),
        Case("endpoint-wrong-model", "run", "check base_url and the model name",
             _openai(f"{c.sim_url}/v1", model="no-such-model"), category="endpoint"),
        Case("endpoint-401", "run", "the API key was refused", _openai(f"{c.odd_url}/unauth/v1"), category="endpoint"),
        Case("endpoint-not-json", "run", "not OpenAI-compatible", _openai(f"{c.odd_url}/html/v1"),
             category="endpoint"),
        Case("endpoint-api-key-env-unset", "run", "FMBENCH_UNSET_KEY",
             _openai(f"{c.sim_url}/v1").replace("model: fmbench-sim", "model: fmbench-sim, api_key_env: FMBENCH_UNSET_KEY"),
             category="endpoint"),
        # ---- credentials
        Case("aws-no-credentials", "run", "no AWS credentials found", _bedrock(), category="credentials"),
        Case("aws-unknown-profile", "run", "profile 'nobody'", _bedrock(", profile: nobody"), category="credentials"),
        Case("aws-unknown-profile-from-environment", "run", "experiments[e].endpoint: AWS profile 'nope' (from the "
             "environment variable AWS_PROFILE) not found", _bedrock(), env={"AWS_PROFILE": "nope"},
             category="credentials"),
        Case("aws-expired-credentials", "run", "AWS credentials expired and could not be refreshed", _bedrock(),
             env={**AWS_KEYS, "AWS_SESSION_TOKEN": "t", "AWS_CREDENTIAL_EXPIRATION": "2020-01-01T00:00:00Z"},
             category="credentials"),
        Case("aws-expired-token", "run", "ExpiredTokenException: The security token included in the request is "
             "expired; the AWS credentials have expired", _bedrock(f", runtime_endpoint_url: '{c.odd_url}/aws/expired'"),
             env={**AWS_KEYS, "AWS_SESSION_TOKEN": "t"}, category="credentials"),
        Case("aws-invalid-credentials", "run", "AWS rejected the credentials",
             _bedrock(f", runtime_endpoint_url: '{c.odd_url}/aws/invalid-token'"), env=AWS_KEYS, category="credentials"),
        Case("bedrock-no-model-access", "run", "that access to the model is granted",
             _bedrock(f", runtime_endpoint_url: '{c.odd_url}/aws/no-model-access'"), env=AWS_KEYS, category="endpoint"),
        Case("bedrock-wrong-model", "run", "The provided model identifier is invalid.; the request was refused: "
             "check model_id", _bedrock(f", runtime_endpoint_url: '{c.odd_url}/aws/bad-model'"), env=AWS_KEYS,
             category="endpoint"),
        Case("sagemaker-deploy-expired-token", "run", "SageMaker refused a read-only call (DescribeEndpoint): "
             "ExpiredTokenException", _sagemaker_deploy(f"{c.odd_url}/aws/expired"),
             env={**AWS_KEYS, "AWS_SESSION_TOKEN": "t"}, category="credentials"),
        Case("sagemaker-deploy-secret-unset", "run", "experiments[e].endpoint.env_from.HF_TOKEN: environment "
             "variable FMB_UNSET_HF_TOKEN is not set or empty",
             _sagemaker_deploy(f"http://127.0.0.1:{c.closed_port}").replace(
                 "hf_model_id: m/m,", "hf_model_id: m/m, env_from: {{HF_TOKEN: FMB_UNSET_HF_TOKEN}},"),
             env=AWS_KEYS),
        Case("sagemaker-deploy-api-unreachable", "run", "cannot reach the SageMaker API",
             _sagemaker_deploy(f"http://127.0.0.1:{c.closed_port}"), env=AWS_KEYS, category="credentials"),
        Case("sagemaker-wrong-endpoint-name", "run", "Endpoint nosuch of account 123456789012 not found.; not found",
             GOOD.replace(SIM, "{{provider: sagemaker, region: us-east-1, endpoint_name: nosuch, "
                          f"runtime_endpoint_url: '{c.odd_url}/aws/no-endpoint'}}}}"), env=AWS_KEYS,
             category="endpoint"),
        # ---- services
        Case("prefect-api-unreachable", "run", f"PREFECT_API_URL='http://127.0.0.1:{c.closed_port}/api': "
             "cannot reach the Prefect API", env={"PREFECT_API_URL": f"http://127.0.0.1:{c.closed_port}/api"},
             category="service"),
        # ---- output
        Case("output-is-a-file", "run", "cfg.yml is not a directory",
             extra=["--output", str(c.tmp / "output-is-a-file" / "cfg.yml")], category="storage"),
        Case("output-through-a-file", "run", "cfg.yml is not a directory",
             extra=["--output", str(c.tmp / "output-through-a-file" / "cfg.yml" / "results")], category="storage"),
        Case("s3-no-bucket", "run", "s3://fmbench-no-such-bucket: not found", extra=["--output", "s3://fmbench-no-such-bucket/x"],
             env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
                  "AWS_ENDPOINT_URL_S3": c.moto_url}, category="storage"),
        Case("s3-access-denied", "run", "s3://denied: access denied", extra=["--output", "s3://denied/x"],
             env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
                  "AWS_ENDPOINT_URL_S3": c.odd_url}, category="storage"),
    ]


@dataclass
class Outcome:
    case: Case
    proc: subprocess.CompletedProcess[str]
    out_dir: Path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(case: Case, base: Path, env: dict[str, str]) -> Outcome:
    d = base / case.name
    d.mkdir()
    out_dir = d / "out"
    cfg = d / "cfg.yml"
    if case.config is not None:
        cfg.write_text(case.config.format(out=out_dir))
    for rel, data in case.files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    argv = case.argv if case.argv is not None else [case.command, str(cfg), *case.extra]
    proc = subprocess.run(fmbench_argv(*argv), env={**env, **case.env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=240, check=False)
    return Outcome(case, proc, out_dir)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, fault_cli_env: dict[str, str], odd_server: str,
             moto_url: str) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("bad")
    (base / "cfgdir").mkdir()
    with SimulatedServerProcess(SimulatedEndpoint(provider="simulated", ttft_ms=1, tpot_ms=1,
                                                  output_tokens=2)) as sim:
        assert sim.url
        ctx = Ctx(base, sim.url, odd_server, moto_url, _closed_port())
        table = cases(ctx)
        with ThreadPoolExecutor(max_workers=4) as pool:
            done = list(pool.map(lambda c: _run(c, base, fault_cli_env), table))
    return {o.case.name: o for o in done}


def _names() -> list[str]:
    dummy = Ctx(Path("/nonexistent"), "http://x", "http://x", "http://x", 1)
    return [c.name for c in cases(dummy)]


def test_the_table_covers_every_category() -> None:
    dummy = Ctx(Path("/nonexistent"), "http://x", "http://x", "http://x", 1)
    table = cases(dummy)
    assert len(table) >= 40 and len({c.name for c in table}) == len(table)
    assert {c.category for c in table} == {"config", "cli", "dataset", "tokenizer", "endpoint", "credentials", "storage",
                                           "service"}


#: The exit code each category of the table ends with: that of the error class its cases raise
#: (argparse's own errors exit 2 as well).
EXIT_BY_CATEGORY = {
    "config": ConfigError.exit_code, "cli": ExitCode.BAD_INPUT, "dataset": DatasetError.exit_code,
    "tokenizer": TokenizerError.exit_code, "endpoint": EndpointError.exit_code,
    "credentials": CredentialsError.exit_code, "storage": StorageError.exit_code,
    "service": FMBenchError.exit_code,  # a service the run needs besides its endpoints (the Prefect API)
}


def test_bad_input_and_environment_have_their_own_exit_codes() -> None:
    assert {EXIT_BY_CATEGORY[c] for c in ("config", "cli", "dataset", "tokenizer")} == {2}
    assert {EXIT_BY_CATEGORY[c] for c in ("endpoint", "credentials", "storage", "service")} == {3}


@pytest.mark.parametrize("name", _names())
def test_bad_input_is_one_clear_line_and_the_exit_code_of_its_cause(name: str, outcomes: dict[str, Outcome]) -> None:
    o = outcomes[name]
    stderr = o.proc.stderr
    expected = EXIT_BY_CATEGORY[o.case.category]
    assert o.proc.returncode == expected, (o.proc.returncode, stderr[-2000:], o.proc.stdout[-500:])
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if o.case.category == "cli" and o.case.argv is not None or o.case.name == "cli-unknown-option":
        assert lines[-1].startswith("fmbench: error:") or "error:" in lines[-1], stderr
        assert o.case.expect in stderr
    else:
        errors = [ln for ln in lines if ln.startswith("fmbench: error:")]
        assert len(errors) == 1, stderr
        assert o.case.expect in errors[0], errors[0]
    # Refused before anything was measured or written.
    assert not o.out_dir.exists()


def test_debug_shows_the_traceback(tmp_path: Path, fault_cli_env: dict[str, str]) -> None:
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(GOOD.replace("name: bad", "name: bad\nfoo: 1").format(out=tmp_path / "out"))
    proc = subprocess.run(fmbench_argv("--debug", "validate", str(cfg)), env=fault_cli_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_validate_accepts_a_good_config(tmp_path: Path, fault_cli_env: dict[str, str]) -> None:
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(GOOD.format(out=tmp_path / "out"))
    proc = subprocess.run(fmbench_argv("validate", str(cfg)), env=fault_cli_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "OK (1 experiments, 1 datasets, 1 buckets, up to 1 shards)" in proc.stdout
