"""Pydantic models of a benchmark config (datasets, endpoints, experiments, SLOs).

The same models document the YAML (every field has a description) and render as forms in
the Prefect UI; `fmbench.config.load` turns a YAML file into them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

#: A name: it is part of file names and shard ids, whose parts a double underscore separates.
_NAME = r"^[A-Za-z0-9](?:_?[A-Za-z0-9.-])*_?$"


def _name(value: str) -> str:
    if not re.fullmatch(_NAME, value):
        raise ValueError(f"{value!r}: a name starts with a letter or digit and holds only letters, digits, '.', "
                         "'-' and single '_' (a double underscore separates the parts of shard ids)")
    return value


#: A dataset's, experiment's, judge's or benchmark's name (the pattern is also in the JSON schema, for forms).
_Name = Annotated[str, AfterValidator(_name), WithJsonSchema({"type": "string", "pattern": _NAME})]


#: The most requests in flight a shard may keep: each is a task of the load generator (100,000 start in
#: about two seconds), and far more than any endpoint serves at once.
MAX_CONCURRENCY = 100_000
#: The most output tokens a request may ask for: what servers take as a 32-bit count (a larger number
#: failed every request as the endpoint's error).
MAX_TOKENS = 2**31 - 1


class _Model(BaseModel):
    # No infinite or NaN number anywhere: a price of .inf would recommend "$inf per 10k transactions".
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------- datasets


class _DatasetBase(_Model):
    name: _Name = Field(description="Dataset name, used in results and file names.")
    max_prompts: int | None = Field(
        default=None, ge=1, description="Use at most this many prompts per bucket (after bucketing): the first in "
        "file order for JSONL and LongBench files; for synthetic prompts, an evenly spaced subset of each bucket's "
        "lengths. The report's dataset notes say how many were dropped.")


class SyntheticDataset(_DatasetBase):
    """Prompts of exact token lengths, spread evenly over each bucket."""

    source: Literal["synthetic"] = Field(description="Generate prompts of exact token lengths.")
    prompts_per_bucket: int = Field(default=50, ge=1, description="Prompts generated for each bucket.")
    seed: int = Field(default=0, description="Seed of the generator; the same seed gives the same prompts.")
    prompt_template: str | None = Field(
        default=None,
        description="Optional template with a {text} field; the generated text fills it and the whole "
        "rendered prompt has the target length.",
    )

    @field_validator("prompt_template")
    @classmethod
    def _one_text_field(cls, v: str | None) -> str | None:
        # Checked here, so `validate` and the preflight refuse it before a run directory exists.
        from fmbench.datasets.template import template_fields
        from fmbench.errors import DatasetError

        if v is None:
            return v
        try:
            fields = template_fields(v, where="template")
        except DatasetError as exc:
            raise ValueError(str(exc)) from None
        if fields != ["text"]:
            raise ValueError(f"a synthetic template must use exactly one field, {{text}} (it uses {fields})")
        if any(name not in (None, "text") for _, name, _, _ in string.Formatter().parse(v)):
            raise ValueError("use {text} itself: the generated text has no index or attribute to take")
        try:
            v.format(text="sample")
        except (IndexError, AttributeError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"cannot render {{text}} with this template: {exc}") from None
        return v


class LongBenchDataset(_DatasetBase):
    """A LongBench-format JSONL file (input, context, answers, length, dataset, language, all_classes, _id)."""

    source: Literal["longbench"] = Field(description="LongBench JSONL (local path or hf:REPO/SUBSET).")
    path: str = Field(description="Path to the JSONL file (relative to the config file), or hf:THUDM/LongBench/NAME.")
    prompt_template: str = Field(
        default="{context}\n\nQuestion: {input}\nAnswer:",
        description="Python format template over the record's fields (e.g. {context}, {input}).",
    )

    @field_validator("path")
    @classmethod
    def _hub_spec(cls, v: str) -> str:
        if v.startswith("hf:") and split_hub_spec(v) is None:
            raise ValueError(f"{v!r}: {HUB_SPEC_SHAPE}")
        return v


#: What a LongBench path on the Hugging Face hub looks like (`split_hub_spec`).
HUB_SPEC_SHAPE = "expected hf:ORG/REPO/SUBSET, e.g. hf:THUDM/LongBench/hotpotqa"


def split_hub_spec(spec: str) -> tuple[str, str] | None:
    """``hf:ORG/REPO/SUBSET`` as the repository id and the subset name; None for any other shape."""
    parts = spec[len("hf:"):].strip("/").split("/")
    if not spec.startswith("hf:") or len(parts) != 3 or not all(parts):
        return None
    return f"{parts[0]}/{parts[1]}", parts[2]


class JsonlDataset(_DatasetBase):
    """Any JSONL file with a prompt field (or fields used by a template)."""

    source: Literal["jsonl"] = Field(description="Generic JSONL, one JSON object per line.")
    path: str = Field(description="Path to the JSONL file (relative to the config file).")
    prompt_field: str = Field(default="prompt", description="Field holding the prompt text.")
    prompt_template: str | None = Field(
        default=None, description="Optional Python format template over the record's fields."
    )
    answer_field: str | None = Field(
        default=None,
        description="Field holding the reference answer (a string or a list of strings) for quality "
        "evaluation; records without it have no reference.",
    )


def _form_choice(schema: dict[str, Any]) -> None:
    # Prefect's run form draws `anyOf` as one form per choice (and `oneOf` only as raw JSON); each
    # choice still matches exactly one model, by its own `source`/`provider` constant.
    if "oneOf" in schema:
        schema["anyOf"] = schema.pop("oneOf")
        schema.pop("discriminator", None)


DatasetConfig = Annotated[SyntheticDataset | LongBenchDataset | JsonlDataset,
                          Field(discriminator="source", json_schema_extra=_form_choice)]

# ---------------------------------------------------------------- endpoints


class SimulatedFaults(_Model):
    """Faults the simulated endpoint injects, as rates per generation request (0..1, adding up to at most 1)."""

    seed: int | None = Field(default=None, description="Seed of the fault draws (default: the endpoint's seed).")
    http_500_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction answered with HTTP 500.")
    http_503_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction answered with HTTP 503.")
    throttle_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction answered with HTTP 429.")
    retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After header of a 429, seconds.")
    hang_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction never answered at all.")
    reset_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction whose connection is reset mid-stream.")
    malformed_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction with one invalid JSON frame/body.")
    truncated_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction whose stream ends early.")
    slow_first_byte_rate: float = Field(
        default=0.0, ge=0, le=1, description="Fraction whose first byte is delayed by slow_first_byte_s."
    )
    slow_first_byte_s: float = Field(default=2.0, ge=0, description="Extra delay before the first byte, seconds.")

    @model_validator(mode="after")
    def _rates_sum(self) -> SimulatedFaults:
        total = sum(v for k, v in self.__dict__.items() if k.endswith("_rate"))
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g}; they must add up to at most 1")
        return self


class SimulatedEndpoint(_Model):
    """The local simulated continuous-batching server, started and stopped by the run."""

    provider: Literal["simulated"] = Field(description="Start a local simulated endpoint for this experiment.")
    model: str = Field(default="fmbench-sim", description="Model name the server reports and expects.")
    api: Literal["chat", "completions"] = Field(default="chat", description="OpenAI API flavour to call.")
    ttft_ms: float = Field(default=80.0, ge=0, description="Base time to first token, milliseconds.")
    prefill_ms_per_token: float = Field(default=0.0, ge=0, description="Extra TTFT per input token, ms.")
    tpot_ms: float = Field(default=4.0, ge=0, description="Time per output token with one request decoding, ms.")
    decode_slowdown: float = Field(
        default=0.0, ge=0, description="Fractional TPOT growth per additional request decoding at once."
    )
    max_batch: int = Field(default=16, ge=1, description="Requests served at once; more wait in a queue.")
    output_tokens: int = Field(default=64, ge=1, le=MAX_TOKENS,
                               description="Tokens generated per request (capped by max_tokens).")
    chunk_tokens: int = Field(default=1, ge=1, description="Tokens per streamed chunk.")
    context_tokens: int | None = Field(
        default=None, ge=1,
        description="The model's context window, prompt plus output tokens: an answer that would not fit is cut "
        "at its end (finish_reason length, as llama.cpp and vLLM do), a prompt that fills it is refused. "
        "Unset: no limit.")
    seed: int = Field(default=0, description="Seed of the generated text.")
    tokenizer: str | None = Field(
        default=None,
        description="Counts prompt tokens for the server's usage and prefill time: a tiktoken encoding or a "
        "tokenizer.json path. Default: the experiment's tokenizer, like a real server that shares the model's tokenizer.",
    )
    faults: SimulatedFaults = Field(default_factory=SimulatedFaults, description="Injected faults (none by default).")
    answer_accuracy: float | None = Field(
        default=None, ge=0, le=1,
        description="Answer model: with this probability (seeded per prompt) answer with one of the prompt's "
        "reference answers, sent in the request as fmbench_answers; otherwise unrelated text. Unset: generated "
        "words only.",
    )
    judge_error_rate: float = Field(
        default=0.0, ge=0, le=1,
        description="As a judge (a prompt with <candidate> and <reference> blocks): fraction of verdicts flipped.",
    )
    judge_malformed_rate: float = Field(
        default=0.0, ge=0, le=1, description="As a judge: fraction of replies without a parseable verdict line."
    )


#: Header names that carry credentials: their values come from the environment (headers_env).
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|passw|credential|signature", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Environment variable names that hold credentials (HF_TOKEN, OPENAI_API_KEY, DB_PASSWORD; not
#: MAX_INPUT_TOKENS): their values come from this machine's environment (env_from).
_SECRET_VARIABLE = re.compile(r"(^|_)(TOKEN|API_KEY|ACCESS_KEY|SECRET_KEY|PRIVATE_KEY|KEY)$|SECRET|PASSW|CREDENTIAL",
                              re.IGNORECASE)


def _no_secrets_named(secret: re.Pattern[str], field: str, instead: str) -> AfterValidator:
    """A mapping's check (``field``, stored with every run): no name that says it holds a secret."""
    def check(values: dict[str, str]) -> dict[str, str]:
        for name in values:
            if secret.search(name):
                raise ValueError(f"{name!r} looks like it carries a secret, and {field} is stored with the run: "
                                 f"name the environment variable holding it in {instead} ({name}: VARIABLE)")
        return values

    return AfterValidator(check)


def _variable_names(values: dict[str, str]) -> dict[str, str]:
    """``values`` (name -> environment variable) unless a value is not a variable's name (a secret itself)."""
    for name, variable in values.items():
        if not _ENV_NAME.fullmatch(variable):  # (the value is not repeated: it may be the secret itself)
            raise ValueError(f"{name}: its value is not an environment variable's name (the secret itself "
                             "belongs in the environment, never in the config: name the variable holding it)")
    return values


#: name -> the environment variable holding its (secret) value
_VariableNames = Annotated[dict[str, str], AfterValidator(_variable_names)]


class OpenAIEndpoint(_Model):
    """Any OpenAI-compatible server (vLLM, TGI, llama.cpp, Ollama, ...)."""

    provider: Literal["openai"] = Field(description="An OpenAI-compatible HTTP endpoint.")
    base_url: str = Field(description="Base URL including /v1, e.g. http://host:8000/v1.")
    model: str = Field(description="Model name to send in requests.")
    api: Literal["chat", "completions"] = Field(default="chat", description="/v1/chat/completions or /v1/completions.")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key (never the key itself)."
    )
    headers: Annotated[dict[str, str], _no_secrets_named(_SECRET_HEADER, "headers", "headers_env")] = Field(
        default_factory=dict, description="Extra HTTP headers (no secrets).")
    headers_env: _VariableNames = Field(
        default_factory=dict, description="HTTP headers that carry a secret: header name -> the environment "
        "variable holding its value (e.g. api-key: AZURE_OPENAI_KEY); read when the run starts, never stored.")
    ca_bundle: str | None = Field(
        default=None, description="PEM file of the certificate authorities to trust for an https base_url "
        "signed by a private CA (absolute, or relative to the config's directory); default: the system's.")
    # ca_bundle resolved against the config's directory (set by BenchmarkConfig; not part of the config)
    _ca_file: str | None = PrivateAttr(default=None)

    def ca_file(self) -> str | None:
        """The CA bundle's path as it is used: a relative ``ca_bundle`` resolved against the config's
        directory when the config came from a file (as dataset paths are), else as given."""
        return self._ca_file or self.ca_bundle

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        parts = urlsplit(v)
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials (user:password@): the config is stored with the run; "
                             "put the secret in an environment variable named by api_key_env or headers_env")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query string or fragment: the client appends /chat/completions "
                             "to it (a key there would also be stored with the run: use api_key_env or headers_env)")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.fullmatch(v):
            raise ValueError("not an environment variable's name (the key itself belongs in the environment, "
                             "never in the config: name the variable holding it)")
        return v

    @model_validator(mode="after")
    def _one_source_per_header(self) -> OpenAIEndpoint:
        both = {n.lower() for n in self.headers} & {n.lower() for n in self.headers_env}
        if self.api_key_env and "authorization" in {n.lower() for n in self.headers_env}:
            both.add("authorization (also set by api_key_env)")
        if both:
            raise ValueError(f"header {min(both)} is given twice: keep one of headers, headers_env, api_key_env")
        return self


class _AwsAccess(_Model):
    region: str | None = Field(default=None, description="AWS region (default: the standard AWS chain).")
    profile: str | None = Field(default=None, description="AWS profile name (default: the standard AWS chain).")
    endpoint_url: str | None = Field(
        default=None, description="Override of the control-plane API URL (e.g. a local test server)."
    )


class SageMakerEndpoint(_AwsAccess):
    """A SageMaker real-time endpoint: deployed by the run (JumpStart or container image) or existing."""

    provider: Literal["sagemaker"] = Field(description="Amazon SageMaker real-time inference.")
    endpoint_name: str | None = Field(
        default=None, description="An existing endpoint to benchmark (bring your own: nothing is deployed)."
    )
    jumpstart_model_id: str | None = Field(default=None, description="JumpStart model id to deploy.")
    jumpstart_model_version: str = Field(default="*", description="JumpStart model version.")
    accept_eula: bool = Field(default=False, description="Accept the model's EULA (required by gated models).")
    image_uri: str | None = Field(default=None, description="Container image to deploy (LMI/DJL, TGI, vLLM, own).")
    model_data: str | None = Field(default=None, description="s3:// URI of model artifacts, for image deploys.")
    hf_model_id: str | None = Field(default=None, description="HF model id the container downloads (HF_MODEL_ID).")
    env: Annotated[dict[str, str], _no_secrets_named(_SECRET_VARIABLE, "env", "env_from")] = Field(
        default_factory=dict, description="Container environment variables (no secrets).")
    env_from: _VariableNames = Field(
        default_factory=dict, description="Container environment variables that are secrets (HF_TOKEN for a gated "
        "model): container variable -> the environment variable on this machine holding its value; read when the "
        "endpoint is deployed, sent only to SageMaker, never stored with the run.")
    serving_properties: dict[str, str] | None = Field(
        default=None, description="LMI serving.properties entries, passed as OPTION_* environment variables."
    )
    instance_type: str | None = Field(default=None, description="Instance type, e.g. ml.g5.2xlarge.")
    instance_count: int = Field(default=1, ge=1, description="Instances behind the endpoint.")
    role_arn: str | None = Field(default=None, description="Execution role ARN for the model.")
    runtime_endpoint_url: str | None = Field(
        default=None, description="Override of the sagemaker-runtime URL (e.g. a local test server)."
    )
    payload: Literal["tgi", "messages", "completions"] = Field(
        default="tgi",
        description="Request format: tgi (inputs + parameters, TGI/LMI), messages (chat messages API), "
        "completions (OpenAI completions schema).",
    )
    keep_endpoint: bool = Field(default=False, description="Leave a deployed endpoint running after the run.")
    deploy_timeout_s: float = Field(default=3600, gt=0, description="Max wait for InService.")
    container_startup_timeout_s: int | None = Field(default=None, ge=60, description="Health-check timeout.")
    volume_size_gb: int | None = Field(default=None, ge=1, description="Attached volume size.")
    cloudwatch_metrics: bool = Field(default=False, description="Collect CloudWatch metrics per shard window.")
    cloudwatch_delay_s: float = Field(
        default=180.0, ge=0,
        description="Wait this long after a shard ends before reading its CloudWatch metrics (published late).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> SageMakerEndpoint:
        sources = [x for x in (self.endpoint_name, self.jumpstart_model_id, self.image_uri) if x]
        if len(sources) != 1:
            raise ValueError("give exactly one of endpoint_name, jumpstart_model_id or image_uri")
        if not self.endpoint_name and not self.instance_type:
            raise ValueError("instance_type is required to deploy a model")
        if both := sorted(set(self.env) & set(self.env_from)):
            raise ValueError(f"{both[0]} is in both env and env_from: keep one")
        if self.env_from and self.endpoint_name:
            raise ValueError("env_from is for a model the run deploys, not an existing endpoint_name")
        return self


class BedrockEndpoint(_AwsAccess):
    """An Amazon Bedrock model (nothing to deploy), called through Converse / ConverseStream."""

    provider: Literal["bedrock"] = Field(description="Amazon Bedrock runtime.")
    model_id: str = Field(
        description="Model id (meta.llama3-8b-instruct-v1:0), inference profile (us.…) or provisioned ARN."
    )
    runtime_endpoint_url: str | None = Field(
        default=None, description="Override of the bedrock-runtime URL (e.g. a local test server)."
    )
    throttle_retries: int = Field(
        default=3, ge=0, le=10,
        description="Retries of a throttled request (bounded backoff); every attempt is a record, so the report "
        "shows how often requests were throttled. 0 measures throttling as failures.",
    )
    throttle_backoff_s: float = Field(default=0.5, gt=0, description="First backoff after throttling, doubling.")



EndpointConfig = Annotated[
    SimulatedEndpoint | OpenAIEndpoint | SageMakerEndpoint | BedrockEndpoint,
    Field(discriminator="provider", json_schema_extra=_form_choice),
]

# ---------------------------------------------------------------- experiments


class InferenceConfig(_Model):
    """Generation parameters sent with every request."""

    max_tokens: int = Field(default=64, ge=1, le=MAX_TOKENS, description="Maximum output tokens per request.")
    temperature: float = Field(default=0.1, ge=0, le=2, description="Sampling temperature.")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling (omitted when unset).")
    stream: bool = Field(default=True, description="Stream tokens (needed for TTFT and inter-token times).")
    timeout_s: float = Field(default=120.0, gt=0, description="Per-request timeout; a timed-out request fails.")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Extra JSON fields for the request body.")


class PricingConfig(_Model):
    """How an experiment is priced: per instance-hour, or per token."""

    hourly_usd: float | None = Field(default=None, ge=0, description="Price of one instance per hour, USD.")
    instance_type: str | None = Field(default=None, description="Instance type, priced from the shipped table.")
    instance_count: int = Field(
        default=1, ge=1, description="Instances behind the endpoint: its price per hour and the run's bill are "
        "both for this many (default: the endpoint's own instance_count, else 1; a count that differs from the "
        "endpoint's is refused).")
    region: str | None = Field(
        default=None, description="Region for table prices (default: the endpoint's region, else us-east-1).")
    input_per_1k_usd: float | None = Field(default=None, ge=0, description="Price per 1k input tokens, USD.")
    output_per_1k_usd: float | None = Field(default=None, ge=0, description="Price per 1k output tokens, USD.")


def instance_count(endpoint: Any, pricing: PricingConfig | None) -> int:
    """The instances an endpoint runs on: what its price per hour and its bill are both multiplied by.

    A SageMaker endpoint the run deploys runs on its own ``instance_count`` (set or not: it is what
    is created). Otherwise the count is the one the config says: ``pricing.instance_count``, or the
    endpoint's own (an existing SageMaker endpoint's), or 1.

    Raises:
        ValueError: both counts are set and differ (the price and the bill would disagree).
    """
    own = getattr(endpoint, "instance_count", None)
    deploys = getattr(endpoint, "provider", None) == "sagemaker" and not getattr(endpoint, "endpoint_name", None)
    own_set = isinstance(own, int) and (deploys or "instance_count" in getattr(endpoint, "model_fields_set", ()))
    priced = pricing.instance_count if pricing is not None and "instance_count" in pricing.model_fields_set else None
    if own_set and priced is not None and priced != own:
        raise ValueError(f"pricing.instance_count ({priced}) differs from endpoint.instance_count ({own}"
                         f"{', the instances the run deploys' if deploys else ''}): its price and its bill "
                         "would count different instances; give one count")
    if priced is not None:
        return priced
    return own if own_set and isinstance(own, int) else 1


def _check_instance_type(endpoint: Any, pricing: PricingConfig | None) -> None:
    """Refuse a table price for another instance type than the endpoint's (its bill would be another
    instance's: a g5.12xlarge priced as a g5.xlarge costs a fifth).

    Raises:
        ValueError: ``pricing.instance_type`` and ``endpoint.instance_type`` are both set and differ.
    """
    own = getattr(endpoint, "instance_type", None)
    priced = pricing.instance_type if pricing is not None else None
    if isinstance(own, str) and priced is not None and priced != own:
        raise ValueError(f"pricing.instance_type ({priced}) differs from endpoint.instance_type ({own}): its "
                         "price would be another instance's; give one type (or pricing.hourly_usd for a price "
                         "of your own)")


def _settle_instance_count(endpoint: Any, pricing: PricingConfig | None) -> tuple[Any, PricingConfig | None]:
    """The endpoint and pricing with the count `instance_count` resolves in both, so that the config as
    dumped (every default written out, as a run stores it and as the CLI's narrowing re-validates it)
    says the same count in both places and validates again: an unset count would otherwise read as
    set to its default. Copies where a count changes (a pricing given as an object may be shared)."""
    n = instance_count(endpoint, pricing)
    if pricing is not None and pricing.instance_count != n:
        pricing = pricing.model_copy(update={"instance_count": n})
    if isinstance(getattr(endpoint, "instance_count", None), int) and endpoint.instance_count != n:
        endpoint = endpoint.model_copy(update={"instance_count": n})
    return endpoint, pricing


class ExperimentConfig(_Model):
    """One endpoint configuration to benchmark over every dataset bucket and concurrency level."""

    name: _Name = Field(description="Experiment name, used in results and file names.")
    endpoint: EndpointConfig = Field(description="Where requests go.")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="Generation parameters.")
    concurrency_levels: list[Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)]] | None = Field(
        default=None,
        description="Closed loop: requests kept in flight, one shard per level (default [1] when no "
        "request_rates are given).",
    )
    request_rates: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None, description="Open loop: arrival rates in requests/s, one shard per rate."
    )
    arrival: Literal["poisson", "gamma", "constant"] = Field(
        default="poisson", description="Open-loop arrival process."
    )
    burstiness: float = Field(
        default=1.0, gt=0, description="Gamma shape of open-loop gaps (1 = Poisson, < 1 burstier)."
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, le=MAX_CONCURRENCY, description="Open loop: cap on requests in flight (waiting counts in latency)."
    )
    overload_shortfall: float | None = Field(
        default=None, gt=0, lt=1,
        description="Open loop: the endpoint is overloaded at a rate when its requests completed more than this "
        "fraction below the arrival rate (by over 3 standard errors); such a shard fails the SLOs and is never "
        "recommended (default 0.10; see fmbench.loadgen.overload).",
    )
    requests_per_level: int = Field(default=40, ge=1, description="Measured requests per shard.")
    warmup_requests: int = Field(
        default=2, ge=0, description="Requests sent before each shard's measured ones and not measured (closed "
        "loop: all of them end before measuring starts; open loop: the first arrivals of its schedule).")
    request_retries: int = Field(
        default=0, ge=0, le=5,
        description="Retries of a failed request inside a shard (off by default: retrying changes what is "
        "measured). Every attempt is recorded.",
    )
    processes: int | None = Field(
        default=None, ge=1, le=64,
        description="Load-generator processes per shard (default: chosen from the host's measured capacity).",
    )
    client_hosts: int | Literal["auto"] | None = Field(
        default=None,
        description="Dask workers each shard's load is split over (closed loop: its concurrency; open loop: its "
        "rate), started together; 'auto': as many as the shard's calibrated load needs. Needs a Dask cluster "
        "(FMBENCH_TASK_RUNNER=tcp://...); unset: the shard runs on the host that runs it.",
    )
    datasets: list[str] | None = Field(default=None, min_length=1,
                                       description="Dataset names to run (default: all; omit it rather than empty).")
    tokenizer: str | None = Field(
        default=None,
        description="The model's tokenizer, which buckets this experiment's prompts and counts its output tokens "
        "when the server reports no usage: a tiktoken encoding, a tokenizer.json path (relative to the config "
        "file) or hf:ORG/NAME (tokenizer.json from the Hugging Face hub, cached). Default: the run's tokenizer.",
    )
    pricing: PricingConfig | None = Field(default=None, description="Pricing for cost metrics.")
    store_text: bool = Field(
        default=False,
        description="Keep each completion's text in the records (requests.parquet column 'text') so outputs can "
        "be checked or evaluated after the run. Off by default: answers may be private; it adds about "
        "1.7 bytes per output token to requests.parquet (see the README).",
    )

    @field_validator("concurrency_levels", "request_rates")
    @classmethod
    def _unique_levels(cls, v: list[Any] | None) -> list[Any] | None:
        if v is not None:
            if not v:
                raise ValueError("must not be empty (omit it instead)")
            if len(set(v)) != len(v):
                raise ValueError("levels must be unique")
            if len({f"{x:g}" for x in v}) != len(v):  # as shard ids name them (r1.5): one id, one shard
                raise ValueError("levels must differ within 6 significant digits (shard ids name them so)")
        return v

    @model_validator(mode="after")
    def _default_levels(self) -> ExperimentConfig:
        if self.overload_shortfall is not None and self.request_rates is None:
            raise ValueError("overload_shortfall judges open-loop shards only (set request_rates)")
        if self.concurrency_levels is None and self.request_rates is None:
            self.concurrency_levels = [1]
        return self

    @model_validator(mode="after")
    def _one_instance_count(self) -> ExperimentConfig:
        _check_instance_type(self.endpoint, self.pricing)
        self.endpoint, self.pricing = _settle_instance_count(self.endpoint, self.pricing)
        return self

    @model_validator(mode="after")
    def _splittable(self) -> ExperimentConfig:
        n = self.client_hosts
        if isinstance(n, int):
            if n < 1:
                raise ValueError("client_hosts must be at least 1 (or 'auto')")
            if n > 1 and self.max_concurrency is not None:
                raise ValueError("client_hosts cannot split max_concurrency (one cap, one host)")
            low = min(self.concurrency_levels or [n])
            if n > low:
                raise ValueError(f"client_hosts ({n}) cannot exceed the smallest concurrency level ({low})")
        return self


class SLOConfig(_Model):
    """Service-level objectives a configuration must meet to be recommended.

    The p95 limits and the error rate judge a whole shard; the per-request limits (``ttft_s``,
    ``tpot_s``, ``latency_s``) judge each request, and the share of requests meeting all of them is
    the shard's goodput.
    """

    latency_p95_s: float | None = Field(default=None, gt=0, description="Max p95 end-to-end latency, seconds.")
    ttft_p95_s: float | None = Field(default=None, gt=0, description="Max p95 time to first token, seconds.")
    tpot_p95_s: float | None = Field(default=None, gt=0, description="Max p95 time per output token, seconds.")
    max_error_rate: float = Field(default=0.0, ge=0, le=1, description="Max fraction of failed requests.")
    ttft_s: float | None = Field(
        default=None, gt=0,
        description="Per-request limit on time to first token, seconds: a request over it is not 'good' (goodput).",
    )
    tpot_s: float | None = Field(
        default=None, gt=0, description="Per-request limit on time per output token, seconds (goodput)."
    )
    latency_s: float | None = Field(
        default=None, gt=0, description="Per-request limit on end-to-end latency, seconds (goodput)."
    )
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1,
        description="Minimum accuracy (evaluation.accuracy, 0..1) of an experiment on a dataset bucket; a "
        "configuration below it, or not evaluated, is not recommended there.",
    )

    @property
    def per_request(self) -> bool:
        """True when any per-request limit is set, so goodput is measured."""
        return any(v is not None for v in (self.ttft_s, self.tpot_s, self.latency_s))


class JudgeConfig(_Model):
    """One LLM judge of the evaluation panel: an endpoint of any provider."""

    name: _Name = Field(description="Judge name, used in results.")
    endpoint: EndpointConfig = Field(description="Where judge requests go (deployed and deleted like an experiment's).")
    inference: InferenceConfig = Field(
        default_factory=lambda: InferenceConfig(max_tokens=256, temperature=0.0, stream=False),
        description="Generation parameters of judge requests.",
    )
    pricing: PricingConfig | None = Field(default=None, description="Pricing of the judge's calls.")

    @model_validator(mode="after")
    def _one_instance_count(self) -> JudgeConfig:
        _check_instance_type(self.endpoint, self.pricing)
        self.endpoint, self.pricing = _settle_instance_count(self.endpoint, self.pricing)
        return self

    @property
    def experiment_name(self) -> str:
        """The name its endpoint goes by in deploys, resource names and the manifest's timelines."""
        return f"judge-{self.name}"

    def as_experiment(self) -> ExperimentConfig:
        """The judge as an experiment: deployed, priced, torn down and billed like one."""
        return ExperimentConfig(name=self.experiment_name, endpoint=self.endpoint, inference=self.inference,
                                pricing=self.pricing)


class EvaluationConfig(_Model):
    """Answer quality: reference-answer scores and an LLM-judge panel, per experiment after its shards."""

    judges: list[JudgeConfig] = Field(
        default_factory=list, description="The judge panel (majority vote); empty: reference-answer scores only."
    )
    judge_prompt: str | None = Field(
        default=None,
        description="Path of a judge prompt template (fields {question}, {references}, {candidate}), relative "
        "to the config file; default: the template shipped with fmbench.",
    )
    evaluate_per_shard: int = Field(
        default=20, ge=0,
        description="Successful requests per shard sent to the judges (a seeded sample; judging is billed). "
        "Reference-answer scores cover every successful request.",
    )
    concurrency: int = Field(default=4, ge=1, le=64, description="Judge requests in flight per judge.")
    seed: int = Field(default=0, description="Seed of the per-shard sample and of the intervals' bootstrap.")
    accuracy: Literal["judges", "exact_match", "f1", "rouge_l"] | None = Field(
        default=None,
        description="The accuracy slo.min_accuracy and the quality plot use; default: the judges' when there "
        "are judges, else exact_match.",
    )

    @model_validator(mode="after")
    def _unique_judges(self) -> EvaluationConfig:
        names = [j.name for j in self.judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names must be unique: {names}")
        if self.accuracy == "judges" and not self.judges:
            raise ValueError("accuracy: judges needs at least one judge")
        return self

    @property
    def accuracy_metric(self) -> str:
        """The metric that counts as accuracy."""
        return self.accuracy or ("judges" if self.judges else "exact_match")


class BenchmarkConfig(_Model):
    """A whole benchmark: datasets × experiments × concurrency levels, with SLOs and pricing."""

    name: _Name = Field(description="Benchmark name; results go to OUTPUT/NAME/RUN_ID.")
    description: str | None = Field(default=None, description="Free text shown in the report.")
    output: str = Field(default="results", description="Local directory or s3://bucket/prefix for results.")

    @field_validator("output")
    @classmethod
    def _output_names_a_place(cls, v: str) -> str:
        from fmbench.storage import output_problem

        problem = output_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    tokenizer: str = Field(
        default="cl100k_base",
        description="The default tokenizer of every experiment that names none: a tiktoken encoding name, a path "
        "to a HF tokenizer.json, or hf:ORG/NAME.",
    )
    buckets: list[tuple[int, int]] = Field(
        min_length=1, description="Prompt-token buckets as [min, max) pairs, e.g. [[1, 500], [500, 1000]]."
    )
    datasets: list[DatasetConfig] = Field(min_length=1, description="Prompt sources.")
    experiments: list[ExperimentConfig] = Field(min_length=1, description="Endpoints to benchmark.")
    slo: SLOConfig = Field(default_factory=SLOConfig, description="Service-level objectives.")
    parallel_endpoints: bool = Field(
        default=False,
        description="Run different experiments' shards side by side. Off by default: on a small client "
        "host, concurrent shards share its CPU and can inflate each other's measured latency.",
    )
    deploy_ahead: int | Literal["all"] = Field(
        default=1,
        description="How many endpoints may be deploying while the current one is measured: 1 (default) "
        "deploys the next experiment's endpoint during the current one's shards, so at most two are alive "
        "(billed) at once; 0 deploys each only when the one before is deleted; 'all' deploys every endpoint "
        "at the start. Each endpoint is deleted right after its own last shard.",
    )
    evaluation: EvaluationConfig | None = Field(
        default=None,
        description="Evaluate answer quality after each experiment's shards (implies store_text on every "
        "experiment: the answers are what is scored).",
    )
    base_dir: str | None = Field(
        default=None, description="Directory that relative dataset paths resolve against (default: the config's)."
    )

    @field_validator("deploy_ahead")
    @classmethod
    def _valid_deploy_ahead(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("use 0, a positive number of endpoints, or 'all'")
        return v

    @field_validator("buckets")
    @classmethod
    def _valid_buckets(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for lo, hi in v:
            if lo < 1:
                raise ValueError(f"bucket [{lo}, {hi}]: the minimum must be at least 1 token")
            if hi <= lo:
                raise ValueError(f"bucket [{lo}, {hi}] is empty or inverted (need min < max)")
        ordered = sorted(v)
        for (a_lo, a_hi), (b_lo, b_hi) in itertools.pairwise(ordered):
            if b_lo < a_hi:
                raise ValueError(f"buckets [{a_lo}, {a_hi}] and [{b_lo}, {b_hi}] overlap")
        return ordered

    @model_validator(mode="after")
    def _resolve_ca_bundles(self) -> BenchmarkConfig:
        endpoints = [e.endpoint for e in self.experiments]
        if self.evaluation is not None:
            endpoints += [j.endpoint for j in self.evaluation.judges]
        for ep in endpoints:
            if isinstance(ep, OpenAIEndpoint) and ep.ca_bundle and self.base_dir:
                path = Path(ep.ca_bundle).expanduser()
                ep._ca_file = str(path if path.is_absolute() else Path(self.base_dir) / path)
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> BenchmarkConfig:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique: {names}")
        enames = [e.name for e in self.experiments]
        if len(set(enames)) != len(enames):
            raise ValueError(f"experiment names must be unique: {enames}")
        for e in self.experiments:
            for d in e.datasets or []:
                if d not in names:
                    raise ValueError(f"experiment {e.name!r} names unknown dataset {d!r} (known: {names})")
        if self.evaluation is not None:
            for e in self.experiments:
                e.store_text = True  # what is evaluated is the text
            # A judge's endpoint shares the manifest's timelines with the experiments' endpoints.
            clash = sorted({j.experiment_name for j in self.evaluation.judges} & set(enames))
            if clash:
                raise ValueError(f"experiment name(s) {', '.join(clash)} clash with the endpoint name of a judge "
                                 "(judge-<judge name>); rename the experiment or the judge")
        if self.slo.min_accuracy is not None and self.evaluation is None:
            raise ValueError("slo.min_accuracy needs an evaluation: section (nothing measures accuracy otherwise)")
        return self

    def datasets_for(self, experiment: ExperimentConfig) -> list[DatasetConfig]:
        """The datasets an experiment runs over."""
        if experiment.datasets is None:
            return list(self.datasets)
        return [d for d in self.datasets if d.name in experiment.datasets]

    def tokenizer_for(self, experiment: ExperimentConfig) -> str:
        """The tokenizer spec an experiment buckets and counts with (its own, else the run's)."""
        return experiment.tokenizer or self.tokenizer

    def config_hash(self) -> str:
        """A stable hash of the resolved config (secrets excluded by construction).

        ``deploy_ahead`` is left out: it changes when endpoints are billed, not what is measured,
        so a run can be resumed or compared with another look-ahead.
        """
        data = self.model_dump(mode="json", exclude={"base_dir", "deploy_ahead"})
        for e in data["experiments"]:
            for added in ("tokenizer", "overload_shortfall"):
                if e.get(added) is None:  # unset: the hash of a config from before the field
                    e.pop(added, None)
        judges = (data.get("evaluation") or {}).get("judges") or []
        for ep in [e.get("endpoint") for e in data["experiments"]] + [j.get("endpoint") for j in judges]:
            if isinstance(ep, dict) and "ca_bundle" in ep and ep["ca_bundle"] is None:
                del ep["ca_bundle"]  # unset: the hash of a config from before ca_bundle
            for added in ("headers_env", "env_from"):
                if isinstance(ep, dict) and ep.get(added) == {}:
                    del ep[added]  # unset: the hash of a config from before the field
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def bucket_label(bucket: tuple[int, int]) -> str:
    """The label of a bucket in results and file names, e.g. ``1-500``."""
    return f"{bucket[0]}-{bucket[1]}"
