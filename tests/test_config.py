"""The config loader: valid configs load, every invalid one fails with one line naming file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fmbench.config import (
    apply_overrides,
    bucket_label,
    dump_config,
    load_config,
    load_config_source,
    load_config_text,
    narrow_config,
)
from fmbench.errors import ConfigError

BASE = """
name: t
buckets: [[1, 500], [500, 1000]]
datasets:
  - {name: syn, source: synthetic, prompts_per_bucket: 3}
experiments:
  - name: e1
    endpoint: {provider: simulated}
    concurrency_levels: [1, 2]
"""


def test_minimal_config_gets_defaults() -> None:
    cfg = load_config_text(BASE, source="t.yml")
    e = cfg.experiments[0]
    assert e.inference.max_tokens == 64 and e.inference.stream is True
    assert e.requests_per_level == 40 and e.warmup_requests == 2
    assert cfg.slo.max_error_rate == 0.0
    assert [bucket_label(b) for b in cfg.buckets] == ["1-500", "500-1000"]


def test_client_hosts_is_unset_by_default_and_takes_a_count_or_auto() -> None:
    assert load_config_text(BASE).experiments[0].client_hosts is None
    two = BASE.replace("concurrency_levels: [1, 2]", "concurrency_levels: [2, 8]\n    client_hosts: 2")
    assert load_config_text(two).experiments[0].client_hosts == 2
    auto = BASE.replace("concurrency_levels: [1, 2]", "concurrency_levels: [1, 2]\n    client_hosts: auto")
    assert load_config_text(auto).experiments[0].client_hosts == "auto"


def test_buckets_are_sorted() -> None:
    cfg = load_config_text(BASE.replace("[[1, 500], [500, 1000]]", "[[500, 1000], [1, 500]]"))
    assert cfg.buckets == [(1, 500), (500, 1000)]


def test_concurrency_defaults_to_one_without_rates() -> None:
    cfg = load_config_text(BASE.replace("    concurrency_levels: [1, 2]\n", ""))
    assert cfg.experiments[0].concurrency_levels == [1]
    cfg = load_config_text(BASE.replace("concurrency_levels: [1, 2]", "request_rates: [2.5]"))
    assert cfg.experiments[0].concurrency_levels is None
    assert cfg.experiments[0].request_rates == [2.5]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("name: t", "name: 'bad name'"), "name: Value error, 'bad name': a name starts with a letter or digit"),
        # experiment x with dataset y__d and experiment x__y with dataset d would share shard ids
        (("name: e1", "name: x__y"), "experiments[0].name: Value error, 'x__y': a name starts with a letter"),
        (("{name: syn,", "{name: y__d,"), "datasets[0].name: Value error, 'y__d'"),
        (("name: t", "name: t\nbogus: 1"), "bogus: unknown key"),
        (("[[1, 500], [500, 1000]]", "[]"), "buckets: List should have at least 1 item"),
        (("[[1, 500], [500, 1000]]", "[[500, 100]]"), "empty or inverted"),
        (("[[1, 500], [500, 1000]]", "[[300, 300]]"), "empty or inverted"),
        (("[[1, 500], [500, 1000]]", "[[0, 10]]"), "at least 1 token"),
        (("[[1, 500], [500, 1000]]", "[[1, 500], [400, 1000]]"), "overlap"),
        (("[[1, 500], [500, 1000]]", "[[1, 2, 3]]"), "buckets[0]"),
        (("[[1, 500], [500, 1000]]", "oops"), "buckets: Input should be a valid list"),
        (("prompts_per_bucket: 3", "prompts_per_bucket: 0"), "datasets[0].prompts_per_bucket"),
        (("source: synthetic", "source: csv"), "datasets[0]: Input tag 'csv'"),
        (("{provider: simulated}", "{provider: nope}"), "experiments[0].endpoint: Input tag 'nope'"),
        (("{provider: simulated}", "{provider: simulated, ttft_ms: fast}"), "endpoint.ttft_ms"),
        (("{provider: simulated}", "{provider: simulated, ttft_ms: -1}"), "endpoint.ttft_ms"),
        (("{provider: simulated}", "{provider: simulated, max_batch: 0}"), "endpoint.max_batch"),
        (("{provider: simulated}", "{provider: openai, model: m}"), "endpoint.base_url: Field required"),
        (("{provider: simulated}", "{provider: openai, model: m, base_url: ftp://x}"), "http:// or https://"),
        (("{provider: simulated}", "{provider: openai, model: m, base_url: 'http://u:pw@h/v1'}"),
         "endpoint.base_url: Value error, must not carry credentials (user:password@)"),
        (("{provider: simulated}", "{provider: openai, model: m, base_url: 'http://h/v1?key=k'}"),
         "endpoint.base_url: Value error, must not have a query string"),
        (("{provider: simulated}", "{provider: openai, model: m, base_url: 'http://h/v1', headers: {api-key: k}}"),
         "endpoint.headers: Value error, 'api-key' looks like it carries a secret"),
        (("{provider: simulated}", ("{provider: openai, model: m, base_url: 'http://h/v1', "
                                   "headers: {Authorization: Bearer k}}")), "'Authorization' looks like"),
        (("{provider: simulated}", ("{provider: openai, model: m, base_url: 'http://h/v1', "
                                   "headers_env: {api-key: sk-123}}")),
         "headers_env: Value error, api-key: its value is not an environment variable's name"),
        (("{provider: simulated}", "{provider: openai, model: m, base_url: 'http://h/v1', api_key_env: sk-live-123}"),
         "endpoint.api_key_env: Value error, not an environment variable's name (the key itself belongs"),
        (("{provider: simulated}", ("{provider: openai, model: m, base_url: 'http://h/v1', api_key_env: K, "
                                   "headers_env: {authorization: K2}}")), "given twice"),
        (("{provider: simulated}", ("{provider: openai, model: m, base_url: 'http://h/v1', headers: {X-Team: a}, "
                                   "headers_env: {x-team: T}}")), "header x-team is given twice"),
        (("{provider: simulated}", "{provider: sagemaker}"), "exactly one of endpoint_name"),
        (("{provider: simulated}", "{provider: sagemaker, image_uri: x, instance_type: t, env: {HF_TOKEN: hf_x}}"),
         "endpoint.env: Value error, 'HF_TOKEN' looks like it carries a secret"),
        (("{provider: simulated}", ("{provider: sagemaker, image_uri: x, instance_type: t, "
                                   "env_from: {HF_TOKEN: hf_abc-123}}")),
         "env_from: Value error, HF_TOKEN: its value is not an environment variable's name"),
        (("{provider: simulated}", ("{provider: sagemaker, image_uri: x, instance_type: t, env: {A: b}, "
                                   "env_from: {A: B}}")), "A is in both env and env_from"),
        (("{provider: simulated}", "{provider: sagemaker, endpoint_name: live, env_from: {HF_TOKEN: T}}"),
         "env_from is for a model the run deploys"),
        (("{provider: simulated}", "{provider: sagemaker, image_uri: x}"), "instance_type is required"),
        (("{provider: simulated}", "{provider: bedrock}"), "endpoint.model_id: Field required"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [0]"), "concurrency_levels[0]"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [2, 2]"), "unique"),
        (("concurrency_levels: [1, 2]", "request_rates: [1.0000001, 1.0000002]"),
         "request_rates: Value error, levels must differ within 6 significant digits"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: []"), "must not be empty"),
        (("concurrency_levels: [1, 2]", "request_rates: [0]"), "request_rates[0]"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [1]\n    inference: {max_tokens: 0}"),
         "inference.max_tokens"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [1]\n    inference: {temperature: 5}"),
         "inference.temperature"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [1]\n    inference: {timeout_s: 0}"),
         "inference.timeout_s"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [1]\n    requests_per_level: 0"),
         "requests_per_level"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [1]\n    warmup_requests: -1"), "warmup_requests"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [1]\n    pricing: {hourly_usd: -2}"),
         "pricing.hourly_usd"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [1]\n    datasets: [missing]"), "unknown dataset"),
        (("name: t", "name: t\nslo: {max_error_rate: 2}"), "slo.max_error_rate"),
        (("name: t", "name: t\nslo: {latency_p95_s: 0}"), "slo.latency_p95_s"),
        (("- name: e1", "- name: e1\n    foo: bar"), "experiments[0].foo: unknown key"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [1, 2]\n    client_hosts: 0"), "client_hosts"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [1, 2]\n    client_hosts: 2"),
         "cannot exceed the smallest concurrency level (1)"),
        (("concurrency_levels: [1, 2]", "concurrency_levels: [1, 2]\n    client_hosts: many"), "client_hosts"),
        (("concurrency_levels: [1, 2]", "request_rates: [5]\n    max_concurrency: 4\n    client_hosts: 2"),
         "cannot split max_concurrency"),
    ],
)
def test_invalid_config_names_file_and_field(edit: tuple[str, str], expected: str) -> None:
    text = BASE.replace(*edit)
    assert text != BASE
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="bad.yml")
    message = str(info.value)
    assert message.startswith("bad.yml")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("edit", [
    ("{provider: simulated}", "{provider: openai, model: m, base_url: 'http://h/v1', api_key_env: sk-live-PASTED}"),
    ("{provider: simulated}", "{provider: openai, model: m, base_url: 'http://h/v1', headers_env: {k: sk-live-PASTED}}"),
    ("{provider: simulated}", "{provider: sagemaker, image_uri: x, instance_type: t, env_from: {T: sk-live-PASTED}}"),
], ids=["api_key_env", "headers_env", "env_from"])
def test_a_secret_pasted_where_a_variable_name_belongs_is_refused_without_repeating_it(edit: tuple[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(BASE.replace(*edit), source="bad.yml")
    assert "not an environment variable's name" in str(info.value) and "PASTED" not in str(info.value)


def test_duplicate_names_are_rejected() -> None:
    text = BASE + "  - name: e1\n    endpoint: {provider: simulated}\n"
    with pytest.raises(ConfigError, match="experiment names must be unique"):
        load_config_text(text, source="x.yml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed", "invalid YAML"),
        ("", "the config is empty"),
        ("- a\n- b", "must be a YAML mapping"),
        ("name: t\n  bad: indent: here", "invalid YAML"),
    ],
)
def test_unreadable_yaml(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_config_text(text, source="f.yml")
    assert str(info.value).startswith("f.yml")


def test_a_key_given_twice_is_refused_and_merge_keys_still_work() -> None:
    with pytest.raises(ConfigError, match=r"f.yml: line 10, column 1: invalid YAML: key 'name' given twice "
                                          r"\(first on line 2\)"):
        load_config_text(BASE + "name: other\n", source="f.yml")
    shared = BASE.replace("    endpoint: {provider: simulated}",
                          "    endpoint: &sim {provider: simulated, ttft_ms: 7}") + \
        "  - name: e2\n    endpoint: {<<: *sim, ttft_ms: 9}\n"
    cfg = load_config_text(shared, source="f.yml")
    assert [e.endpoint.ttft_ms for e in cfg.experiments] == [7, 9]  # type: ignore[union-attr]


def test_aliases_nested_in_aliases_are_refused_before_they_expand() -> None:
    laughs = "".join(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))
    text = BASE.replace("    endpoint: {provider: simulated}",
                        "    endpoint: {provider: simulated}\n    inference:\n      extra_body:\n"
                        "        l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
                        + laughs.replace("    l", "        l"))
    with pytest.raises(ConfigError, match="more than 1,000,000 values once its YAML aliases are expanded"):
        load_config_text(text, source="f.yml")


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yml")
    bad = tmp_path / "latin1.yml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_overrides_by_index_and_name() -> None:
    cfg = load_config_text(BASE, overrides=["experiments.0.concurrency_levels=[4, 8]",
                                            "experiments.e1.requests_per_level=5", "slo.latency_p95_s=1.5"])
    assert cfg.experiments[0].concurrency_levels == [4, 8]
    assert cfg.experiments[0].requests_per_level == 5
    assert cfg.slo.latency_p95_s == 1.5
    # a name with dots (names may hold them) is addressed whole
    dotted = BASE.replace("name: e1", "name: llama3.1")
    cfg = load_config_text(dotted, overrides=["experiments.llama3.1.requests_per_level=7"])
    assert cfg.experiments[0].requests_per_level == 7
    with pytest.raises(ConfigError, match="no list item named 'llama3'"):
        load_config_text(dotted, overrides=["experiments.llama3.2.requests_per_level=7"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("novalue", "expected key.path=value"),
        ("=3", "empty key"),
        ("experiments.7.name=x", "index 7 out of range"),
        ("experiments.nope.name=x", "no list item named 'nope'"),
        ("name.sub=1", "is not a mapping or list"),
        ("experiments.0.requests_per_level=lots", "requests_per_level"),
    ],
)
def test_bad_overrides(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config_text(BASE, source="o.yml", overrides=[override])


def test_override_does_not_mutate_input() -> None:
    data = {"a": {"b": 1}}
    assert apply_overrides(data, ["a.b=2"]) == {"a": {"b": 2}}
    assert data == {"a": {"b": 1}}


def test_a_key_under_a_null_section_creates_it_as_under_a_missing_one() -> None:
    # a run's stored config.yml has `evaluation: null`; `fmbench evaluate` suggests this override
    cfg = load_config_text(BASE + "evaluation: null\n", overrides=["evaluation.evaluate_per_shard=20"])
    assert cfg.evaluation is not None and cfg.evaluation.evaluate_per_shard == 20
    assert apply_overrides({"a": None}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_narrow_config_and_inline_source() -> None:
    cfg = load_config_source(BASE)
    narrowed = narrow_config(cfg, experiments=["e1"], concurrency_levels=[3], requests_per_level=7)
    assert narrowed.experiments[0].concurrency_levels == [3]
    assert narrowed.experiments[0].requests_per_level == 7
    with pytest.raises(ConfigError, match="unknown experiment"):
        narrow_config(cfg, experiments=["zzz"])


def test_dump_round_trips_and_hash_is_stable() -> None:
    cfg = load_config_text(BASE)
    again = load_config_text(dump_config(cfg))
    assert again.config_hash() == cfg.config_hash()
    changed = load_config_text(BASE.replace("[1, 2]", "[1, 4]"))
    assert changed.config_hash() != cfg.config_hash()


def test_openai_api_key_is_named_not_embedded() -> None:
    cfg = load_config_text(BASE.replace("{provider: simulated}",
                                        "{provider: openai, base_url: 'http://h:1/v1/', model: m, api_key_env: KEY}"))
    ep = cfg.experiments[0].endpoint
    assert ep.base_url == "http://h:1/v1"
    assert "api_key_env" in dump_config(cfg)
    cfg = load_config_text(BASE.replace("{provider: simulated}", "{provider: openai, base_url: 'http://h:1/v1', "
                                        "model: m, headers: {X-Team: a}, headers_env: {api-key: AZURE_KEY}}"))
    ep = cfg.experiments[0].endpoint
    assert ep.headers == {"X-Team": "a"} and ep.headers_env == {"api-key": "AZURE_KEY"}
    cfg = load_config_text(BASE.replace("{provider: simulated}", (
        "{provider: sagemaker, image_uri: x, instance_type: t, env: {MAX_INPUT_TOKENS: '4096', "
        "MAX_TOTAL_TOKENS: '8192', HF_MODEL_ID: m}, env_from: {HF_TOKEN: HF_TOKEN}}")))
    ep = cfg.experiments[0].endpoint
    assert ep.env_from == {"HF_TOKEN": "HF_TOKEN"} and len(ep.env) == 3  # token *counts* are no secret


def test_a_ca_bundle_resolves_like_a_dataset_path_and_leaves_other_configs_hashes_alone(tmp_path: Path) -> None:
    openai = "{provider: openai, base_url: 'https://llm.internal:8443/v1', model: m%s}"
    without = load_config_text(BASE.replace("{provider: simulated}", openai % ""))
    # A config that does not set it hashes as it did before the field existed, so its runs still resume
    # and compare: this config's hash as computed by the code before ca_bundle (71f6890).
    assert without.config_hash() == "65926cf33f2a2bd1"
    assert without.config_hash() == load_config_text(
        BASE.replace("{provider: simulated}", openai % ", ca_bundle: null")).config_hash()
    assert without.config_hash() == load_config_text(  # nor does headers_env, when unset
        BASE.replace("{provider: simulated}", openai % ", headers_env: {}")).config_hash()
    assert without.config_hash() != load_config_text(
        BASE.replace("{provider: simulated}", openai % ", headers_env: {api-key: K}")).config_hash()
    path = tmp_path / "bench.yml"
    path.write_text(BASE.replace("{provider: simulated}", openai % ", ca_bundle: certs/ca.pem"))
    cfg = load_config(path)
    ep = cfg.experiments[0].endpoint
    assert ep.ca_bundle == "certs/ca.pem"  # the config as written (stored, hashed)
    assert ep.ca_file() == str(tmp_path / "certs" / "ca.pem")  # what the client loads
    assert cfg.config_hash() != without.config_hash()
    absolute = load_config_text(BASE.replace("{provider: simulated}", openai % ", ca_bundle: /etc/ca.pem"))
    assert absolute.experiments[0].endpoint.ca_file() == "/etc/ca.pem"


@pytest.mark.parametrize(("endpoint", "pricing", "count"), [
    (("{provider: sagemaker, instance_type: ml.g5.2xlarge, instance_count: 2, image_uri: x.dkr.ecr.us-east-1"
      ".amazonaws.com/i:1, role_arn: 'arn:aws:iam::123456789012:role/r'}"), "{hourly_usd: 1.5}", 2),
    ("{provider: sagemaker, endpoint_name: my-ep}", "{instance_type: ml.g5.2xlarge, instance_count: 3}", 3),
    ("{provider: simulated}", "{hourly_usd: 2.0, instance_count: 4}", 4),
], ids=["deployed-count-only", "existing-endpoint-priced-count", "simulated-priced-count"])
def test_one_instance_count_survives_the_config_being_dumped_and_validated_again(
        endpoint: str, pricing: str, count: int) -> None:
    # A run stores its config with every default written out, and the CLI's narrowing re-validates it
    # the same way: a count given once must not read, once dumped, as two counts that differ.
    from fmbench.config import instance_count

    text = BASE.replace("endpoint: {provider: simulated}", f"endpoint: {endpoint}\n    pricing: {pricing}")
    cfg = load_config_text(text, source="t.yml")
    again = [narrow_config(cfg), load_config_text(dump_config(cfg), source="config.yml")]
    for c in [cfg, *again]:
        e = c.experiments[0]
        assert instance_count(e.endpoint, e.pricing) == count
    assert again[1].config_hash() == cfg.config_hash()


def test_a_pricing_shared_by_two_experiments_keeps_each_ones_count() -> None:
    # (a notebook builds configs from objects: settling one experiment's count must not change another's)
    from fmbench.config import ExperimentConfig, PricingConfig, SageMakerEndpoint, instance_count

    shared = PricingConfig(hourly_usd=1.0)
    deployed = [ExperimentConfig(name=f"e{n}", pricing=shared, endpoint=SageMakerEndpoint(
        provider="sagemaker", instance_type="ml.g5.2xlarge", instance_count=n, image_uri="x.dkr.ecr.us-east-1."
        "amazonaws.com/i:1", role_arn="arn:aws:iam::123456789012:role/r")) for n in (2, 3)]
    assert [instance_count(e.endpoint, e.pricing) for e in deployed] == [2, 3]
    assert [e.pricing.instance_count for e in deployed if e.pricing] == [2, 3] and shared.instance_count == 1


def test_overload_shortfall_is_set_per_experiment_for_open_loop_and_leaves_other_hashes_alone() -> None:
    from fmbench.pipeline.prompts import PromptSet, experiment_tokenizer
    from fmbench.pipeline.shards import plan_shards

    def shard_specs(cfg: Any) -> list[Any]:
        tok = experiment_tokenizer(cfg, cfg.experiments[0])
        sets = [PromptSet(dataset="syn", tokenizer=tok, counts={"1-500": 3})]
        return plan_shards(cfg, sets, cfg.experiments[0])

    open_loop = BASE.replace("concurrency_levels: [1, 2]", "request_rates: [2, 4]")
    plain = load_config_text(open_loop)
    assert plain.experiments[0].overload_shortfall is None
    assert {s.overload_shortfall for s in shard_specs(plain) if s.request_rate} == {0.10}  # the spec's default
    tuned = load_config_text(open_loop.replace("request_rates: [2, 4]", "request_rates: [2, 4]\n    "
                                               "overload_shortfall: 0.25"))
    assert {s.overload_shortfall for s in shard_specs(tuned) if s.request_rate} == {0.25}
    assert tuned.config_hash() != plain.config_hash()
    # unset, a config hashes as before the field existed (its runs still resume and compare)
    assert load_config_text(dump_config(plain)).config_hash() == plain.config_hash()
    for bad, why in (("1.5", "less than 1"), ("0", "greater than 0")):
        with pytest.raises(ConfigError, match=why):
            load_config_text(open_loop.replace("request_rates: [2, 4]", f"request_rates: [2]\n    overload_shortfall: {bad}"))
    with pytest.raises(ConfigError, match="overload_shortfall judges open-loop shards only"):
        load_config_text(BASE.replace("concurrency_levels: [1, 2]", "concurrency_levels: [1]\n    overload_shortfall: 0.2"))
