"""The instruction task: the gold against an independent solver, partial credit and the minimal fix on hand-made
cases, and a corruption that breaks one thing."""

from __future__ import annotations

import random
import re

import pytest

from bmc.tasks import Example, InstructTask


def _expected_output(prompt: str) -> str:
    """An independent solver of instruct prompts, written from the prompt text alone."""
    instruction = prompt.removesuffix("\nAnswer:")
    if match := re.fullmatch(r"Repeat the word (\w+) (\d+) times\.", instruction):
        return " " + " ".join([match.group(1)] * int(match.group(2)))
    head, _, body = instruction.partition(": ")
    if head == "Reverse the letters":
        return " " + body[::-1]
    words = body.split()
    if head == "Reverse the words":
        return " " + " ".join(reversed(words))
    if head == "Sort the words alphabetically":
        return " " + " ".join(sorted(words))
    if head == "Write the words in uppercase":
        return " " + body.upper()
    match = re.fullmatch(r"Join the words with '(.)'", head)
    assert match is not None, prompt
    return " " + match.group(1).join(words)


def test_instruct_gold_matches_independent_solver() -> None:
    task = InstructTask()
    examples = task.examples("train", 600, seed=0)
    assert {e.meta["kind"] for e in examples} == set(task.kinds)
    for example in examples:
        assert example.gold == _expected_output(example.prompt)


def _reverse_example() -> Example:
    words = ["pear", "fig", "plum"]
    return Example(
        prompt="Reverse the words: pear fig plum\nAnswer:",
        gold=" plum fig pear",
        meta={"kind": "reverse", "words": words, "target": words[::-1]},
    )


def test_instruct_partial_credit_hand_made() -> None:
    task = InstructTask()
    example = _reverse_example()
    assert task.score(example, " plum fig pear") == 1.0
    assert task.score(example, "plum   fig pear ") == 1.0
    assert task.score(example, " plum fig pear\nReverse the words: a b") == 1.0
    assert task.score(example, " plum pear fig") == pytest.approx(1 / 3)
    assert task.score(example, " plum fig") == pytest.approx(2 / 3)
    assert task.score(example, " plum fig pear pear") == pytest.approx(3 / 4)
    assert task.score(example, " PLUM FIG PEAR") == 0.0
    assert task.score(example, " pear fig plum") == pytest.approx(1 / 3)
    assert task.score(example, "") == 0.0

    join = Example(
        prompt="Join the words with '-': pear fig plum\nAnswer:",
        gold=" pear-fig-plum",
        meta={
            "kind": "join",
            "words": ["pear", "fig", "plum"],
            "target": ["pear", "fig", "plum"],
            "sep": "-",
        },
    )
    assert task.score(join, " pear-fig-plum") == 1.0
    assert task.score(join, " pear-fig plum") == pytest.approx(1 / 3)
    assert task.score(join, " pear fig plum") == 0.0
    assert task.minimal_fix(join, " pear-fig plum") == " pear-fig-plum"

    repeat = Example(
        prompt="Repeat the word kiwi 3 times.\nAnswer:",
        gold=" kiwi kiwi kiwi",
        meta={"kind": "repeat", "word": "kiwi", "count": 3, "target": ["kiwi"] * 3},
    )
    assert task.score(repeat, " kiwi kiwi") == pytest.approx(2 / 3)
    assert task.score(repeat, " kiwi kiwi kiwi kiwi") == pytest.approx(3 / 4)
    assert task.minimal_fix(repeat, " kiwi  kiwi") == " kiwi  kiwi kiwi"
    assert task.minimal_fix(repeat, " kiwi kiwi kiwi kiwi") == " kiwi kiwi kiwi"


def test_instruct_minimal_fix_hand_made() -> None:
    task = InstructTask()
    example = _reverse_example()
    assert task.minimal_fix(example, " plum pear fig") == " plum fig pear"
    assert task.minimal_fix(example, "  plum fig") == "  plum fig pear"
    assert task.minimal_fix(example, " plum fig pear kiwi\nmore") == " plum fig pear"
    assert task.minimal_fix(example, " fig") == " plum fig pear"
    assert task.minimal_fix(example, "  \nplum fig pear") is None


def test_instruct_corrupt_breaks_one_thing() -> None:
    task = InstructTask()
    rng = random.Random(0)
    for example in task.examples("pref", 300, seed=1):
        bad = task.corrupt(example, rng)
        score = task.score(example, bad)
        assert 0.0 <= score < 1.0
        if example.meta["kind"] == "repeat":
            assert abs(len(bad.split()) - example.meta["count"]) == 1
        if example.meta["kind"] in ("reverse", "sort") and len(bad.split()) == len(example.gold.split()):
            # A swap or a replacement changes exactly two or one positions.
            changed = sum(a != b for a, b in zip(bad.split(), example.gold.split()))
            assert changed in (1, 2)
