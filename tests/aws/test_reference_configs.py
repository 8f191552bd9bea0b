"""The reference configs in configs/ load, say what they measure, and are priced."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmbench.config import BedrockEndpoint, OpenAIEndpoint, SageMakerEndpoint, load_config, resolve_path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REFERENCE = {
    "sagemaker-llama3-8b-g5-2xlarge.yml": SageMakerEndpoint,
    "sagemaker-llama3-8b-g5-12xlarge.yml": SageMakerEndpoint,
    "sagemaker-llama3-70b-p4d.yml": SageMakerEndpoint,
    "sagemaker-inf2-neuron-lmi.yml": SageMakerEndpoint,
    "sagemaker-byo-vllm-g6e.yml": SageMakerEndpoint,
    "sagemaker-existing-endpoint.yml": SageMakerEndpoint,
    "bedrock-llama3.yml": BedrockEndpoint,
    "bedrock-claude.yml": BedrockEndpoint,
    "bedrock-claude-inference-profile.yml": BedrockEndpoint,
    "vllm-selfhosted.yml": OpenAIEndpoint,
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_config_loads_and_is_complete(name: str) -> None:
    path = CONFIGS / name
    text = path.read_text()
    assert text.startswith("# ") and "Measures" in text.split("\nname:")[0], "top comment says what it measures"
    cfg = load_config(path)
    assert cfg.name == path.stem
    for dataset in cfg.datasets:
        if getattr(dataset, "path", None):
            assert resolve_path(cfg, dataset.path).is_file(), dataset.path
    for exp in cfg.experiments:
        assert isinstance(exp.endpoint, REFERENCE[name])
        assert len(exp.concurrency_levels) >= 4 and exp.concurrency_levels[0] == 1
        assert exp.inference.stream
        assert exp.pricing is not None


#: The tokenizer each reference config's experiments bucket with: the model's own where it is public.
TOKENIZERS = {
    "sagemaker-llama3-8b-g5-2xlarge.yml": "hf:meta-llama/Meta-Llama-3-8B-Instruct",
    "sagemaker-llama3-8b-g5-12xlarge.yml": "hf:meta-llama/Meta-Llama-3-8B-Instruct",
    "sagemaker-llama3-70b-p4d.yml": "hf:meta-llama/Meta-Llama-3-70B-Instruct",
    "sagemaker-inf2-neuron-lmi.yml": "hf:meta-llama/Meta-Llama-3-8B-Instruct",
    "sagemaker-byo-vllm-g6e.yml": "hf:Qwen/Qwen2.5-7B-Instruct",
    "sagemaker-existing-endpoint.yml": "cl100k_base",
    "bedrock-llama3.yml": "hf:meta-llama/Meta-Llama-3-8B-Instruct",
    "bedrock-claude.yml": "cl100k_base",
    "bedrock-claude-inference-profile.yml": "cl100k_base",
    "vllm-selfhosted.yml": "hf:meta-llama/Meta-Llama-3-8B-Instruct",
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_config_names_its_models_tokenizer_and_validates_offline(
        name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fmbench.pipeline import load_benchmark_config

    # Validation reads no tokenizer data: an unreachable hub and an empty cache change nothing.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    cfg = load_benchmark_config(str(CONFIGS / name))
    assert {cfg.tokenizer_for(e) for e in cfg.experiments} == {TOKENIZERS[name]}
    if "claude" in name:
        assert "Claude's tokenizer is not public: cl100k_base is the stated approximation" in (CONFIGS / name).read_text()


def test_reference_run_needing_a_download_offline_fails_before_measuring(tmp_path: Path) -> None:
    """`fmbench run` of a config whose tokenizer is on the hub, offline with an empty hub cache:
    one line naming the experiment's field and what to do, exit 2, nothing written or sent."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf-cache"), PREFECT_HOME=str(tmp_path / "ph"),
               PYTHONPATH=str(CONFIGS.parent))
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "fmbench", "run", str(CONFIGS / "vllm-selfhosted.yml"),
                           "--output", str(out)], env=env, cwd=CONFIGS.parent, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("fmbench: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith("fmbench: error: experiments[vllm-llama3-8b].tokenizer: tokenizer "
                                "'hf:meta-llama/Meta-Llama-3-8B-Instruct': tokenizer.json is not in the Hugging Face "
                                f"cache ({tmp_path / 'hf-cache'})")
    assert "`hf download meta-llama/Meta-Llama-3-8B-Instruct tokenizer.json`" in errors[0]
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_config_prices_resolve(name: str) -> None:
    from fmbench.pricing.resolve import resolve_pricing

    for exp in load_config(CONFIGS / name).experiments:
        priced = resolve_pricing(exp)
        assert priced.known
        if isinstance(exp.endpoint, BedrockEndpoint):
            assert priced.model == "token" and priced.input_per_1k_usd and priced.output_per_1k_usd
        else:
            assert priced.model == "instance" and priced.hourly_usd and priced.hourly_usd > 0


def test_sagemaker_reference_sources() -> None:
    def endpoint(name: str, index: int = 0) -> SageMakerEndpoint:
        ep = load_config(CONFIGS / name).experiments[index].endpoint
        assert isinstance(ep, SageMakerEndpoint)
        return ep

    for name, instance in [("sagemaker-llama3-8b-g5-2xlarge.yml", "ml.g5.2xlarge"),
                           ("sagemaker-llama3-8b-g5-12xlarge.yml", "ml.g5.12xlarge")]:
        ep = endpoint(name)
        assert ep.jumpstart_model_id == "meta-textgeneration-llama-3-8b-instruct" and ep.accept_eula
        assert ep.instance_type == instance
    assert endpoint("sagemaker-llama3-70b-p4d.yml").instance_type == "ml.p4d.24xlarge"
    inf2 = endpoint("sagemaker-inf2-neuron-lmi.yml")
    assert inf2.instance_type.startswith("ml.inf2.") and "neuronx" in (inf2.image_uri or "")
    assert inf2.serving_properties and "option.tensor_parallel_degree" in inf2.serving_properties
    byo = [endpoint("sagemaker-byo-vllm-g6e.yml", i) for i in (0, 1)]
    assert all(ep.instance_type.startswith("ml.g6e.") and ep.image_uri for ep in byo)  # type: ignore[union-attr]
    assert byo[1].serving_properties == {**byo[1].serving_properties, "option.rolling_batch": "vllm"}  # type: ignore[dict-item]
    existing = endpoint("sagemaker-existing-endpoint.yml")
    assert existing.endpoint_name and not existing.image_uri and not existing.jumpstart_model_id


def test_bedrock_reference_model_ids() -> None:
    ids = [load_config(CONFIGS / n).experiments[0].endpoint.model_id  # type: ignore[union-attr]
           for n in ("bedrock-llama3.yml", "bedrock-claude.yml", "bedrock-claude-inference-profile.yml")]
    assert ids[0].startswith("meta.llama3") and ids[1].startswith("anthropic.claude")
    assert ids[2].startswith("us.anthropic.")  # a cross-region inference profile


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_datasets_render_into_every_bucket(name: str) -> None:
    """With cl100k_base (the models' hub tokenizers cannot be fetched offline; Llama 3's vocabulary
    extends cl100k's, so its counts are close)."""
    from fmbench.datasets import build_dataset_prompts, load_run_tokenizer

    cfg = load_config(CONFIGS / name)
    tokenizer = load_run_tokenizer(cfg)
    for dataset in cfg.datasets:
        bucketed = build_dataset_prompts(cfg, dataset, tokenizer)
        assert all(bucketed.buckets.values()), f"{dataset.name}: empty bucket in {bucketed.notes}"
        if "begin_of_text" in (getattr(dataset, "prompt_template", None) or ""):
            first = next(iter(bucketed.buckets.values()))[0]
            assert first.text.startswith("<|begin_of_text|><|start_header_id|>user")
            assert first.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
