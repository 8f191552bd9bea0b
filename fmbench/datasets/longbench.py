"""The LongBench source: JSONL records (input, context, answers, length, dataset, language, all_classes,
_id) rendered through a prompt template, from a local file or ``hf:ORG/REPO/SUBSET`` on the hub.

LongBench on the hub (``THUDM/LongBench``) ships its JSONL files inside ``data.zip`` as
``data/SUBSET.jsonl``; that archive is downloaded once into the hub cache and the subset read from it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from fmbench.config import LongBenchDataset
from fmbench.config.models import HUB_SPEC_SHAPE, split_hub_spec
from fmbench.datasets._hub import check_hub_file, hub_download
from fmbench.datasets.jsonl import Record, answer_values, parse_jsonl, read_file_bytes, records_to_prompts
from fmbench.datasets.template import render_template, template_fields
from fmbench.datasets.tokenizer import Tokenizer
from fmbench.errors import DatasetError
from fmbench.protocol import Prompt

HUB_ARCHIVE = "data.zip"


def parse_hub_spec(spec: str, dataset: str) -> tuple[str, str]:
    """Split ``hf:ORG/REPO/SUBSET`` into the repo id and the subset name.

    Raises:
        DatasetError: the spec does not have that shape.
    """
    parts = split_hub_spec(spec)
    if parts is None:  # (a validated config never gets here: LongBenchDataset checks its path)
        raise DatasetError(f"dataset {dataset!r}: path {spec!r}: {HUB_SPEC_SHAPE}")
    return parts


def check_hub_subset(spec: str, dataset: str) -> None:
    """Fail at once when the archive of an ``hf:`` subset is not cached and the hub cannot be reached.

    Raises:
        DatasetError: naming the dataset and its spec.
    """
    repo_id, _ = parse_hub_spec(spec, dataset)
    try:
        check_hub_file(repo_id, HUB_ARCHIVE, repo_type="dataset")
    except DatasetError as exc:
        raise DatasetError(f"dataset {dataset!r}: {spec}: {exc}") from exc


def read_hub_subset(spec: str, dataset: str) -> bytes:
    """The JSONL bytes of one LongBench subset from the hub (via the local hub cache).

    Raises:
        DatasetError: offline and not cached, not a zip archive, or no such subset in it.
    """
    repo_id, subset = parse_hub_spec(spec, dataset)
    try:
        archive = hub_download(repo_id, HUB_ARCHIVE, repo_type="dataset")
    except DatasetError as exc:
        raise DatasetError(f"dataset {dataset!r}: {spec}: {exc}") from exc
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            for member in (f"data/{subset}.jsonl", f"{subset}.jsonl"):
                if member in names:
                    return zf.read(member)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"dataset {dataset!r}: {spec}: {archive} is not a readable zip archive ({exc})") from exc
    available = sorted(Path(n).stem for n in names if n.endswith(".jsonl"))
    raise DatasetError(
        f"dataset {dataset!r}: {spec}: no subset {subset!r} in {repo_id}/{HUB_ARCHIVE} "
        f"(available: {', '.join(available) or 'none'})"
    )


def load_longbench_prompts(dataset: LongBenchDataset, location: str | Path, tokenizer: Tokenizer) -> list[Prompt]:
    """Read a LongBench dataset and render each record with ``dataset.prompt_template``.

    Args:
        dataset: the dataset config.
        location: a local JSONL path, or ``hf:ORG/REPO/SUBSET``.
        tokenizer: counts ``input_tokens``.

    Returns:
        One prompt per record, in file order; the prompt id is ``_id``, or the line number when no
        record has one.

    Raises:
        DatasetError: for any problem with the file, a record, a field, the template or the ids
            (repeated, or given for some records only).
    """
    template = dataset.prompt_template
    template_fields(template, where=f"dataset {dataset.name!r}: prompt_template")
    if isinstance(location, str) and location.startswith("hf:"):
        source = location
        data = read_hub_subset(location, dataset.name)
    else:
        source = str(location)
        data = read_file_bytes(Path(location), dataset.name)
    records = parse_jsonl(data, source, dataset.name)

    def text_of(lineno: int, rec: Record) -> str:
        return render_template(template, rec, f"dataset {dataset.name!r}: {source} line {lineno}")

    def answers_of(lineno: int, rec: Record) -> tuple[str, ...]:
        return answer_values(rec, "answers", f"dataset {dataset.name!r}: {source} line {lineno}", required=False)

    return records_to_prompts(records, text_of, "_id", source, dataset.name, tokenizer, answers_of)
