"""Generate the small sample datasets in this directory (no downloaded data, fully deterministic).

- ``hotpotqa.jsonl``: 60 LongBench-format records (input, context, answers, length, dataset, language,
  all_classes, _id) about invented people and places, whose prompts rendered with the default LongBench
  template cover 1-500, 500-1000 and 1000-2000 cl100k_base tokens (20 each).
- ``prompts.jsonl``: 42 generic records with ``id`` and ``prompt`` fields over the same ranges (14 each).

Usage: ``uv run python configs/data/make_samples.py [OUT_DIR]`` (default: this directory).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from fmbench.config import LongBenchDataset
from fmbench.datasets.tokenizer import load_tokenizer

RANGES = [(1, 500), (500, 1000), (1000, 2000)]
SEED = 20240611

_SYLLABLES = (
    "ka", "lo", "mi", "ren", "tas", "vel", "dor", "an", "is", "mer", "tol", "ber", "gan", "sel", "ri",
    "pa", "no", "vin", "cor", "lum", "hal", "ez", "ot", "ur",
)
_PLACES = (
    "Harrowmere", "Quillford", "Ostrava", "Vennick", "Brightwater", "Lorenhal", "Maplecross", "Duskvale",
    "Ironridge", "Saltmarsh",
)
_FIELDS = (
    "botany", "astronomy", "architecture", "chemistry", "linguistics", "geology", "cartography", "music",
    "economics", "medicine",
)
_WORKS = (
    "novel", "symphony", "treatise", "bridge", "observatory", "dictionary", "atlas", "opera", "cathedral",
    "survey",
)
_INSTITUTIONS = (
    "Royal Academy", "Northern University", "Institute of Letters", "City Museum", "Naval College",
)


def _name(rng: random.Random) -> str:
    def word() -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()

    return f"{word()} {word()}"


def _sentence(rng: random.Random, person: str, place: str) -> str:
    year = rng.randint(1700, 1990)
    templates = [
        f"{person} spent a quiet childhood near the old harbor of {place} and left it in {year}.",
        f"In {year}, {person} joined the {rng.choice(_INSTITUTIONS)} to study {rng.choice(_FIELDS)}.",
        f"The {rng.choice(_WORKS)} that {person} completed in {year} is still discussed by historians of {place}.",
        f"{place} is a town of about {rng.randint(2, 90)} thousand people on the river {rng.choice(_PLACES)}.",
        f"Local records from {year} describe a long dispute between {person} and the council of {place}.",
        f"Critics praised the clarity of {person}'s writing on {rng.choice(_FIELDS)}, though some found it severe.",
        f"After {year} the population of {place} grew quickly as the railway reached the valley.",
        f"{person} corresponded for many years with scholars in {rng.choice(_PLACES)} about {rng.choice(_FIELDS)}.",
    ]
    return rng.choice(templates)


def _passage(rng: random.Random, index: int, sentences: int) -> tuple[str, str, str]:
    person, place = _name(rng), rng.choice(_PLACES)
    born = f"{person} was born in {place} in {rng.randint(1700, 1990)}."
    body = " ".join([born, *(_sentence(rng, person, place) for _ in range(sentences - 1))])
    return f"Passage {index}:\n{person}\n{body}", person, place


def make_hotpotqa(count_per_range: int = 20) -> list[dict[str, object]]:
    """LongBench-format records whose rendered prompts fall evenly in `RANGES` (cl100k_base)."""
    tok = load_tokenizer("cl100k_base")
    template = LongBenchDataset.model_fields["prompt_template"].default
    rng = random.Random(SEED)
    records: list[dict[str, object]] = []
    for lo, hi in RANGES:
        for _ in range(count_per_range):
            target = rng.randint(lo + 40 if lo == 1 else lo + 10, hi - 10)
            passages: list[str] = []
            first: tuple[str, str] | None = None
            question = answer = ""
            n, tries = 0, 0
            while n < target and tries < 50:
                tries += 1
                text, person, place = _passage(rng, len(passages) + 1, rng.randint(1, 4) if tries < 10 else 1)
                subject = first or (person, place)
                which = "first" if passages else "only"
                q = f"In which town was {subject[0]}, the subject of the {which} passage, born?"
                trial_n = tok.count(template.format(context="\n\n".join([*passages, text]), input=q))
                if trial_n >= hi - 5:
                    continue  # too long for the range: draw a shorter passage
                passages.append(text)
                first, question, answer, n = subject, q, subject[1], trial_n
            if not lo <= n < hi:
                raise RuntimeError(f"record {len(records)}: {n} tokens, outside [{lo}, {hi})")
            context = "\n\n".join(passages)
            _id = hashlib.sha1(f"{SEED}:{len(records)}".encode()).hexdigest()[:24]
            records.append(
                {
                    "input": question,
                    "context": context,
                    "answers": [answer],
                    "length": len(context.split()),
                    "dataset": "hotpotqa",
                    "language": "en",
                    "all_classes": None,
                    "_id": _id,
                }
            )
    return records


_TASKS = [
    "Summarize the following notes in three bullet points.",
    "List every person and town mentioned in the text below.",
    "Rewrite the following text in plain language for a ten-year-old.",
    "Answer: which field of study appears most often in the text below?",
    "Translate the first two sentences of the text below into French.",
    "Write a one-paragraph review of the text below.",
]


def make_prompts(count_per_range: int = 14) -> list[dict[str, object]]:
    """Generic prompt records (``id``, ``prompt``, ``task``) spread over `RANGES` (cl100k_base)."""
    tok = load_tokenizer("cl100k_base")
    rng = random.Random(SEED + 1)
    records: list[dict[str, object]] = []
    for lo, hi in RANGES:
        for _ in range(count_per_range):
            target = rng.randint(lo + 20 if lo == 1 else lo + 10, hi - 10)
            task = rng.choice(_TASKS)
            person, place = _name(rng), rng.choice(_PLACES)
            body: list[str] = []
            prompt, n, tries = task, 0, 0
            while n < target and tries < 200:
                tries += 1
                sentence = _sentence(rng, person, place)
                trial = f"{task}\n\n" + " ".join([*body, sentence])
                trial_n = tok.count(trial)
                if trial_n >= hi - 5:
                    continue
                body.append(sentence)
                prompt, n = trial, trial_n
            if not lo <= n < hi:
                raise RuntimeError(f"prompt {len(records)}: {n} tokens, outside [{lo}, {hi})")
            records.append({"id": f"p{len(records) + 1:03d}", "task": task, "prompt": prompt})
    return records


def _write_jsonl(path: Path, records: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "hotpotqa.jsonl", make_hotpotqa())
    _write_jsonl(out / "prompts.jsonl", make_prompts())
    print(f"wrote {out / 'hotpotqa.jsonl'} and {out / 'prompts.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
