"""One rendering of a task's data: every prompt becomes the text the model reads, once, before any stage uses it.

Built-in tasks have text prompts already. Real datasets may hold conversational prompts (lists of
``{role, content}`` messages); they are rendered with the model's chat template when it has one, else as plain
``role: content`` lines, so that a tiny model with a locally trained tokenizer can use them. The SFT warm
start, the data stages and preference training all read the rendered :class:`~bmc.data.sources.TaskData`,
so the policy is warm-started on the format it is trained and sampled on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from bmc.data.sources import Prompt, TaskData


def render_prompt(prompt: Prompt, chat_template: PreTrainedTokenizerBase | None = None) -> str:
    """Text of a prompt; message lists use ``chat_template``'s template when it has one."""
    if isinstance(prompt, str):
        return prompt
    if chat_template is not None and getattr(chat_template, "chat_template", None):
        return chat_template.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant:"


def _render_rows(rows: list[dict[str, Any]], chat_template: PreTrainedTokenizerBase | None) -> list[dict[str, Any]]:
    return [{**row, "prompt": render_prompt(row["prompt"], chat_template)} for row in rows]


def render_task(task_data: TaskData, chat_template: PreTrainedTokenizerBase | None) -> TaskData:
    """``task_data`` with the prompts of its SFT examples, preference pairs and reward pairs as text."""
    return replace(
        task_data,
        sft_train=_render_rows(task_data.sft_train, chat_template),
        sft_val=_render_rows(task_data.sft_val, chat_template),
        pairs=_render_rows(task_data.pairs, chat_template),
        reward_pairs=_render_rows(task_data.reward_pairs, chat_template),
    )
