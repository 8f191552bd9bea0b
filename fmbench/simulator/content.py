"""What the simulated endpoint says, beside its generated words: a reference answer (the seeded
answer model) or a judge's verdict (the simulated judge).

The answer model answers a request whose body carries ``fmbench_answers`` (the prompt's reference
answers, sent by fmbench's client for a simulated endpoint with ``answer_accuracy``): with that
probability one of the references, otherwise unrelated words. A prompt with ``<candidate>`` and
``<reference>`` blocks (fmbench's shipped judge template) is judged: the verdict says whether the
candidate gives a reference answer, flipped with ``judge_error_rate``, and replaced by a reply
without a verdict line with ``judge_malformed_rate``. Every draw is seeded by the server seed and
the prompt, so a run is repeatable and two judges with different seeds err independently.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fmbench.protocol import ANSWERS_FIELD
from fmbench.simulator.text import VOCABULARY, text_seed

_CANDIDATE = re.compile(r"<candidate>\s*(.*?)\s*</candidate>", re.DOTALL)
_REFERENCE = re.compile(r"<reference>\s*(.*?)\s*</reference>", re.DOTALL)
_PIECE = re.compile(r"\s*\S+")
_PUNCT_ARTICLES = re.compile(r"[^\w\s]|\b(a|an|the)\b")


@dataclass(frozen=True, slots=True)
class ContentModel:
    """The answer model's and the judge's settings (from the simulated endpoint's config)."""

    seed: int = 0
    answer_accuracy: float | None = None
    judge_error_rate: float = 0.0
    judge_malformed_rate: float = 0.0


def _norm(text: str) -> str:
    return " ".join(_PUNCT_ARTICLES.sub(" ", text.lower()).split())


def pieces(text: str) -> list[str]:
    """The text as output tokens (one whitespace-led word each); joined they give the text back."""
    return _PIECE.findall(text.strip())


def judge_reply(model: ContentModel, prompt: str) -> str | None:
    """The simulated judge's reply to a judge prompt, or None when ``prompt`` is not one."""
    cand, ref = _CANDIDATE.search(prompt), _REFERENCE.search(prompt)
    if cand is None or ref is None:
        return None
    references = [r.strip().removeprefix("- ")
                  for r in ref.group(1).splitlines() if r.strip()]
    candidate = _norm(cand.group(1))
    right = bool(candidate) and any(_norm(r) and (_norm(r) == candidate or f" {_norm(r)} " in f" {candidate} ")
                                    for r in references)
    rng = random.Random(text_seed(model.seed, "judge\x00" + prompt))
    u = rng.random()
    if u < model.judge_malformed_rate:
        return "The candidate may or may not answer the question; I cannot tell."
    if u < model.judge_malformed_rate + model.judge_error_rate:
        right = not right
    if right:
        return "The candidate gives the reference answer.\nVERDICT: CORRECT"
    return "The candidate does not give any reference answer.\nVERDICT: INCORRECT"


def model_answer(model: ContentModel, content: str, answers: Sequence[str]) -> str | None:
    """The answer model's reply: a reference with probability ``answer_accuracy``, else unrelated
    words; None when the model is off or the request carries no references."""
    if model.answer_accuracy is None or not answers:
        return None
    rng = random.Random(text_seed(model.seed, "answer\x00" + content))
    if rng.random() < model.answer_accuracy:
        return rng.choice(list(answers))
    return "".join(rng.choice(VOCABULARY) for _ in range(rng.randint(3, 8))).strip()


def choose_reply(model: ContentModel, content: str, answers: Sequence[str]) -> list[str] | None:
    """The reply's output tokens when it is a verdict or a model answer; None: generated words."""
    reply = judge_reply(model, content)
    if reply is None:
        reply = model_answer(model, content, answers)
    return pieces(reply) if reply is not None else None


def content_model(cfg: Any) -> ContentModel:
    """The content settings of a `SimulatedEndpoint` config."""
    return ContentModel(seed=cfg.seed, answer_accuracy=getattr(cfg, "answer_accuracy", None),
                        judge_error_rate=getattr(cfg, "judge_error_rate", 0.0),
                        judge_malformed_rate=getattr(cfg, "judge_malformed_rate", 0.0))


def request_answers(body: Any) -> list[str]:
    """The reference answers a request body carries (``fmbench_answers``), or none; malformed ones are
    ignored, as a real server ignores fields it does not know."""
    value = body.get(ANSWERS_FIELD) if isinstance(body, dict) else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return []
