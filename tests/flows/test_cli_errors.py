"""Bad input through the real command line: one line naming the cause, exit code 2, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from typing import Any

GOOD = """
name: cli
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


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yml"
    p.write_text(text.format(out=tmp_path / "out"))
    return p


def _case(name: str, tmp_path: Path) -> tuple[Path, list[str], str]:
    """(config file, extra args, expected text) for each bad-input case."""
    good = GOOD
    extra: list[str] = []
    if name == "invalid-yaml":
        text, expect = good + "\n  : : [\n", "invalid YAML"
    elif name == "unknown-key":
        text, expect = good.replace("name: cli", "name: cli\nfoo: 1"), "foo: unknown key"
    elif name == "wrong-type":
        text, expect = good.replace("ttft_ms: 5", "ttft_ms: soon"), "experiments[0].endpoint.ttft_ms"
    elif name == "inverted-bucket":
        text, expect = good.replace("[[1, 100]]", "[[100, 1]]"), "empty or inverted"
    elif name == "missing-dataset-file":
        text = good.replace("{{name: syn, source: synthetic, prompts_per_bucket: 2}}",
                            "{{name: d, source: jsonl, path: nope.jsonl}}")
        expect = "nope.jsonl"
    elif name == "unknown-tokenizer":
        text, expect = good.replace("name: cli", "name: cli\ntokenizer: no_such_encoding"), "no_such_encoding"
    elif name == "unreachable-endpoint":
        port = _closed_port()
        text = good.replace("{{provider: simulated, ttft_ms: 5, tpot_ms: 1, output_tokens: 4}}",
                            f"{{{{provider: openai, base_url: 'http://127.0.0.1:{port}/v1', model: m}}}}")
        expect = "unreachable"
    elif name == "bad-override":
        text, extra, expect = good, ["--set", "experiments.9.name=x"], "index 9 out of range"
    elif name == "missing-config":
        return tmp_path / "absent.yml", [], "config file not found"
    else:  # pragma: no cover
        raise AssertionError(name)
    return _write(tmp_path, text), extra, expect


CASES = ["invalid-yaml", "unknown-key", "wrong-type", "inverted-bucket", "missing-dataset-file",
         "unknown-tokenizer", "unreachable-endpoint", "bad-override", "missing-config"]


# `validate` checks the config only; `run` also checks files, the tokenizer and endpoints first.
_RUN_ONLY = ("missing-dataset-file", "unknown-tokenizer", "unreachable-endpoint")
PARAMS = [("run", c) for c in CASES] + [("validate", c) for c in CASES if c not in _RUN_ONLY]


@pytest.mark.parametrize(("command", "case"), PARAMS)
def test_bad_input_is_one_line_exit_2(command: str, case: str, tmp_path: Path, run_cli: Any) -> None:
    cfg, extra, expect = _case(case, tmp_path)
    proc = run_cli(command, str(cfg), *extra)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("fmbench: error:")]
    assert len(errors) == 1, proc.stderr
    assert expect in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_debug_shows_the_traceback(tmp_path: Path, run_cli: Any) -> None:
    cfg, _, _ = _case("unknown-key", tmp_path)
    proc = run_cli("--debug", "validate", str(cfg))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_validate_accepts_a_good_config(tmp_path: Path, run_cli: Any) -> None:
    proc = run_cli("validate", str(_write(tmp_path, GOOD)))
    assert proc.returncode == 0, proc.stderr
    assert "OK (1 experiments, 1 datasets, 1 buckets, up to 1 shards)" in proc.stdout


def test_bad_cli_arguments_exit_2(run_cli: Any) -> None:
    proc = run_cli("run")
    assert proc.returncode == 2
    assert "the following arguments are required: config" in proc.stderr
    proc = run_cli("frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
