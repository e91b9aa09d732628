"""Tokenization, the truncation rule shared by SFT and preference data, and padding rows into a batch.

Prompt and response are tokenized separately and concatenated, so the prompt/response boundary is exact
and the response's log-probability never includes prompt tokens. A prompt starts with the model's BOS exactly
once (:func:`encode_prompts`), where its tokenizer uses one. Every response ends with the token that ends
an assistant turn (:func:`response_end_id`: the chat template's end-of-turn token, else EOS), so the model
learns to stop where its chat format does.

Truncation rule (applied only when prompt + longest response exceed ``max_length``):
1. the prompt is cut from the left (its end, which holds the question, is kept), but never below
   ``max_prompt_length`` tokens;
2. the responses are then cut from the right to fit.
Because ``max_prompt_length < max_length``, a non-empty response always keeps at least one token: the
rule cannot silently turn a response into an empty one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Truncation:
    max_length: int = 256
    max_prompt_length: int = 128

    def __post_init__(self) -> None:
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(
                f"need 0 < max_prompt_length < max_length, got max_prompt_length={self.max_prompt_length}, "
                f"max_length={self.max_length}"
            )

    def apply(self, prompt: list[int], responses: list[list[int]]) -> tuple[list[int], list[list[int]], bool]:
        """Truncate one prompt and its responses; returns (prompt, responses, was_truncated)."""
        longest = max(len(r) for r in responses)
        if len(prompt) + longest <= self.max_length:
            return prompt, responses, False
        keep_prompt = min(len(prompt), max(self.max_prompt_length, self.max_length - longest))
        prompt = prompt[len(prompt) - keep_prompt :]
        budget = self.max_length - len(prompt)
        return prompt, [r[:budget] for r in responses], True


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


_PROBE = "\u2063bmc-response\u2063"  # text no template or tokenizer alters, to find where a response ends


def response_end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an assistant turn: the first special token the chat template writes after an
    assistant message (ChatML's ``<|im_end|>``, Gemma's ``<end_of_turn>``, Phi-3's ``<|end|>``, Llama 3's
    ``<|eot_id|>``), else EOS (no chat template, or one that writes no special token there)."""
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
        try:
            text = tokenizer.apply_chat_template(turns, tokenize=False)
        except Exception:  # a template that refuses this conversation tells nothing about where turns end
            text = ""
        if _PROBE in text:
            special = set(tokenizer.all_special_ids)
            after = encode_texts(tokenizer, [text.split(_PROBE, 1)[1]])[0]
            end = next((token for token in after if token in special), None)
            if end is not None:
                return end
    return tokenizer.eos_token_id


def bos_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """``[BOS]`` when the tokenizer itself puts one before a text (Llama, Mistral, Gemma), else ``[]``."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Prompt token ids with the model's BOS exactly once: added where the tokenizer would add one, unless the
    text already begins with it (a chat template's output usually does)."""
    prefix = bos_prefix(tokenizer)
    return [ids if ids[:1] == prefix else prefix + ids for ids in encode_texts(tokenizer, texts)]


def served_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """``text`` as sent to a server that encodes it with special tokens, as this tokenizer does (the completions
    endpoint of vLLM, llama.cpp or TGI): without a leading BOS where the tokenizer adds one itself, so that the
    served model sees BOS once, as :func:`encode_prompts` gives it to the ``hf`` backend."""
    bos = tokenizer.bos_token
    return text[len(bos) :] if bos and bos_prefix(tokenizer) and text.startswith(bos) else text


def encode_responses(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    end = response_end_id(tokenizer)
    return [ids + [end] for ids in encode_texts(tokenizer, texts)]


def pad_sequences(
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    pad_id: int,
    response_marks: Sequence[list[int]] | None = None,
    response_ref_logps: Sequence[list[float]] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad prompt+response rows into ``input_ids``, ``attention_mask``, ``response_mask`` and,
    when ``response_marks`` are given, ``diff_mask`` (the BMC marks, zero on prompt and padding).

    ``response_ref_logps`` (one value per response token) become ``ref_token_logps``, laid out like the
    output of :func:`bmc.logprobs.response_token_logps`: (N, T-1), position t scoring token t+1, zero elsewhere.
    """
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    n = len(prompts)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.bool)
    diff_mask = torch.zeros((n, width), dtype=torch.bool) if response_marks is not None else None
    ref_logps = torch.zeros((n, width - 1)) if response_ref_logps is not None else None
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        start, end = len(prompt), len(prompt) + len(response)
        input_ids[i, :end] = torch.tensor(prompt + response)
        attention_mask[i, :end] = 1
        response_mask[i, start:end] = True
        if diff_mask is not None:
            diff_mask[i, start:end] = torch.tensor(response_marks[i], dtype=torch.bool)
        if ref_logps is not None:
            ref_logps[i, start - 1 : end - 1] = torch.tensor(response_ref_logps[i])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
    if diff_mask is not None:
        batch["diff_mask"] = diff_mask
    if ref_logps is not None:
        batch["ref_token_logps"] = ref_logps
    return batch
