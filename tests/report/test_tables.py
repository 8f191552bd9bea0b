"""The report's cells: what a priced shard's cost per transaction or per token says when it has none, and
why an open-loop shard's endpoint counts as overloaded."""

from __future__ import annotations

from fmbench.report.tables import cost_cell, overload_reason

SHARD = {"shard_cost_usd": 0.5, "successes": 10, "good_requests": 4, "input_tokens": 1000, "output_tokens": 200,
         "cost_per_10k_txn": 500.0, "cost_per_10k_good": 1250.0, "cost_per_1m_input_tokens": 500.0,
         "cost_per_1m_output_tokens": 2500.0, "cost_per_1m_total_tokens": 416.67}


def test_a_known_cost_that_bought_nothing_says_what_it_did_not_buy_not_that_it_is_unknown() -> None:
    assert cost_cell(SHARD, "cost_per_10k_txn") == "$500"
    # every request failed: the shard's cost is known, it bought no transaction and no tokens
    failed = {**SHARD, "successes": 0, "good_requests": 0, "input_tokens": 0, "output_tokens": 0,
              **dict.fromkeys(c for c in SHARD if c.startswith("cost_per_"))}
    for column in ("cost_per_10k_txn", "cost_per_10k_good", "cost_per_1m_input_tokens",
                   "cost_per_1m_output_tokens", "cost_per_1m_total_tokens"):
        assert cost_cell(failed, column) == "– (no successful request)", column
    # requests succeeded, but none met the per-request SLOs, or no output tokens were counted
    assert cost_cell({**SHARD, "good_requests": 0, "cost_per_10k_good": None},
                     "cost_per_10k_good") == "– (no request met every per-request SLO)"
    assert cost_cell({**SHARD, "output_tokens": 0, "cost_per_1m_output_tokens": None},
                     "cost_per_1m_output_tokens") == "– (no output tokens counted)"
    # the shard's own cost unknown: then, and only then, the cell is unknown
    assert cost_cell({**failed, "shard_cost_usd": None}, "cost_per_10k_txn") == "unknown"


def test_an_overloaded_shard_says_why_and_one_that_kept_up_or_predates_the_verdict_says_nothing() -> None:
    reason = "completed 5 req/s against 10 req/s offered (50%), more than 10% short"
    assert overload_reason({"overloaded": True, "overload_reason": reason, "completion_rate": 0.5}) == reason
    # a metrics file that kept the flag and the rate but not the sentence
    assert overload_reason({"overloaded": True, "completion_rate": 0.5}) == (
        "completed requests slower than they arrived (50% of the offered rate)")
    assert overload_reason({"overloaded": False, "completion_rate": 0.99}) is None
    assert overload_reason({}) is None  # metrics written before overload was judged
