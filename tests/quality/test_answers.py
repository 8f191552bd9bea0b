"""Datasets carry their reference answers to the prompts: LongBench ``answers``, a JSONL ``answer_field``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmbench.config import JsonlDataset, LongBenchDataset
from fmbench.datasets import load_jsonl_prompts, load_longbench_prompts, load_tokenizer
from fmbench.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_longbench_answers_reach_the_prompts() -> None:
    ds = LongBenchDataset(name="hotpotqa", source="longbench", path="data/hotpotqa.jsonl")
    prompts = load_longbench_prompts(ds, ROOT / "configs" / "data" / "hotpotqa.jsonl", load_tokenizer("cl100k_base"))
    assert prompts and all(p.answers for p in prompts)
    first = json.loads((ROOT / "configs" / "data" / "hotpotqa.jsonl").read_text().splitlines()[0])
    assert prompts[0].answers == tuple(first["answers"])


def test_jsonl_answer_field_string_list_or_absent(tmp_path: Path) -> None:
    path = _write(tmp_path / "qa.jsonl", [
        {"prompt": "q1", "answer": "Paris"},
        {"prompt": "q2", "answer": ["Lyon", "the city of Lyon"]},
        {"prompt": "q3"},
    ])
    ds = JsonlDataset(name="qa", source="jsonl", path="qa.jsonl", answer_field="answer")
    prompts = load_jsonl_prompts(ds, path, load_tokenizer("cl100k_base"))
    assert [p.answers for p in prompts] == [("Paris",), ("Lyon", "the city of Lyon"), ()]
    without = load_jsonl_prompts(JsonlDataset(name="qa", source="jsonl", path="qa.jsonl"), path,
                                 load_tokenizer("cl100k_base"))
    assert all(p.answers == () for p in without)


def test_a_bad_answer_field_is_one_line_naming_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "qa.jsonl", [{"prompt": "q1", "answer": "x"}, {"prompt": "q2", "answer": 7}])
    ds = JsonlDataset(name="qa", source="jsonl", path="qa.jsonl", answer_field="answer")
    with pytest.raises(DatasetError, match=r"dataset 'qa': .*qa\.jsonl line 2: field 'answer' is int, expected a "
                                           r"string or a list of strings"):
        load_jsonl_prompts(ds, path, load_tokenizer("cl100k_base"))


def test_only_the_simulated_endpoint_is_sent_the_reference_answers() -> None:
    from fmbench.config import InferenceConfig, OpenAIEndpoint, SimulatedEndpoint
    from fmbench.endpoints import make_client
    from fmbench.protocol import ANSWERS_FIELD, Prompt

    prompt = Prompt("p1", "Which city?", 3, ("Paris",))
    inference = InferenceConfig()
    real = make_client(OpenAIEndpoint(provider="openai", base_url="http://127.0.0.1:1/v1", model="m"), inference)
    assert ANSWERS_FIELD not in json.loads(real._payload(prompt).decode())  # type: ignore[attr-defined]
    sim = SimulatedEndpoint(provider="simulated", answer_accuracy=0.5)
    body = json.loads(make_client(sim, inference, url="http://127.0.0.1:1")._payload(prompt).decode())  # type: ignore[attr-defined]
    assert body[ANSWERS_FIELD] == ["Paris"]
    plain = make_client(SimulatedEndpoint(provider="simulated"), inference, url="http://127.0.0.1:1")
    assert ANSWERS_FIELD not in json.loads(plain._payload(prompt).decode())  # type: ignore[attr-defined]
