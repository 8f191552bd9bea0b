"""The simulator's answer model and judge: what it says, seeded, with the configured rates."""

from __future__ import annotations

from fmbench.quality.judge import default_template, parse_verdict, render_judge_prompt
from fmbench.quality.scores import exact_match
from fmbench.simulator.content import ContentModel, choose_reply, judge_reply, model_answer, pieces


def test_pieces_join_back_to_the_text() -> None:
    text = "The candidate gives the reference answer.\nVERDICT: CORRECT"
    assert "".join(pieces(text)) == text
    assert pieces("Paris") == ["Paris"]


def test_answer_model_answers_a_reference_with_the_configured_probability() -> None:
    model = ContentModel(seed=3, answer_accuracy=0.3)
    n = 2000
    right = sum(exact_match(model_answer(model, f"question {i}", [f"Zanzibar {i}"]) or "", f"Zanzibar {i}")
                for i in range(n))
    assert 0.26 < right / n < 0.34
    # seeded by the prompt: the same question gets the same answer
    assert model_answer(model, "question 7", ["x"]) == model_answer(model, "question 7", ["x"])
    assert model_answer(ContentModel(), "q", ["x"]) is None  # off unless configured
    assert model_answer(model, "q", []) is None  # no references in the request


def _judge_prompt(candidate: str, refs: list[str]) -> str:
    return render_judge_prompt(default_template(), "Which city?", refs, candidate)


def test_judge_reads_candidate_and_references_from_the_shipped_template() -> None:
    honest = ContentModel(seed=1)
    assert parse_verdict(judge_reply(honest, _judge_prompt("the city of Paris.", ["Paris"])) or "") == "correct"
    assert parse_verdict(judge_reply(honest, _judge_prompt("London", ["Paris", "Lutetia"])) or "") == "incorrect"
    assert judge_reply(honest, "Just a question, no judge blocks") is None


def test_judge_error_and_malformed_rates() -> None:
    n = 1000
    prompts = [_judge_prompt(f"Zanzibar {i}", [f"Zanzibar {i}"]) for i in range(n)]
    flipper = ContentModel(seed=2, judge_error_rate=0.2, judge_malformed_rate=0.1)
    verdicts = [parse_verdict(judge_reply(flipper, p) or "") for p in prompts]
    assert 0.06 < verdicts.count("unparseable") / n < 0.14
    assert 0.16 < verdicts.count("incorrect") / n < 0.24
    always_wrong = ContentModel(seed=2, judge_error_rate=1.0)
    assert {parse_verdict(judge_reply(always_wrong, p) or "") for p in prompts[:50]} == {"incorrect"}


def test_a_judge_prompt_wins_over_the_answer_model() -> None:
    both = ContentModel(seed=1, answer_accuracy=1.0)
    reply = choose_reply(both, _judge_prompt("Paris", ["Paris"]), ["Paris"])
    assert reply is not None and parse_verdict("".join(reply)) == "correct"
    assert choose_reply(both, "plain question", ["Paris"]) == ["Paris"]
    assert choose_reply(ContentModel(seed=1), "plain question", ["Paris"]) is None
