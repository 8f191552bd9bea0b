"""File sources: LongBench (local and hf:), generic JSONL, templates, and every error a user can cause."""

from __future__ import annotations

import io
import json
import socket
import time
import zipfile
from pathlib import Path

import pytest

from fmbench.config import JsonlDataset, LongBenchDataset
from fmbench.datasets import load_jsonl_prompts, load_longbench_prompts, render_template, template_fields
from fmbench.datasets.tokenizer import Tokenizer
from fmbench.errors import DatasetError
from tests.support.datasets import SAMPLES, seed_hub_file, write_jsonl


def _lb_record(i: int, **extra: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "input": f"Where was person {i} born?",
        "context": f"Passage 1:\nPerson {i} was born in Town {i}.",
        "answers": [f"Town {i}"],
        "length": 8,
        "dataset": "hotpotqa",
        "language": "en",
        "all_classes": None,
        "_id": f"id-{i}",
    }
    rec.update(extra)
    return rec


def lb(**kw: object) -> LongBenchDataset:
    return LongBenchDataset(name=str(kw.pop("name", "lb")), source="longbench", path=str(kw.pop("path", "x")), **kw)


def js(**kw: object) -> JsonlDataset:
    return JsonlDataset(name=str(kw.pop("name", "js")), source="jsonl", path=str(kw.pop("path", "x")), **kw)


# ---------------------------------------------------------------- LongBench


def test_longbench_renders_default_template(tmp_path: Path, cl100k: Tokenizer) -> None:
    path = write_jsonl(tmp_path / "lb.jsonl", [_lb_record(1), _lb_record(2)])
    prompts = load_longbench_prompts(lb(), path, cl100k)
    assert [p.prompt_id for p in prompts] == ["id-1", "id-2"]
    assert prompts[0].text == "Passage 1:\nPerson 1 was born in Town 1.\n\nQuestion: Where was person 1 born?\nAnswer:"
    assert prompts[0].input_tokens == cl100k.count(prompts[0].text)


def test_longbench_custom_template_and_line_number_ids(tmp_path: Path, cl100k: Tokenizer) -> None:
    recs = [_lb_record(1, _id=None), _lb_record(2)]
    del recs[1]["_id"]
    path = tmp_path / "lb.jsonl"
    path.write_text(json.dumps(recs[0]) + "\n\n" + json.dumps(recs[1]) + "\n")  # a blank line in between
    prompts = load_longbench_prompts(lb(prompt_template="[{language}] {input} ({answers[0]})"), path, cl100k)
    assert [p.prompt_id for p in prompts] == ["1", "3"]
    assert prompts[1].text == "[en] Where was person 2 born? (Town 2)"


def test_longbench_sample_file_covers_three_ranges(cl100k: Tokenizer) -> None:
    prompts = load_longbench_prompts(lb(name="hotpotqa"), SAMPLES / "hotpotqa.jsonl", cl100k)
    assert len(prompts) == 60
    ranges = [(1, 500), (500, 1000), (1000, 2000)]
    per_range = [sum(lo <= p.input_tokens < hi for p in prompts) for lo, hi in ranges]
    assert per_range == [20, 20, 20]
    assert len({p.prompt_id for p in prompts}) == 60


def test_longbench_template_naming_missing_field(tmp_path: Path, cl100k: Tokenizer) -> None:
    path = write_jsonl(tmp_path / "lb.jsonl", [_lb_record(1), _lb_record(2)])
    with pytest.raises(DatasetError) as err:
        load_longbench_prompts(lb(name="mine", prompt_template="{context} {question}"), path, cl100k)
    msg = str(err.value)
    assert "'mine'" in msg and f"{path} line 1" in msg and "{question}" in msg and "input" in msg


def _zip_with(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_longbench_hf_spec_offline_error(hub_cache: Path, cl100k: Tokenizer) -> None:
    with pytest.raises(DatasetError) as err:
        load_longbench_prompts(lb(name="hq", path="hf:THUDM/LongBench/hotpotqa"), "hf:THUDM/LongBench/hotpotqa", cl100k)
    msg = str(err.value)
    assert "'hq'" in msg and "hf:THUDM/LongBench/hotpotqa" in msg and "data.zip" in msg and "offline" in msg


def test_longbench_hf_spec_with_the_hub_unreachable_fails_at_once_in_one_line(
        hub_cache: Path, cl100k: Tokenizer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import huggingface_hub.constants as hfc

    # Not offline by setting: the network is gone (a hub nothing listens at), which huggingface_hub
    # retries with backoff, logging each attempt, for about 25 s.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    started = time.monotonic()
    with pytest.raises(DatasetError) as err:
        load_longbench_prompts(lb(name="hq", path="hf:THUDM/LongBench/hotpotqa"), "hf:THUDM/LongBench/hotpotqa", cl100k)
    assert time.monotonic() - started < 5
    assert str(err.value) == (f"dataset 'hq': hf:THUDM/LongBench/hotpotqa: THUDM/LongBench/data.zip (dataset "
                              f"repository on the Hugging Face hub): not in the local hub cache and the hub "
                              f"({endpoint}) cannot be reached (offline?); download it on a connected machine or "
                              "use a local file")
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_longbench_hf_spec_reads_subset_from_cached_archive(hub_cache: Path, cl100k: Tokenizer) -> None:
    jsonl = "".join(json.dumps(_lb_record(i)) + "\n" for i in range(3)).encode()
    seed_hub_file(hub_cache, "THUDM/LongBench", "dataset", "data.zip",
                  _zip_with({"data/hotpotqa.jsonl": jsonl, "data/qasper.jsonl": b"{}\n"}))
    spec = "hf:THUDM/LongBench/hotpotqa"
    prompts = load_longbench_prompts(lb(path=spec), spec, cl100k)
    assert [p.prompt_id for p in prompts] == ["id-0", "id-1", "id-2"]

    with pytest.raises(DatasetError) as err:
        load_longbench_prompts(lb(path="hf:THUDM/LongBench/nosuch"), "hf:THUDM/LongBench/nosuch", cl100k)
    assert "no subset 'nosuch'" in str(err.value) and "hotpotqa, qasper" in str(err.value)


def test_longbench_hf_spec_shape(cl100k: Tokenizer) -> None:
    with pytest.raises(DatasetError, match="expected hf:ORG/REPO/SUBSET"):
        load_longbench_prompts(lb(), "hf:THUDM/hotpotqa", cl100k)


# ---------------------------------------------------------------- generic JSONL


def test_jsonl_prompt_field_and_ids(tmp_path: Path, cl100k: Tokenizer) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Hello there"}, {"id": 2, "prompt": "Second one"}])
    prompts = load_jsonl_prompts(js(), path, cl100k)
    assert [(p.prompt_id, p.text, p.input_tokens) for p in prompts] == [("a", "Hello there", 2), ("2", "Second one", 2)]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hello there"}, {"prompt": "Second one", "x": 1}])
    assert [p.prompt_id for p in load_jsonl_prompts(js(), path, cl100k)] == ["1", "2"]  # no ids: line numbers


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        # A line number would be the id of an id-less record: here "2", the id line 3 gives.
        ([{"id": "q1", "prompt": "A"}, {"prompt": "B"}, {"id": 2, "prompt": "C"}],
         "line 2: no 'id' field, but line 1 has one; give every record an 'id' or none"),
        ([{"prompt": "A"}, {"id": 1, "prompt": "B"}], "line 2: 'id' is '1', but line 1 has none; give every record"),
        ([{"id": "q1", "prompt": "A"}, {"id": "q2", "prompt": "B"}, {"id": "q1", "prompt": "C"}],
         "line 3: 'id' 'q1' repeats the id of line 1 (prompt ids must be unique"),
        ([{"id": 7, "prompt": "A"}, {"id": "7", "prompt": "B"}], "line 2: 'id' '7' repeats the id of line 1"),
    ],
)
def test_jsonl_prompt_ids_cannot_collide(
    tmp_path: Path, cl100k: Tokenizer, records: list[dict[str, object]], expected: str
) -> None:
    """Quality evaluation finds a prompt's answers by its id: two prompts must never share one."""
    path = write_jsonl(tmp_path / "p.jsonl", records)
    with pytest.raises(DatasetError) as err:
        load_jsonl_prompts(js(name="ids", answer_field="answer"), path, cl100k)
    assert str(err.value).startswith(f"dataset 'ids': {path} {expected}")


def test_longbench_repeated_id_is_an_error(tmp_path: Path, cl100k: Tokenizer) -> None:
    path = write_jsonl(tmp_path / "lb.jsonl", [_lb_record(1), _lb_record(2), _lb_record(3, _id="id-1")])
    with pytest.raises(DatasetError) as err:
        load_longbench_prompts(lb(name="lb"), path, cl100k)
    assert str(err.value).startswith(f"dataset 'lb': {path} line 3: '_id' 'id-1' repeats the id of line 1")


def test_jsonl_other_field_and_template(tmp_path: Path, cl100k: Tokenizer) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": 7, "q": "Why?", "ctx": "Because."}])
    assert load_jsonl_prompts(js(prompt_field="q"), path, cl100k)[0].text == "Why?"
    prompts = load_jsonl_prompts(js(prompt_template="Context: {ctx}\nQ: {q}"), path, cl100k)
    assert prompts[0].text == "Context: Because.\nQ: Why?" and prompts[0].prompt_id == "7"


def test_jsonl_sample_file(cl100k: Tokenizer) -> None:
    prompts = load_jsonl_prompts(js(name="prompts"), SAMPLES / "prompts.jsonl", cl100k)
    assert len(prompts) == 42
    per_range = [sum(lo <= p.input_tokens < hi for p in prompts) for lo, hi in [(1, 500), (500, 1000), (1000, 2000)]]
    assert per_range == [14, 14, 14]


def test_blank_prompts_are_skipped(tmp_path: Path, cl100k: Tokenizer) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "  "}, {"prompt": "Real"}])
    assert [p.prompt_id for p in load_jsonl_prompts(js(), path, cl100k)] == ["2"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", ["is empty"]),
        (b"\n  \n", ["is empty"]),
        (b'{"prompt": "ok"}\n{"prompt": oops}\n', ["line 2", "not valid JSON"]),
        (b'{"prompt": "ok"}\n[1, 2]\n', ["line 2", "expected a JSON object, got list"]),
        (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', ["not UTF-8", "line 2, offset 32"]),
        (b'\xef\xbb\xbf{"prompt": "ok"}\n\xff{"prompt": "x"}\n', ["not UTF-8", "line 2, offset 20"]),  # BOM counted
        (b'{"prompt": "ok"}\n{"text": "no prompt"}\n', ["line 2", "no field 'prompt'", "text"]),
        (b'{"prompt": 5}\n', ["line 1", "field 'prompt' is int"]),
        (b'{"prompt": ""}\n{"prompt": " "}\n', ["no prompts", "all 2 records"]),
    ],
)
def test_jsonl_errors_name_dataset_file_and_line(
    tmp_path: Path, cl100k: Tokenizer, content: bytes, expected: list[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as err:
        load_jsonl_prompts(js(name="badset"), path, cl100k)
    msg = str(err.value)
    assert "'badset'" in msg and str(path) in msg
    for part in expected:
        assert part in msg


def test_a_line_nested_too_deeply_is_not_valid_json(tmp_path: Path, cl100k: Tokenizer) -> None:
    """The JSON decoder recurses once per level: a line nested past the recursion limit is a bad line,
    not a RecursionError, in both file sources."""
    deep = b'{"prompt": "ok", "input": "ok", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b'{"prompt": "ok", "input": "ok"}\n' + deep)
    for load, ds in ((load_jsonl_prompts, js(name="deep")), (load_longbench_prompts, lb(name="deep"))):
        with pytest.raises(DatasetError) as err:
            load(ds, path, cl100k)  # type: ignore[operator]
        assert str(err.value) == f"dataset 'deep': {path} line 2: not valid JSON (nested too deeply for a record)"


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path: Path, cl100k: Tokenizer) -> None:
    """JSON allows U+2028, U+2029, U+0085 and control separators unescaped in strings; only "\\n" ends a line."""
    seps = ["\u2028", "\u2029", "\x85", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c"]
    lines = [json.dumps({"id": f"s{i}", "prompt": f"one{sep}two"}, ensure_ascii=False) for i, sep in enumerate(seps)]
    path = tmp_path / "p.jsonl"
    path.write_bytes(("\r\n".join(lines) + "\r\n\r\n" + '{"prompt": oops}\r\n').encode("utf-8"))
    with pytest.raises(DatasetError) as err:
        load_jsonl_prompts(js(), path, cl100k)
    assert f"line {len(seps) + 2}: not valid JSON" in str(err.value)  # line numbers count "\n" only

    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    prompts = load_jsonl_prompts(js(), path, cl100k)
    assert [(p.prompt_id, p.text) for p in prompts] == [(f"s{i}", f"one{sep}two") for i, sep in enumerate(seps)]


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (r'{"id": "b", "prompt": "broken emoji \ud83d here"}', "prompt"),
        (r'{"id": "b", "prompt": "fine", "answer": ["ok", "\udc00"]}', "answer[1]"),
        (r'{"id": "q\ud800", "prompt": "fine"}', "id"),
    ],
)
def test_jsonl_lone_surrogate_escape_names_line_and_field(
    tmp_path: Path, cl100k: Tokenizer, line: str, field: str
) -> None:
    """An escaped half of a UTF-16 pair is valid JSON but not text: say where, instead of failing later."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "an emoji \\ud83d\\ude00 pair is fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_jsonl_prompts(js(name="sur", answer_field="answer"), path, cl100k)
    assert str(err.value).startswith(f"dataset 'sur': {path} line 2: field {field!r} holds an unpaired UTF-16 surrogate")

    # In a field no prompt uses, it does no harm.
    path.write_text('{"prompt": "an emoji \\ud83d\\ude00 pair is fine", "note": "\\ud83d"}\n', encoding="utf-8")
    assert [p.text for p in load_jsonl_prompts(js(), path, cl100k)] == ["an emoji \U0001f600 pair is fine"]


def test_missing_file_names_dataset_and_path(tmp_path: Path, cl100k: Tokenizer) -> None:
    missing = tmp_path / "nope.jsonl"
    for load, ds in ((load_jsonl_prompts, js(name="gone")), (load_longbench_prompts, lb(name="gone"))):
        with pytest.raises(DatasetError) as err:
            load(ds, missing, cl100k)  # type: ignore[operator]
        assert str(err.value) == f"dataset 'gone': file not found: {missing}"


def test_template_naming_missing_field_in_jsonl(tmp_path: Path, cl100k: Tokenizer) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "a", "c": "b"}, {"q": "only q"}])
    with pytest.raises(DatasetError) as err:
        load_jsonl_prompts(js(prompt_template="{c}: {q}"), path, cl100k)
    assert f"{path} line 2" in str(err.value) and "{c}" in str(err.value)


@pytest.mark.parametrize(
    ("template", "expected"),
    [("{}: {q}", "positional field"), ("{0}", "positional field"), ("{q", "invalid template"), ("q}", "invalid template")],
)
def test_bad_templates_fail_before_reading(tmp_path: Path, cl100k: Tokenizer, template: str, expected: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "a"}])
    with pytest.raises(DatasetError) as err:
        load_jsonl_prompts(js(name="tpl", prompt_template=template), path, cl100k)
    assert "'tpl': prompt_template" in str(err.value) and expected in str(err.value)


def test_template_helpers() -> None:
    assert template_fields("{context}\n{input} {context} {answers[0]} {{literal}}") == ["context", "input", "answers"]
    assert render_template("{a}-{b}", {"a": 1, "b": "x"}, "here") == "1-x"
    with pytest.raises(DatasetError, match=r"^here: template field \{b\} is missing"):
        render_template("{a}-{b}", {"a": 1}, "here")
    with pytest.raises(DatasetError, match="^here: cannot render"):
        render_template("{a[5]}", {"a": [1]}, "here")
