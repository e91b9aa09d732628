"""Diff masks between the chosen and the rejected response tokens, under both alignments."""

from __future__ import annotations

import pytest

from bmc.losses import ENGLISH_STOPWORDS, diff_masks, stopword_token_ids

ALIGNMENTS = ["levenshtein", "difflib"]


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_replace_and_delete(alignment):
    # rejected -> chosen: 5 equal, 9 -> 6 replace, 7 8 equal, 10 deleted
    chosen, rejected = diff_masks([5, 6, 7, 8], [5, 9, 7, 8, 10], alignment=alignment)
    assert chosen == [0, 1, 0, 0]
    assert rejected == [0, 1, 0, 0, 1]


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_insert_marks_only_chosen(alignment):
    # chosen adds 42 in the middle: an insert marks the chosen token and nothing of the rejected one
    chosen, rejected = diff_masks([1, 2, 42, 3], [1, 2, 3], alignment=alignment)
    assert chosen == [0, 0, 1, 0]
    assert rejected == [0, 0, 0]


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_edge_cases(alignment):
    assert diff_masks([3, 4, 5], [3, 4, 5], alignment=alignment) == ([0, 0, 0], [0, 0, 0])
    assert diff_masks([], [7, 8], alignment=alignment) == ([], [1, 1])
    assert diff_masks([7, 8], [], alignment=alignment) == ([1, 1], [])
    # Real vocabulary ids (> 2^16) are fine.
    assert diff_masks([50000, 128001, 7], [50000, 99999, 7], alignment=alignment) == ([0, 1, 0], [0, 1, 0])


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_stopwords_never_marked(alignment):
    chosen, rejected = diff_masks([5, 6, 7, 8], [5, 9, 7, 8, 10], alignment=alignment, stopword_ids={6, 10})
    assert chosen == [0, 0, 0, 0]
    assert rejected == [0, 1, 0, 0, 0]


def test_difflib_and_levenshtein_differ():
    # Levenshtein: delete the leading 7 and the 9 (distance 2); every chosen token is matched.
    # Ratcliff/Obershelp anchors on the earliest longest block (rejected[0] = 7 <-> chosen[1] = 7), then
    # inserts 8 before it and deletes 8 9 7 after it: 1 chosen + 3 rejected tokens marked.
    chosen, rejected = [8, 7], [7, 8, 9, 7]
    assert diff_masks(chosen, rejected, alignment="levenshtein") == ([0, 0], [1, 0, 1, 0])
    assert diff_masks(chosen, rejected, alignment="difflib") == ([1, 0], [0, 1, 1, 1])


def test_unknown_alignment():
    with pytest.raises(ValueError, match="levenshtein"):
        diff_masks([1], [2], alignment="lcs")


class FakeTokenizer:
    def get_vocab(self) -> dict[str, int]:
        return {"<pad>": 0, "Ġthe": 1, "The": 2, "▁and": 3, "cat": 4, "ĠTheir": 5, "Ġthe,": 6, "Ġ": 7, "s": 8, "A": 9}


def test_stopword_token_ids():
    assert len(ENGLISH_STOPWORDS) == 179 and {"the", "don't", "s"} <= ENGLISH_STOPWORDS
    # only word-initial tokens: "The" at no word boundary, the plural "s" and the QA letter "A" are not stopwords
    assert stopword_token_ids(FakeTokenizer()) == {1, 3, 5}
    assert stopword_token_ids(FakeTokenizer(), stopwords={"cat"}) == set()
    assert stopword_token_ids(FakeTokenizer(), stopwords={"the"}) == {1}
