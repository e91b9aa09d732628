"""The math task on hand-checked examples: the gold, the minimal fix, consistent steps, a corruption that is one
propagated slip, and gold styles that vary the wording, not the content."""

from __future__ import annotations

import random
import re

import pytest

from bmc.tasks import MathTask

STEP = re.compile(r"(\d+)([+-])(\d+)=(-?\d+)")


def _apply(x: str, op: str, b: str) -> int:
    return int(x) + int(b) if op == "+" else int(x) - int(b)


def test_math_hand_checked_example() -> None:
    example = MathTask().examples("train", 1, seed=0)[0]
    assert example.prompt == (
        "Mia has 18 pencils. She wins 55 more, then finds 28 more. How many pencils does she have now?"
        "\nAnswer:"
    )
    assert example.gold == " 18+55=73; 73+28=101. The answer is 101."
    assert example.meta["answer"] == 101
    task = MathTask()
    assert task.score(example, " 18+55=73; 73+28=101. The answer is 101.") == 1.0
    assert task.score(example, " The answer is 101") == 1.0
    assert task.score(example, " 18+55=73; 73+28=100. The answer is 100.") == 0.0
    assert task.score(example, " The answer is 1010.") == 0.0
    # Only the first answer statement counts: a hedge after it does not help.
    assert task.score(example, " The answer is 100. The answer is 101.") == 0.0
    assert task.score(example, " The answer is 101.\nThe answer is 100.") == 1.0


def test_math_minimal_fix_hand_made() -> None:
    task = MathTask()
    example = task.examples("train", 1, seed=0)[0]
    # Slip in step 1, propagated: both steps and the answer are fixed.
    assert task.minimal_fix(example, " 18+55=63; 63+28=91. The answer is 91.") == example.gold
    # A correct commuted step is kept verbatim; only the later wrong result is replaced.
    assert (
        task.minimal_fix(example, " 55+18=73; 73+28=111. The answer is 111.")
        == " 55+18=73; 73+28=101. The answer is 101."
    )
    # Spacing of correct text is kept; a wrong result with right operands keeps its operands.
    assert (
        task.minimal_fix(example, " 18 + 55 = 73; 73 + 28 = 91. The answer is 91.")
        == " 18 + 55 = 73; 73 + 28 = 101. The answer is 101."
    )
    # Truncated responses are completed; missing steps are inserted; surplus steps are dropped.
    assert task.minimal_fix(example, " 18+55=73; 73+2") == example.gold
    assert task.minimal_fix(example, " 18+55=73. The answer is 73.") == example.gold
    assert task.minimal_fix(example, " 18+55=73; 73+28=101; 101+1=102. The answer is 102.") == example.gold
    # Nothing parseable: no fix.
    assert task.minimal_fix(example, " I do not know.") is None
    assert task.minimal_fix(example, " The answer is 7. 18+55=73") is None


def test_math_steps_are_consistent_and_non_negative() -> None:
    for task in (
        MathTask(),
        MathTask(n_steps=4, ops=["-", "+"]),
        MathTask(n_steps=3, ops=["-"], max_operand=99),
    ):
        for example in task.examples("train", 300, seed=4):
            steps = STEP.findall(example.gold)
            assert len(steps) == task.n_steps
            value = example.meta["start"]
            assert str(value) in example.prompt
            for x, op, b, r in steps:
                assert int(x) == value
                assert task.min_operand <= int(b) <= task.max_operand
                assert op in task.ops
                value = _apply(x, op, b)
                assert int(r) == value >= 0
            assert example.gold.endswith(f". The answer is {value}.")


def test_math_corrupt_is_one_propagated_slip() -> None:
    task = MathTask(n_steps=3)
    rng = random.Random(0)
    deltas = set()
    for example in task.examples("pref", 300, seed=0):
        bad = task.corrupt(example, rng)
        steps = STEP.findall(bad)
        assert len(steps) == 3
        wrong = [i for i, (x, op, b, r) in enumerate(steps) if _apply(x, op, b) != int(r)]
        assert len(wrong) == 1
        i = wrong[0]
        gold_steps = STEP.findall(example.gold)
        assert steps[:i] == gold_steps[:i]
        assert steps[i][:3] == gold_steps[i][:3]
        deltas.add(int(steps[i][3]) - int(gold_steps[i][3]))
        # Later steps start from the wrong value; everything stays non-negative.
        for j in range(i + 1, 3):
            assert steps[j][0] == steps[j - 1][3]
        assert all(int(r) >= 0 for *_, r in steps)
        assert bad.endswith(f". The answer is {steps[-1][3]}.")
    assert {1, -1, 10, -10} <= deltas and len(deltas) > 4  # digit swaps give other deltas


def test_math_gold_styles_vary_wording_not_content() -> None:
    terse, styled = MathTask(), MathTask(gold_styles=4)
    plain = terse.examples("pref", 200, seed=1)
    varied = styled.examples("pref", 200, seed=1)
    assert {e.meta["style"] for e in plain} == {0}
    assert {e.meta["style"] for e in varied} == {0, 1, 2, 3}
    for example in varied:
        assert styled.score(example, example.gold) == 1.0
        assert len(STEP.findall(example.gold)) == styled.n_steps
        # the realistic slip keeps the example's wording; the fix restores exactly the gold
        rng = random.Random(0)
        bad = styled.corrupt(example, rng)
        assert styled.score(example, bad) == 0.0
        assert styled.minimal_fix(example, bad) == example.gold
    first = next(e for e in varied if e.meta["style"] == 1)
    steps = STEP.findall(first.gold)
    assert first.gold.startswith(" First ") and ", then " in first.gold
    assert first.gold.endswith(f". The answer is {steps[-1][3]}.")
    # a sample in another wording is fixed in that wording, not rewritten into the gold's
    terse_wrong = " " + "; ".join(f"{x}{op}{b}={int(r) + 1}" for x, op, b, r in steps) + ". The answer is 0."
    fixed = styled.minimal_fix(first, terse_wrong)
    assert styled.score(first, fixed) == 1.0 and fixed != first.gold and "; " in fixed
    assert MathTask(gold_styles=4).max_gold_chars() >= max(len(e.gold) for e in varied)
    with pytest.raises(ValueError, match="gold_styles"):
        MathTask(gold_styles=5)
