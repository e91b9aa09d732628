"""The QA task: its options and answer, held-out facts taught in train, and score, corruption and fix on hand-made
cases."""

from __future__ import annotations

import random
import re

from bmc.tasks import QATask


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
