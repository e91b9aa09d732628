"""Iterative pairwise ranking (METHODS.md 2.1) with hand-made judges whose answers are known."""

from __future__ import annotations

import itertools
import math

import pytest

from bmc.synthesis.ipr import rank, rank_full, rm_pairs, score_blocks
from bmc.synthesis.judges import compare
from tests.doubles.order_judges import AlwaysFirst, OrderJudge

TEXTS = ["r0", "r1", "r2", "r3", "r4"]
QUALITY = {t: float(i) for i, t in enumerate(TEXTS)}  # r4 best, r0 worst


@pytest.mark.parametrize("bonus", [0.0, 0.5])
def test_rank_finds_best_and_worst_in_every_order_with_exact_call_count(bonus: float) -> None:
    # A slot-A bonus smaller than every quality gap never flips a both-order verdict.
    judge = OrderJudge(QUALITY, slot_a_bonus=bonus)
    for order in itertools.permutations(TEXTS):
        result = rank(judge, "x", list(order))
        assert order[result.best_index] == "r4" and order[result.worst_index] == "r0", order
        n = len(order)
        assert result.comparisons == (n - 1) + (n - 2) == 7
        assert result.judge_calls == 2 * (n - 1) + 2 * (n - 2) == 14
        assert not result.identical and not result.tied
    assert judge.calls == 14 * 120


@pytest.mark.parametrize("n", [2, 3, 4])
def test_call_count_for_small_n(n: int) -> None:
    judge = OrderJudge(QUALITY)
    result = rank(judge, "x", TEXTS[:n])
    assert (result.best_index, result.worst_index) == (n - 1, 0)
    assert result.judge_calls == judge.calls == 2 * (n - 1) + 2 * (n - 2)


def test_ties_keep_the_incumbent_in_both_phases() -> None:
    # best phase: r0 vs a (tie) keeps r0, r0 vs b (b better) -> b; eliminated = [a, r0]
    # worst phase: incumbent a vs r0 (tie) keeps a, although r0 comes later.
    judge = OrderJudge({"r0": 0.0, "a": 0.0, "b": 1.0})
    result = rank(judge, "x", ["r0", "a", "b"])
    assert (result.best_index, result.worst_index) == (2, 1) and not result.tied
    # Among equals the first stays best and the first eliminated stays worst: every comparison tied, no pair.
    result = rank(OrderJudge({"p": 1.0, "q": 1.0, "s": 1.0}), "x", ["p", "q", "s"])
    assert (result.best_index, result.worst_index) == (0, 1) and result.tied and not result.identical
    # The best phase's tie: "hi2" ties the incumbent "hi1" and is eliminated; worst is "lo".
    result = rank(OrderJudge({"lo": 0.0, "hi1": 2.0, "hi2": 2.0}), "x", ["lo", "hi1", "hi2"])
    assert (result.best_index, result.worst_index) == (1, 0)


def test_position_bias_is_cancelled_by_asking_both_orders() -> None:
    biased = AlwaysFirst()
    assert biased.prefer("x", "r0", "r4") == 1  # one order alone is fooled
    for a, b in itertools.permutations(TEXTS, 2):
        assert compare(biased, "x", a, b) == 0  # both orders: a tie, whichever slot a sits in
    for order in itertools.permutations(TEXTS):
        result = rank(biased, "x", list(order))
        assert (result.best_index, result.worst_index) == (0, 1)  # every comparison ties: incumbents stay
        assert result.tied  # and the prompt gives no pair: the order of sampling chose them, not the judge
        assert result.judge_calls == 14

    # A bias large enough to flip adjacent-quality single verdicts: the both-order verdict is antisymmetric,
    # i.e. it depends on the two responses, not on which slot each was shown in.
    partial = OrderJudge(QUALITY, slot_a_bonus=1.5)
    for a, b in itertools.permutations(TEXTS, 2):
        verdict = compare(partial, "x", a, b)
        assert verdict == -compare(partial, "x", b, a)
        gap = QUALITY[a] - QUALITY[b]
        assert verdict == (0 if abs(gap) < 1.5 else (1 if gap > 0 else -1))


def test_judge_compare_is_the_both_order_verdict() -> None:
    judge = OrderJudge(QUALITY)
    assert judge.compare("x", "r3", "r1") == 1 and judge.compare("x", "r1", "r3") == -1
    assert judge.compare("x", "r2", "r2") == 0
    assert judge.calls == 6


def test_identical_best_and_worst_texts_are_flagged() -> None:
    result = rank(OrderJudge({"same": 0.0}), "x", ["same", "same", "same"])
    assert result.identical and result.best_index != result.worst_index


def test_rank_needs_two_completions() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        rank(OrderJudge(QUALITY), "x", ["r0"])


def test_rm_pairs_is_argmax_argmin_with_first_index_on_ties() -> None:
    assert rm_pairs([0.1, 0.5, -0.2, 0.5, -0.2]) == (1, 2)
    assert rm_pairs([3.0, 3.0]) == (0, 0)  # best == worst: the caller drops the prompt
    with pytest.raises(ValueError):
        rm_pairs([])
    with pytest.raises(ValueError, match="finite"):
        rm_pairs([0.0, float("nan")])


# --- the full ranking (data.ranking=full) ---


@pytest.mark.parametrize("bonus", [0.0, 0.5])
def test_rank_full_sorts_every_sampling_order_with_binary_insertion_counts(bonus: float) -> None:
    judge = OrderJudge(QUALITY, slot_a_bonus=bonus)  # a bias below every gap never flips a both-order verdict
    counts = []
    for order in itertools.permutations(TEXTS):
        result = rank_full(judge, "x", list(order))
        assert [order[block[0]] for block in result.blocks] == ["r4", "r3", "r2", "r1", "r0"], order
        assert all(len(block) == 1 for block in result.blocks)
        # inserting completion i into i blocks takes floor(log2 i) + 1 comparisons or one fewer
        assert sum(math.floor(math.log2(i)) for i in range(1, 5)) <= result.comparisons <= 8
        assert result.judge_calls == 2 * result.comparisons
        counts.append(result.comparisons)
    # the mean over all 120 sampling orders, each insertion's slot uniform: the 2nd completion takes 1, the 3rd
    # 2 or 1 (slots 0, 1: 2; slot 2: 1), the 4th always 2, the 5th 3, 3, 2, 2, 2 for slots 0..4
    assert sum(counts) / len(counts) == pytest.approx(1 + 5 / 3 + 2 + 2.4, abs=1e-12)


def test_rank_full_keeps_ties_as_blocks_and_stops_a_search_on_a_tie() -> None:
    # a verifier-like judge: right (1) or wrong (0)
    judge = OrderJudge({"w1": 0.0, "r1": 1.0, "w2": 0.0, "r2": 1.0, "w3": 0.0})
    result = rank_full(judge, "x", ["w1", "r1", "w2", "r2", "w3"])
    assert result.blocks == [[1, 3], [0, 2, 4]]
    # r1: above w1 (1); w2: ties w1, the middle block, and joins it (1); r2: above w1, ties r1 (2); w3 ties w1 (1)
    assert result.comparisons == 1 + 1 + 2 + 1 and judge.calls == 2 * result.comparisons
    everything_ties = rank_full(AlwaysFirst(), "x", TEXTS)  # position bias only: both orders cancel
    assert everything_ties.blocks == [[0, 1, 2, 3, 4]] and everything_ties.comparisons == 4


def test_score_blocks_rank_by_score_with_equal_scores_tied() -> None:
    assert score_blocks([0.1, 0.5, -0.2, 0.5, -0.2]) == [[1, 3], [0], [2, 4]]
    with pytest.raises(ValueError, match="finite"):
        score_blocks([0.0, float("inf")])
