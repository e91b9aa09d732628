"""One rendering of a task's data: every prompt becomes the text the model reads, once, before any stage uses it.

Built-in tasks have text prompts already. Real datasets may hold conversational prompts (lists of
``{role, content}`` messages); they are rendered with the model's chat template when it has one, else as plain
``role: content`` lines, so that a tiny model with a locally trained tokenizer can use them. A task whose text
prompts are user turns (``TaskData.user_turns``: a built-in task posed to an instruct model) is rendered the
same way, its verifier-scored examples included, so that sampling and evaluation read what training reads. The SFT warm
start, the data stages and preference training all read the rendered :class:`~bmc.data.sources.TaskData`,
so the policy is warm-started on the format it is trained and sampled on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from bmc.data.sources import Prompt, TaskData
from bmc.tasks import Example


def render_prompt(prompt: Prompt, chat_template: PreTrainedTokenizerBase | None = None, user_turn: bool = False) -> str:
    """Text of a prompt; message lists (and text with ``user_turn``: one user message) use ``chat_template``'s
    template when it has one."""
    if isinstance(prompt, str):
        if not user_turn:
            return prompt
        prompt = [{"role": "user", "content": prompt}]
    if chat_template is not None and getattr(chat_template, "chat_template", None):
        return chat_template.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant:"


def render_task(task_data: TaskData, chat_template: PreTrainedTokenizerBase | None) -> TaskData:
    """``task_data`` with the prompts of its SFT examples, preference (and validation) pairs and reward pairs as
    text (and, for user-turn tasks, of its verifier-scored examples)."""

    def render(prompt: Prompt) -> str:
        return render_prompt(prompt, chat_template, task_data.user_turns)

    def rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**row, "prompt": render(row["prompt"])} for row in items]

    def examples(items: list[Example]) -> list[Example]:
        return [replace(e, prompt=render(e.prompt)) for e in items]

    return replace(
        task_data,
        sft_train=rows(task_data.sft_train),
        sft_val=rows(task_data.sft_val),
        pairs=rows(task_data.pairs),
        val_pairs=rows(task_data.val_pairs),
        reward_pairs=rows(task_data.reward_pairs),
        eval_examples=examples(task_data.eval_examples),
        pref_examples=examples(task_data.pref_examples),
        sft_val_examples=examples(task_data.sft_val_examples),
        user_turns=False,  # rendered: the prompts are the model's text now
    )
