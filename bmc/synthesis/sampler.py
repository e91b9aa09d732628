"""Completions to build pairs from: N per prompt sampled from the starting policy (cached and resumable), or
drawn from a built-in task's own generator without a model (:func:`task_completions`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.generation import generate
from bmc.synthesis.store import resumable_map
from bmc.tasks import Example, Task


def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    cache_root: str | Path,
    cache_payload: Any,
    n: int = 5,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens: int = 64,
    prompts_per_batch: int = 16,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``[{prompt, completions: [n strings], truncated: [n bools]}]`` in prompt order.

    Each batch is seeded from ``seed`` and its position, so a resumed run samples exactly what an
    uninterrupted one would. ``cache_payload`` must identify the model (e.g. the SFT cache key).
    """

    def process(batch: list[str], first_index: int) -> list[dict[str, Any]]:
        torch.manual_seed(seed * 1_000_003 + first_index)
        repeated = [p for p in batch for _ in range(n)]
        outputs = generate(
            model,
            tokenizer,
            repeated,
            max_new_tokens,
            batch_size=len(repeated),
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            desc="sample",
        )
        return [
            {
                "prompt": prompt,
                "completions": [text for text, _ in outputs[i * n : (i + 1) * n]],
                "truncated": [cut for _, cut in outputs[i * n : (i + 1) * n]],
            }
            for i, prompt in enumerate(batch)
        ]

    payload = {
        "model": cache_payload,
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    return resumable_map(cache_root, "samples", payload, list(prompts), process, batch_size=prompts_per_batch)


def task_completions(task: Task, examples: Sequence[Example], n: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """``[{prompt, completions, truncated}]`` like :func:`sample_completions`, from the task instead of a model:
    each prompt's gold response and ``n - 1`` of the generator's realistic errors, in a seeded order.

    For runs whose model is too small to answer in the task's format at all (``debug=default``), where sampled
    completions would give the verifier, the judges and the task editor nothing to work on.
    """
    samples = []
    for example in examples:
        rng = random.Random(f"{seed}/{example.prompt}")
        completions = [example.gold] + [task.corrupt(example, rng) for _ in range(n - 1)]
        rng.shuffle(completions)
        samples.append({"prompt": example.prompt, "completions": completions, "truncated": [False] * n})
    return samples
