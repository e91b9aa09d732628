"""Tokenization, the truncation rule shared by SFT and preference data, and padding rows into a batch.

Prompt and response are tokenized separately and concatenated, so the prompt/response boundary is exact
and the response's log-probability never includes prompt tokens. A prompt starts with the model's BOS exactly
once (:func:`encode_prompts`), where its tokenizer uses one. Every response ends with the token that ends
an assistant turn (:func:`response_end_id`: the chat template's end-of-turn token, else EOS), so the model
learns to stop where its chat format does.

Truncation rule (applied only when prompt + longest response exceed ``max_length``):
1. the prompt's budget is what the longest response leaves of ``max_length``, but not below
   ``max_prompt_length`` tokens; a prompt within its budget stays whole;
2. a longer prompt keeps its frame and loses the tokens right after its head: it keeps its head (the tokens it
   shares at its start with the tokenizer's :func:`prompt_frame` head: BOS and the chat template's header
   before the user's content, all of it for a prompt rendered from one user turn, BOS alone for a plain text
   prompt) and then its last ``budget - head`` tokens, which end with the end of the last user turn and the
   assistant header that the response follows (the frame's tail);
3. a prompt whose head and tail leave no token of its content within the budget is dropped, not cut
   (:meth:`Truncation.apply` returns None; the DataModules count and report the rows they drop);
4. the responses are then cut from the right to fit.
Unlike a cut from the left (TRL's ``keep_end``), the model never reads a prompt without its BOS or its chat
header. Because ``max_prompt_length < max_length``, a non-empty response always keeps at least one token: the
rule cannot silently turn a response into an empty one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

#: raised whenever the rule changes which tokens a row keeps, so that caches keyed on the truncation settings (the
#: SFT warm start, the reward model) never serve a model trained on rows cut by an earlier rule. 2: the frame kept
TRUNCATION_RULE = 2


@dataclass(frozen=True)
class PromptFrame:
    """The tokens a tokenizer's prompts start (``head``) and end (``tail``) with around their content, which
    truncation keeps (:func:`prompt_frame`)."""

    head: tuple[int, ...] = ()
    tail: tuple[int, ...] = ()


@dataclass(frozen=True)
class Truncation:
    """The truncation rule of this module's docstring, for ``max_length`` prompt + response tokens."""

    max_length: int = 256
    max_prompt_length: int = 128

    def __post_init__(self) -> None:
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(
                f"need 0 < max_prompt_length < max_length, got max_prompt_length={self.max_prompt_length}, "
                f"max_length={self.max_length}"
            )

    def apply(
        self, prompt: list[int], responses: list[list[int]], frame: PromptFrame = PromptFrame()
    ) -> tuple[list[int], list[list[int]], bool] | None:
        """Truncate one prompt and its responses; returns (prompt, responses, was_truncated), or None when the
        row is dropped: its prompt must be cut but ``frame`` leaves no room for its content."""
        longest = max(len(r) for r in responses)
        if len(prompt) + longest <= self.max_length:
            return prompt, responses, False
        budget = max(self.max_prompt_length, self.max_length - longest)
        if len(prompt) > budget:
            head = _shared_length(prompt, frame.head)
            tail = _shared_length(prompt[::-1], frame.tail[::-1])
            if head + tail >= budget:
                return None
            prompt = prompt[:head] + prompt[len(prompt) - (budget - head) :]
        room = self.max_length - len(prompt)
        return prompt, [r[:room] for r in responses], True


def _shared_length(ids: Sequence[int], start: Sequence[int]) -> int:
    """How many tokens ``ids`` shares with ``start`` from their beginning."""
    return next((i for i, (a, b) in enumerate(zip(ids, start)) if a != b), min(len(ids), len(start)))


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


# text no template or tokenizer alters, to find where a message's content sits in a template's output
_PROBE = "\u2063bmc-response\u2063"


def _around_probe(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[str, str] | None:
    """The chat template's text before and after the ``_PROBE`` content of one of ``messages``, or None: no chat
    template, or one that refuses this conversation (it tells nothing about the format then)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception:
        return None
    if _PROBE not in text:
        return None
    before, after = text.split(_PROBE, 1)
    return before, after


def response_end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an assistant turn: the first special token the chat template writes after an
    assistant message (ChatML's ``<|im_end|>``, Gemma's ``<end_of_turn>``, Phi-3's ``<|end|>``, Llama 3's
    ``<|eot_id|>``), else EOS (no chat template, or one that writes no special token there)."""
    around = _around_probe(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}])
    if around is not None:
        special = set(tokenizer.all_special_ids)
        end = next((token for token in encode_texts(tokenizer, [around[1]])[0] if token in special), None)
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


def prompt_frame(tokenizer: PreTrainedTokenizerBase) -> PromptFrame:
    """The frame :class:`Truncation` keeps of this tokenizer's prompts: as head, the chat template's text before
    the content of a lone user message, tokenized as :func:`encode_prompts` does (so it starts with BOS where the
    model uses one); as tail, the text after that content with the generation prompt (the end of the user turn
    and the assistant header). Without a chat template (or with one that refuses a lone user message): BOS as
    head, no tail."""
    around = _around_probe(tokenizer, [{"role": "user", "content": _PROBE}], add_generation_prompt=True)
    if around is None:
        return PromptFrame(head=tuple(bos_prefix(tokenizer)))
    before, after = around
    return PromptFrame(tuple(encode_prompts(tokenizer, [before])[0]), tuple(encode_texts(tokenizer, [after])[0]))


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
