"""The judge prompt, strict verdict parsing and the panel's majority vote."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmbench.errors import ConfigError
from fmbench.pipeline import load_benchmark_config
from fmbench.quality.judge import (
    check_template,
    default_template,
    majority_vote,
    parse_verdict,
    render_judge_prompt,
)


def test_shipped_template_renders_question_references_and_candidate() -> None:
    text = render_judge_prompt(default_template(), "Who wrote it? {not a field}", ["Ann", "Bob"], "It was {Ann}")
    assert "<candidate>\nIt was {Ann}\n</candidate>" in text
    assert "- Ann\n- Bob" in text
    assert "Who wrote it? {not a field}" in text


@pytest.mark.parametrize(("reply", "verdict"), [
    ("VERDICT: CORRECT", "correct"),
    ("The answers match.\nVERDICT: INCORRECT\n", "incorrect"),
    ("  VERDICT:   CORRECT  ", "correct"),
    ("correct", "unparseable"),
    ("VERDICT: correct", "unparseable"),  # strict: the format says CORRECT
    ("VERDICT: MAYBE", "unparseable"),
    ("Verdict is CORRECT", "unparseable"),
    ("VERDICT: CORRECT\nVERDICT: INCORRECT", "unparseable"),  # two verdicts: never guessed
    ("", "unparseable"),
])
def test_verdicts_are_parsed_strictly(reply: str, verdict: str) -> None:
    assert parse_verdict(reply) == verdict


def test_majority_of_the_whole_panel() -> None:
    assert majority_vote(["correct", "correct", "incorrect"]) == "correct"
    assert majority_vote(["incorrect", "correct", "incorrect"]) == "incorrect"
    # a failed or unparseable judge votes for nothing but still counts in the panel
    assert majority_vote(["correct", "incorrect", "error"]) == "undecided"
    assert majority_vote(["correct", "correct", "unparseable"]) == "correct"
    assert majority_vote(["correct", "unparseable", "error"]) == "undecided"
    assert majority_vote(["correct", "incorrect"]) == "undecided"
    assert majority_vote(["incorrect"]) == "incorrect"
    assert majority_vote([]) == "undecided"


def test_replacement_templates_are_checked() -> None:
    assert check_template("Q {question} A {candidate}", "x") == "Q {question} A {candidate}"
    with pytest.raises(ConfigError, match="unknown template field.*answer"):
        check_template("{answer} {candidate}", "evaluation.judge_prompt")
    with pytest.raises(ConfigError, match="must use \\{candidate\\}"):
        check_template("{question}", "evaluation.judge_prompt")


def test_validate_checks_the_judge_template_and_prices(tmp_path: Path) -> None:
    base = ("name: t\nbuckets: [[1, 10]]\ndatasets: [{name: d, source: synthetic}]\n"
            "experiments: [{name: e, endpoint: {provider: simulated}}]\n")
    good = tmp_path / "good.yml"
    good.write_text(base + "evaluation: {judges: [{name: j, endpoint: {provider: simulated}}]}\n")
    load_benchmark_config(str(good))
    missing = tmp_path / "missing.yml"
    missing.write_text(base + "evaluation: {judge_prompt: nope.txt}\n")
    with pytest.raises(ConfigError, match=r"evaluation.judge_prompt: cannot read .*nope\.txt"):
        load_benchmark_config(str(missing))
    (tmp_path / "bad.txt").write_text("Grade {answer}")
    bad = tmp_path / "bad.yml"
    bad.write_text(base + "evaluation: {judge_prompt: bad.txt}\n")
    with pytest.raises(ConfigError, match="unknown template field"):
        load_benchmark_config(str(bad))
    unpriced = tmp_path / "unpriced.yml"
    unpriced.write_text(base + "evaluation: {judges: [{name: j, endpoint: {provider: simulated}, "
                        "pricing: {instance_type: ml.nope.huge}}]}\n")
    with pytest.raises(ConfigError, match=r"evaluation.judges.0 \(j\)"):
        load_benchmark_config(str(unpriced))
