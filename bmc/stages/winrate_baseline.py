"""The baseline side of the ``winrate`` evaluation (:mod:`bmc.stages.winrate`): the held-out prompts, the
answer budget, and the baseline's answer to each prompt (``eval.baseline``).

Held-out prompts: the task's eval split (built-in tasks; the gold response is the chosen one), or for a
dataset without one (``task=hf_prefs``) the prompts of the preference stage's validation pairs, with the
dataset's chosen response.

Baselines: ``reference``, the starting policy's own greedy answer with the same budget, generated before
training while the policy still holds the starting weights and cached under ``<cache>/reference_answers`` by the
starting checkpoint and the precision; ``chosen``, the dataset's chosen response; anything else is the path of
a JSONL file of ``{prompt, answer}`` rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bmc.cache import cache_key
from bmc.generation import generate, generation_budget
from bmc.precision import resolve_precision
from bmc.stages.products import EvalSetup, train_val_pairs
from bmc.synthesis.store import resumable_map
from bmc.tasks import Example


@dataclass(frozen=True)
class HeldOut:
    """A held-out prompt and the data's chosen response to it (None where the data has none)."""

    prompt: str
    chosen: str | None


def held_out_prompts(setup: EvalSetup) -> list[HeldOut]:
    """The task's eval examples, or the distinct prompts of the validation pairs with the dataset's chosen
    response (the first pair's of that prompt in the task's own pairs)."""
    task_data = setup.task_data
    if task_data.eval_examples:
        return [HeldOut(e.prompt, e.gold) for e in task_data.eval_examples]
    chosen: dict[str, str] = {}
    for pair in task_data.pairs:
        chosen.setdefault(pair["prompt"], pair["chosen"])
    _, val_pairs = train_val_pairs(setup.cfg, setup.pairs)
    prompts = dict.fromkeys(pair["prompt"] for pair in val_pairs)
    return [HeldOut(prompt, chosen.get(prompt)) for prompt in prompts]


def answer_budget(cfg: DictConfig, tokenizer: Any, held_out: list[HeldOut]) -> int:
    """``eval.max_new_tokens``, or (null) the longest chosen response + 16, as the verifier evaluation sizes it."""
    if cfg.eval.get("max_new_tokens"):
        return int(cfg.eval.max_new_tokens)
    known = [Example(h.prompt, h.chosen) for h in held_out if h.chosen]
    if not known:
        raise ValueError("eval.max_new_tokens=null sizes answers by the chosen responses, and there are none: set it")
    return generation_budget(tokenizer, known)


@dataclass(frozen=True)
class Baseline:
    """The baseline's answer to each held-out prompt; ``name`` says where they came from. ``truncated``: the
    prompts whose answer, generated here, the token budget cut off (answers from the data or a file are taken as
    they are)."""

    name: str
    answers: dict[str, str]
    truncated: frozenset[str] = field(default_factory=frozenset)

    def key(self) -> dict[str, str]:
        """What identifies the baseline in the stage's cache key: its answers' contents."""
        return {"name": self.name, "answers": cache_key(self.answers)}


def _reference_answers(setup: EvalSetup, held_out: list[HeldOut], budget: int) -> Baseline:
    """The starting policy's greedy answers in the trainer's precision, cached by its checkpoint, the prompts,
    the budget and the precision."""
    cfg, policy = setup.cfg, setup.policy
    precision = resolve_precision(cfg.trainer.precision)
    prompts = [h.prompt for h in held_out]
    # "entry": entries since then say whether the budget cut the answer off; older ones, without, are not read
    payload = {"reference": policy.fingerprint(), "max_new_tokens": budget, "batch_size": cfg.eval.batch_size,
               **precision.key_fields(), "entry": "truncated"}  # fmt: skip

    def answer(batch: list[str], start: int) -> list[dict[str, Any]]:
        outputs = generate(policy.model, policy.tokenizer, batch, budget, batch_size=len(batch), desc="reference",
                           precision=precision)  # fmt: skip
        return [{"answer": text, "truncated": truncated} for text, truncated in outputs]

    rows = resumable_map(cfg.paths.cache_dir, "reference_answers", payload, prompts, answer, cfg.eval.batch_size)
    answers = {p: row["answer"] for p, row in zip(prompts, rows)}
    return Baseline("reference", answers, frozenset(p for p, row in zip(prompts, rows) if row["truncated"]))


def _chosen_answers(setup: EvalSetup, held_out: list[HeldOut], budget: int) -> Baseline:
    """The data's chosen responses; a held-out prompt without one raises naming ``eval.baseline=chosen``."""
    missing = [h.prompt for h in held_out if h.chosen is None]
    if missing:
        raise ValueError(
            f"eval.baseline=chosen needs the data's chosen response to every held-out prompt; {len(missing)} of "
            f"{len(held_out)} have none (first: {missing[0][:80]!r}). Use eval.baseline=reference or a JSONL file"
        )
    return Baseline("chosen", {h.prompt: h.chosen for h in held_out})


def _file_answers(path: str, held_out: list[HeldOut]) -> Baseline:
    """``{prompt, answer}`` rows of a JSONL file; every held-out prompt must have one."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"eval.baseline must be reference, chosen or a JSONL file of {{prompt, answer}}: {path!r}")
    answers: dict[str, str] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            answers[row["prompt"]] = row["answer"]
        except (json.JSONDecodeError, TypeError, KeyError):
            raise ValueError(
                f'eval.baseline={path}, line {number}: expected {{"prompt": ..., "answer": ...}}'
            ) from None
    missing = [h.prompt for h in held_out if not isinstance(answers.get(h.prompt), str)]
    if missing:
        raise ValueError(
            f"eval.baseline={path} has no answer text for {len(missing)} of {len(held_out)} held-out prompts "
            f"(first: {missing[0][:80]!r}); its prompts must be the rendered held-out prompts"
        )
    return Baseline(str(file.resolve()), {h.prompt: answers[h.prompt] for h in held_out})


#: ``eval.baseline`` names -> their answers; any other value is a JSONL file (:func:`_file_answers`)
BASELINES: dict[str, Callable[[EvalSetup, list[HeldOut], int], Baseline]] = {
    "reference": _reference_answers,
    "chosen": _chosen_answers,
}


def baseline_answers(setup: EvalSetup, held_out: list[HeldOut], budget: int) -> Baseline:
    """The baseline of ``eval.baseline`` (module docstring)."""
    spec = str(setup.cfg.eval.baseline)
    if spec in BASELINES:
        return BASELINES[spec](setup, held_out, budget)
    return _file_answers(spec, held_out)


def check_baseline(cfg: DictConfig) -> None:
    """Fail before any stage runs on an ``eval.baseline`` that is neither a name of :data:`BASELINES` nor a file."""
    spec = str(cfg.eval.baseline)
    if spec not in BASELINES and not Path(spec).is_file():
        raise ValueError(
            f"eval.baseline must be one of {sorted(BASELINES)} or a JSONL file of {{prompt, answer}} rows, "
            f"got {spec!r} (no such file)"
        )
