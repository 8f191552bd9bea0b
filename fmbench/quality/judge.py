"""The LLM-judge panel's text side: the judge prompt, strict verdict parsing and the majority vote.

The shipped template (``judge_prompt.txt``, fields ``{question}``, ``{references}``,
``{candidate}``) can be replaced per config. A judge's reply must contain exactly one line
``VERDICT: CORRECT`` or ``VERDICT: INCORRECT``; anything else is *unparseable* and counted as
such, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from typing import Literal

from fmbench.datasets.template import render_template, template_fields
from fmbench.errors import ConfigError, DatasetError

Verdict = Literal["correct", "incorrect", "unparseable", "error"]
PanelVerdict = Literal["correct", "incorrect", "undecided"]

#: The fields a judge prompt template may use.
TEMPLATE_FIELDS = ("question", "references", "candidate")
_VERDICT_LINE = re.compile(r"^\s*VERDICT:\s*(CORRECT|INCORRECT)\s*$", re.MULTILINE)


def default_template() -> str:
    """The judge prompt template shipped with fmbench."""
    return resources.files("fmbench.quality").joinpath("judge_prompt.txt").read_text(encoding="utf-8")


def check_template(template: str, where: str) -> str:
    """A judge template that uses only the known fields and at least the candidate.

    Raises:
        ConfigError: malformed, an unknown field, or no ``{candidate}`` (the message names ``where``).
    """
    try:
        fields = template_fields(template, where=where)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from exc
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown:
        raise ConfigError(f"{where}: unknown template field(s) {', '.join(unknown)} "
                          f"(known: {', '.join(TEMPLATE_FIELDS)})")
    if "candidate" not in fields:
        raise ConfigError(f"{where}: the judge template must use {{candidate}}")
    return template


def render_judge_prompt(template: str, question: str, references: Sequence[str], candidate: str) -> str:
    """Fill the judge template; references become one ``- answer`` line each."""
    refs = "\n".join(f"- {r}" for r in references)
    return render_template(template, {"question": question, "references": refs, "candidate": candidate},
                           "judge prompt")


def parse_verdict(reply: str) -> Verdict:
    """The verdict of a judge's reply: exactly one ``VERDICT:`` line, else ``unparseable``."""
    found = _VERDICT_LINE.findall(reply)
    if len(found) != 1:
        return "unparseable"
    return "correct" if found[0] == "CORRECT" else "incorrect"


def majority_vote(verdicts: Sequence[Verdict]) -> PanelVerdict:
    """The panel's verdict: the answer more than half of the *whole* panel gave.

    A judge that failed or replied unparseably counts in the panel size but votes for nothing, so
    a panel of three with one failure and a split of the other two is ``undecided`` rather than
    decided by whichever judge happened to answer.
    """
    n = len(verdicts)
    if n == 0:
        return "undecided"
    correct = sum(v == "correct" for v in verdicts)
    incorrect = sum(v == "incorrect" for v in verdicts)
    if correct * 2 > n:
        return "correct"
    if incorrect * 2 > n:
        return "incorrect"
    return "undecided"
