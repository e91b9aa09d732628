"""The built-in synthetic tasks (bmc.tasks), every one of them: generation, splits, verifiers, corruption, fixing."""

from __future__ import annotations

import difflib
import json
import os
import random

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


