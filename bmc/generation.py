"""Batched generation with a causal LM: on-policy sampling, the SFT stop checks and the final evaluation all
generate through :func:`generate`, and score greedy answers with :func:`answer_and_score`.

The lowest layer that runs a model forward for text: the synthesis stages and the evaluation stage import
it, it imports neither."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.data.tokenize import encode_prompts, encode_texts, response_end_id
from bmc.precision import DEFAULT_PRECISION, Precision
from bmc.tasks import Example, Task


class Completion(NamedTuple):
    """A model's text for one prompt and whether the token budget cut it off before its end: no end token
    within ``max_new_tokens`` here, ``finish_reason == "length"`` from a server. What every model output of the
    synthesis and evaluation stages carries (samples, judge and editor replies, answers), so that their gates
    can tell a finished text from a cut-off one."""

    text: str
    truncated: bool

    @classmethod
    def from_finish_reason(cls, text: str, finish_reason: str | None) -> Completion:
        """A server's completion (OpenAI-compatible APIs, vLLM): ``"length"`` is the token budget running out."""
        return cls(text, finish_reason == "length")


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    desc: str = "generate",
    progress: bool = True,
    precision: Precision = DEFAULT_PRECISION,
) -> list[Completion]:
    """Complete each prompt: a :class:`Completion` each, truncated when no end token came within the budget.

    Prompts are left-padded so every row's new tokens start at the same column. Generation stops at any of
    :func:`stop_token_ids`. ``precision``: the trainer's (:mod:`bmc.precision`), which the policy generates in
    as it trains; a precision that casts the weights leaves the model cast, as ``fit`` would.
    """
    was_training = model.training
    model.eval()
    precision.convert(model)
    device = next(model.parameters()).device
    pad, stops = tokenizer.pad_token_id, stop_token_ids(model, tokenizer)
    results: list[Completion] = []
    encoded = encode_prompts(tokenizer, list(prompts))
    for start in tqdm(range(0, len(encoded), batch_size), desc=desc, leave=False, disable=not progress):
        rows = encoded[start : start + batch_size]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
        )
        with precision.forward_context(device):
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=stops,
                **sampling,
            )[:, width:].tolist()
        for ids in output:
            end = next((i for i, token in enumerate(ids) if token in stops), None)
            results.append(Completion(tokenizer.decode(ids[:end], skip_special_tokens=True), end is None))
    model.train(was_training)
    return results


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids that end an answer: the tokenizer's EOS, the token training ends responses with
    (:func:`~bmc.data.tokenize.response_end_id`, the chat template's end of turn) and every id of the model's
    generation config ``eos_token_id`` (chat models list their end-of-turn tokens there)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    ids = [tokenizer.eos_token_id, response_end_id(tokenizer), *configured]
    return [token for token in dict.fromkeys(ids) if token is not None]


def generation_budget(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], margin: int = 16) -> int:
    """Longest gold response in tokens (+EOS) plus a margin: a shorter budget would silently turn correct
    answers into wrong, truncated ones."""
    return max(len(ids) for ids in encode_texts(tokenizer, [e.gold for e in examples])) + 1 + margin


def answer_and_score(
    task: Task,
    examples: Sequence[Example],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 64,
    progress: bool = True,
    max_new_tokens: int | None = None,
    precision: Precision = DEFAULT_PRECISION,
) -> list[dict[str, Any]]:
    """The greedy answer to each example and its verifier score, one row per example in order (``prompt``,
    ``response``, ``truncated``, ``score``), within ``max_new_tokens`` (None: :func:`generation_budget`, the
    gold responses' length plus a margin), generated in the trainer's ``precision``."""
    outputs = generate(
        model,
        tokenizer,
        [e.prompt for e in examples],
        max_new_tokens or generation_budget(tokenizer, examples),
        batch_size=batch_size,
        desc="evaluate",
        progress=progress,
        precision=precision,
    )
    return [
        {"prompt": example.prompt, "response": text, "truncated": truncated, "score": task.score(example, text)}
        for example, (text, truncated) in zip(examples, outputs)
    ]


def score_summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Accuracy (score == 1), mean score and the fraction of truncated answers of :func:`answer_and_score`'s rows."""
    n = max(len(rows), 1)
    return {
        "accuracy": sum(r["score"] == 1.0 for r in rows) / n,
        "score": sum(r["score"] for r in rows) / n,
        "truncated": sum(bool(r["truncated"]) for r in rows) / n,
        "num_prompts": float(len(rows)),
    }
