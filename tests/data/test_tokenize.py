"""Truncation and padding on hand-checked examples: prompts cut from the left, responses from the right, and only
response tokens marked."""

from __future__ import annotations

import pytest

from bmc.data.datamodule import pad_sequences
from bmc.data.tokenize import Truncation


def test_truncation_keeps_prompt_end_and_never_empties_a_response() -> None:
    rule = Truncation(max_length=8, max_prompt_length=3)
    prompt, responses, cut = rule.apply([1, 2, 3, 4, 5], [[6, 7], [8, 9, 10, 11, 12, 13, 14]])
    assert cut and prompt == [3, 4, 5]  # cut from the left, down to max_prompt_length
    assert responses == [[6, 7], [8, 9, 10, 11, 12]]  # then responses from the right
    assert rule.apply([1, 2], [[3, 4]]) == ([1, 2], [[3, 4]], False)
    prompt, responses, _ = rule.apply(list(range(50)), [[99] * 50])
    assert len(prompt) == 3 and responses == [[99] * 5]


def test_truncation_rejects_a_rule_that_could_empty_responses() -> None:
    with pytest.raises(ValueError, match="max_prompt_length"):
        Truncation(max_length=8, max_prompt_length=8)


def test_pad_sequences_marks_only_response_tokens() -> None:
    batch = pad_sequences([[5, 6], [5]], [[7, 8, 2], [9, 2]], pad_id=0, response_marks=[[0, 1, 0], [1, 0]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 2], [5, 9, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["response_mask"].int().tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert batch["diff_mask"].int().tolist() == [[0, 0, 0, 1, 0], [0, 1, 0, 0, 0]]
