"""Where a run's examples come from: a built-in task (generated, with a verifier) or a real preference
dataset. ``conf/task/*.yaml`` instantiate one of the functions here through ``_target_``."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from typing import Any

from bmc.tasks import Example, Task
from bmc.tasks.base import ANSWER_SUFFIX

#: a prompt as a task holds it: text, or the messages of a conversation (real datasets) until rendered
Prompt = str | list[dict[str, str]]


@dataclass
class TaskData:
    """Everything a run needs from a task.

    Prompts may be message lists until :func:`bmc.data.render.render_task` turns them into text; every stage
    after that reads the rendered copy.

    ``pairs`` are the task's given preference pairs (``data=original``), with any extra columns of their rows
    (ids, scores, ``task_source``) beside ``prompt``/``chosen``/``rejected``; ``eval_examples`` are held-out
    prompts scored by ``verifier`` after training (a dataset's eval split: its prompts, the first chosen
    response of each as ``gold``; empty without one). ``val_pairs`` are the eval split's pairs, the validation
    pairs of ``data=original`` (empty: validation is held out of ``pairs``).
    ``reward_pairs`` are pairs on prompts disjoint from ``pairs`` for training a reward model
    (:func:`bmc.stages.reward_model.train_reward_model`); built-in tasks make them from the SFT split.
    ``sft_val_examples`` are the verifier-scored examples behind ``sft_val``, on which the SFT stage may stop at
    a target accuracy (``sft.target_accuracy``).
    ``report``: what loading found, for the data report (drops by reason, extra columns, pairs per source).
    ``user_turns``: the text prompts (of the pairs and of the examples) are a user's turn of a chat, rendered
    with the model's chat template like conversational prompts (built-in tasks posed to an instruct model).
    """

    name: str
    sft_train: list[dict[str, str]]
    sft_val: list[dict[str, str]]
    pairs: list[dict[str, str]]
    eval_examples: list[Example] = field(default_factory=list)
    verifier: Task | None = None
    pref_examples: list[Example] = field(default_factory=list)
    reward_pairs: list[dict[str, str]] = field(default_factory=list)
    sft_val_examples: list[Example] = field(default_factory=list)
    val_pairs: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    user_turns: bool = False

    def corpus(self) -> list[str]:
        """Text a locally trained tokenizer learns from: the rendered SFT prompts and responses."""
        return [row["prompt"] + row["response"] for row in self.sft_train]


def builtin_task(
    name: str, generator: Task, sizes: dict[str, int], seed: int = 0, chat_instruction: str | None = None
) -> TaskData:
    """A generated task: SFT on gold responses of the ``train`` split, preference pairs on the disjoint
    ``pref`` split (chosen = gold, rejected = the generator's realistic error), evaluation on ``eval``.

    With ``chat_instruction`` the task is posed as a chat to an instruct model: each prompt becomes a user
    turn (the question without the ``"\nAnswer:"`` cue, then the instruction, which says how to state the
    answer so that the verifier finds it), rendered later by the model's chat template, and responses drop
    the leading space that continues a plain-text prompt."""

    def pose(example: Example) -> Example:
        if chat_instruction is None:
            return example
        question = example.prompt.removesuffix(ANSWER_SUFFIX)
        return replace(example, prompt=f"{question}\n{chat_instruction}", gold=example.gold.lstrip())

    def wrong(example: Example) -> str:
        response = generator.corrupt(example, rng)
        return response if chat_instruction is None else response.lstrip()

    train, pref, evaluation = (
        [pose(e) for e in generator.examples(split, sizes[split], seed=seed)] for split in ("train", "pref", "eval")
    )
    rng = random.Random(seed)
    pairs = [{"prompt": e.prompt, "chosen": e.gold, "rejected": wrong(e)} for e in pref]
    reward_pairs = [{"prompt": e.prompt, "chosen": e.gold, "rejected": wrong(e)} for e in train]
    sft_val_examples = pref[: sizes.get("sft_val", 128)]
    return TaskData(
        name=name,
        sft_train=[{"prompt": e.prompt, "response": e.gold} for e in train],
        sft_val=[{"prompt": e.prompt, "response": e.gold} for e in sft_val_examples],
        pairs=pairs,
        eval_examples=evaluation,
        verifier=generator,
        pref_examples=pref,
        reward_pairs=reward_pairs,
        sft_val_examples=sft_val_examples,
        user_turns=chat_instruction is not None,
    )


def split_pairs(pairs: list[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``val_fraction`` of the pairs (at least one) for validation, by prompt: the prompts are shuffled
    with ``seed`` and taken whole until the held-out pairs reach that share, so no prompt is in both splits
    (several pairs per prompt, ``keep_original``). With one pair per prompt, a seeded shuffle of the pairs."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 preference pairs to split train/val, got {len(pairs)}")
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for pair in pairs:
        by_prompt.setdefault(json.dumps(pair["prompt"]), []).append(pair)
    groups = list(by_prompt.values())
    if len(groups) < 2:
        raise ValueError(f"need pairs of at least 2 prompts to split train/val by prompt; all {len(pairs)} share one")
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n_val, held_out = max(1, round(val_fraction * len(pairs))), 0
    for cut, index in enumerate(order):
        if held_out >= n_val or cut == len(order) - 1:  # the last prompt always stays for training
            break
        held_out += len(groups[index])
    return [p for i in order[cut:] for p in groups[i]], [p for i in order[:cut] for p in groups[i]]
