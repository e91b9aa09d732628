"""Tests of the built-in synthetic tasks (bmc.tasks): generation, splits, verifiers, corruption, fixing."""

from __future__ import annotations

import difflib
import json
import os
import random
import re

import pytest

from bmc.tasks import SPLITS, TASKS, Example, InstructTask, MathTask, QATask, Task, get_task

TASK_NAMES = sorted(TASKS)


@pytest.fixture(scope="module", params=TASK_NAMES)
def task(request: pytest.FixtureRequest) -> Task:
    return TASKS[request.param]()


@pytest.fixture(scope="module")
def pref_examples(task: Task) -> list[Example]:
    return task.examples("pref", 200, seed=3)


def garbage_responses(example: Example) -> list[str]:
    rng = random.Random(0)
    alphabet = "0123456789+-=;.,() ABCDabcd\n'_/"
    gold = example.gold
    return [
        "",
        " ",
        "\n\n",
        "garbage",
        "The answer is",
        "The answer is (",
        "The answer is " + "9" * 5000,
        "The answer is -",
        "(A) (B) The answer is (Z).",
        gold[: len(gold) // 2],
        gold[:1],
        gold + gold,
        gold.upper(),
        "héllo wörld ✓ \x00\x7f",
        *("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(10)),
    ]


# ---------------------------------------------------------------------------------------- all tasks
def test_registry_and_keyword_construction() -> None:
    assert set(TASKS) == {"math", "qa", "instruct"}
    assert TASKS["math"] is MathTask and TASKS["qa"] is QATask and TASKS["instruct"] is InstructTask
    for name, cls in TASKS.items():
        assert cls.name == name
        assert isinstance(get_task(name), cls)
    # Hydra passes sequences as lists.
    assert MathTask(n_steps=3, min_operand=1, max_operand=20, ops=["+", "-"]).n_steps == 3
    assert QATask(attributes=["city", "pet"], n_options=3).attributes == ("city", "pet")
    assert InstructTask(kinds=["sort"], separators=["-"]).kinds == ("sort",)
    with pytest.raises(ValueError):
        get_task("nope")
    with pytest.raises(TypeError):
        MathTask(2)  # type: ignore[misc]


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (MathTask, {"n_steps": 0}),
        (MathTask, {"ops": ["*"]}),
        (MathTask, {"min_operand": 50, "max_operand": 10}),
        (MathTask, {"ops": ["-"], "min_operand": 40, "max_operand": 99}),
        (QATask, {"attributes": ["height"]}),
        (QATask, {"n_options": 11}),
        (QATask, {"n_entities": 0}),
        (QATask, {"letter_slip_prob": 1.5}),
        (InstructTask, {"kinds": ["dance"]}),
        (InstructTask, {"min_words": 5, "max_words": 3}),
        (InstructTask, {"split_fractions": [0.5, 0.5, 0.5]}),
    ],
)
def test_invalid_knobs_raise(cls: type[Task], kwargs: dict) -> None:
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_examples_are_deterministic(task: Task) -> None:
    first = task.examples("train", 40, seed=1)
    assert first == task.examples("train", 40, seed=1)
    assert [e.meta for e in first] == [e.meta for e in task.examples("train", 40, seed=1)]
    # A longer request extends a shorter one.
    assert task.examples("train", 15, seed=1) == first[:15]
    other = task.examples("train", 40, seed=2)
    assert [e.prompt for e in other] != [e.prompt for e in first]
    # A fresh instance with the same knobs gives the same data (no hidden global state).
    assert type(task)().examples("eval", 20, seed=5) == task.examples("eval", 20, seed=5)


def test_splits_are_disjoint_by_prompt(task: Task) -> None:
    prompts = {}
    for split, n in zip(SPLITS, (300, 100, 100)):
        examples = task.examples(split, n, seed=0) + task.examples(split, n, seed=1)
        assert all(task.split_of(e.prompt) == split for e in examples)
        assert len({e.prompt for e in task.examples(split, n, seed=0)}) == n
        prompts[split] = {e.prompt for e in examples}
    assert not prompts["train"] & prompts["pref"]
    assert not prompts["train"] & prompts["eval"]
    assert not prompts["pref"] & prompts["eval"]


def test_bad_split_and_exhausted_space() -> None:
    task = MathTask()
    with pytest.raises(ValueError, match="unknown split"):
        task.examples("test", 3)
    with pytest.raises(ValueError):
        task.examples("train", -1)
    assert task.examples("eval", 0) == []
    # 1 fact x 9 distractors x 2 orders = 18 prompts in total: 100 eval prompts cannot exist.
    tiny = QATask(n_entities=1, attributes=["city"], n_options=2, max_misses=2000)
    with pytest.raises(ValueError, match="unique 'eval' prompts"):
        tiny.examples("eval", 100)
    no_eval = InstructTask(split_fractions=[0.8, 0.2, 0.0])
    with pytest.raises(ValueError, match="fraction 0"):
        no_eval.examples("eval", 1)


def test_format_and_serialisation(task: Task, pref_examples: list[Example]) -> None:
    for example in pref_examples:
        assert example.prompt.endswith("\nAnswer:")
        assert example.gold.startswith(" ") and not example.gold.startswith("  ")
        assert "\n" not in example.gold
        assert len(example.prompt) <= 150 and len(example.gold) <= 80
        restored = Example.from_dict(json.loads(json.dumps(example.to_dict())))
        assert restored == example and restored.meta == example.meta
    assert len({hash(e) for e in pref_examples}) == len(pref_examples)


def test_gold_scores_one(task: Task, pref_examples: list[Example]) -> None:
    for example in pref_examples + task.examples("train", 300, seed=9):
        assert task.score(example, example.gold) == 1.0


def test_max_gold_chars_bounds_gold() -> None:
    configs = [
        MathTask(),
        MathTask(n_steps=4, max_operand=999),
        MathTask(n_steps=1, ops=["-"]),
        MathTask(n_steps=3, ops=["+"]),
        QATask(),
        QATask(attributes=["pet", "job"], n_options=6),
        InstructTask(),
        InstructTask(kinds=["repeat"], max_repeat=9),
        InstructTask(kinds=["reverse_letters"], max_letters=8),
    ]
    for task in configs:
        bound = task.max_gold_chars()
        # 24 words x 8 counts: the repeat-only space holds only ~115 train prompts.
        n = 100 if getattr(task, "kinds", None) == ("repeat",) else 400
        examples = task.examples("train", n, seed=0)
        assert max(len(e.gold) for e in examples) <= bound, task
        # Every operation drawn as "+" with the largest operands hits the math bound exactly.
        if isinstance(task, MathTask) and task.ops == ("+",):
            assert bound == len(" 99+99=198; 198+99=297; 297+99=396. The answer is 396.")


def test_corrupt_is_wrong_and_close_to_gold(task: Task, pref_examples: list[Example]) -> None:
    rng = random.Random(0)
    for example in pref_examples:
        bad = task.corrupt(example, rng)
        assert bad != example.gold
        assert task.score(example, bad) < 1.0
        assert bad.startswith(" ") and "\n" not in bad
        assert difflib.SequenceMatcher(a=example.gold, b=bad).ratio() >= 0.5, (example.gold, bad)
    assert task.corrupt(example, random.Random(7)) == task.corrupt(example, random.Random(7))


def test_minimal_fix_of_corruption(task: Task, pref_examples: list[Example]) -> None:
    rng = random.Random(1)
    for example in pref_examples:
        assert task.minimal_fix(example, example.gold) == example.gold
        bad = task.corrupt(example, rng)
        fixed = task.minimal_fix(example, bad)
        assert fixed is not None
        assert task.score(example, fixed) == 1.0
        # The text before the first error is kept verbatim.
        assert fixed.startswith(os.path.commonprefix([bad, example.gold]))


def test_score_and_fix_never_raise_on_garbage(task: Task, pref_examples: list[Example]) -> None:
    for example in pref_examples[:40]:
        for response in garbage_responses(example):
            value = task.score(example, response)
            assert isinstance(value, float) and 0.0 <= value <= 1.0
            fixed = task.minimal_fix(example, response)
            assert fixed is None or task.score(example, fixed) == 1.0


def test_minimal_fix_on_random_edits(task: Task, pref_examples: list[Example]) -> None:
    """Random character edits of gold/corrupted responses: whatever gets fixed must score 1.0."""
    rng = random.Random(2)
    alphabet = "0123456789+-=;.() ABCDabcd'\n"
    n_fixed = 0
    for example in pref_examples[:100]:
        for base in (example.gold, task.corrupt(example, rng)):
            chars = list(base)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(chars))
                if rng.random() < 0.5:
                    chars[i] = rng.choice(alphabet)
                else:
                    del chars[i]
            response = "".join(chars)
            fixed = task.minimal_fix(example, response)
            if fixed is not None:
                n_fixed += 1
                assert task.score(example, fixed) == 1.0, (example.gold, response, fixed)
                if task.score(example, response) == 1.0:
                    assert fixed == response
    assert n_fixed > 50


# ---------------------------------------------------------------------------------------- math
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


# ---------------------------------------------------------------------------------------- qa
def test_qa_options_and_answer() -> None:
    task = QATask()
    for example in task.examples("eval", 200, seed=0):
        meta = example.meta
        options = re.findall(r"\(([A-Z])\) (\w+)", example.prompt)
        assert [letter for letter, _ in options] == list("ABCD")
        assert [value for _, value in options] == meta["options"]
        assert len(set(meta["options"])) == 4 and meta["options"].count(meta["value"]) == 1
        assert dict(options)[meta["answer"]] == meta["value"] == task.kb[meta["entity"]][meta["attribute"]]
        assert example.gold.endswith(f" The answer is ({meta['answer']}).")
        assert meta["entity"] in example.prompt and meta["value"] in example.gold


def test_qa_held_out_facts_are_taught_in_train() -> None:
    task = QATask()
    assert task.kb == QATask().kb and task.kb != QATask(kb_seed=5).kb
    assert len(task.facts()) == 40 * 4
    train = task.examples("train", 4000, seed=0)
    train_facts = {(e.meta["entity"], e.meta["attribute"]) for e in train}
    assert len(train_facts) == 160
    held_out = task.examples("eval", 200, seed=0) + task.examples("pref", 200, seed=0)
    assert {(e.meta["entity"], e.meta["attribute"]) for e in held_out} <= train_facts
    # Same facts, different prompts: the rationale sentences coincide, the prompts never do.
    rationales = {e.gold.split(" The answer")[0] for e in train}
    assert {e.gold.split(" The answer")[0] for e in held_out} <= rationales


def test_qa_score_corrupt_and_fix_hand_made() -> None:
    task = QATask()
    example = task.examples("train", 1, seed=0)[0]
    assert example.prompt == (
        "Which city does Tibvan live in?\n(A) Pelmar (B) Quindle (C) Glent (D) Ostrin\nAnswer:"
    )
    assert example.gold == " Tibvan lives in Quindle. The answer is (B)."
    assert task.score(example, " The answer is (B)") == 1.0
    assert task.score(example, " Tibvan lives in Quindle. The answer is (C).") == 0.0
    assert task.score(example, " The answer is (A). The answer is (B).") == 0.0
    assert task.score(example, " The answer is B.") == 0.0
    rng = random.Random(0)
    for _ in range(20):
        bad = task.corrupt(example, rng)
        match = re.fullmatch(r" Tibvan lives in (\w+)\. The answer is \(([A-D])\)\.", bad)
        assert match is not None and match.group(1) != "Quindle"
        assert example.meta["options"]["ABCD".index(match.group(2))] == match.group(1)
    slips = QATask(letter_slip_prob=1.0)
    for _ in range(10):
        bad = slips.corrupt(example, rng)
        assert (
            bad.startswith(" Tibvan lives in Quindle. The answer is (") and slips.score(example, bad) == 0.0
        )
        assert slips.minimal_fix(example, bad) == example.gold
    # Right rationale, wrong letter: only the letter changes.
    assert task.minimal_fix(example, " Tibvan lives in Quindle.  The answer is (D).") == (
        " Tibvan lives in Quindle.  The answer is (B)."
    )
    assert task.minimal_fix(example, " Tibvan lives in Glent. The answer is (C). Extra") == example.gold
    assert task.minimal_fix(example, " Tibvan lives in Glent. The ans") == example.gold
    assert task.minimal_fix(example, " Tibvan works in Glent. The answer is (C).") is None
    assert task.minimal_fix(example, "") is None


# ---------------------------------------------------------------------------------------- instruct
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
