"""Ranked-list rows from full rankings: order, tie blocks, duplicates, drops and scores."""

from __future__ import annotations

from collections import Counter

from bmc.synthesis.ranked_lists import list_rows, list_sizes


def sample(completions: list[str], truncated: list[bool] | None = None) -> dict:
    return {"prompt": "x", "completions": completions, "truncated": truncated or [False] * len(completions)}


def test_rows_follow_the_ranking_best_first_with_tie_blocks_and_pair_fields() -> None:
    dropped: Counter = Counter()
    rows = list_rows([sample(["a", "b", "c", "d"])], [[[2], [0, 3], [1]]], dropped)
    assert rows == [
        {"prompt": "x", "chosen": "c", "rejected": "b", "responses": ["c", "a", "d", "b"], "ranks": [0, 1, 1, 2]}
    ]
    assert not dropped


def test_a_repeated_text_is_kept_where_it_ranks_best_and_blocks_are_renumbered() -> None:
    dropped: Counter = Counter()
    # "a" appears at index 0 (best block) and 3 (last block, which then empties out)
    rows = list_rows([sample(["a", "b", "c", "a"])], [[[0], [1, 2], [3]]], dropped)
    assert rows[0]["responses"] == ["a", "b", "c"] and rows[0]["ranks"] == [0, 1, 1]


def test_prompts_without_a_preference_or_with_a_cut_off_best_are_dropped_and_counted() -> None:
    dropped: Counter = Counter()
    samples = [sample(["a", "b"]), sample(["a", "a", "a"]), sample(["a", "b"], [True, False])]
    rankings = [[[0, 1]], [[0], [1], [2]], [[0], [1]]]
    assert list_rows(samples, rankings, dropped) == []
    assert dropped == {"all tied after ranking": 2, "truncated chosen": 1}


def test_scores_follow_their_responses() -> None:
    rows = list_rows([sample(["a", "b", "c"])], [[[1], [0, 2]]], Counter(), scores=[[0.5, 2.0, 0.5]])
    assert rows[0]["responses"] == ["b", "a", "c"] and rows[0]["scores"] == [2.0, 0.5, 0.5]
    assert rows[0]["ranks"] == [0, 1, 1]


def test_list_sizes_count_lists_by_length() -> None:
    rows = [{"responses": ["a", "b"]}, {"responses": ["a", "b", "c"]}, {"responses": ["a", "b"]}]
    assert list_sizes(rows) == {"2": 2, "3": 1}
