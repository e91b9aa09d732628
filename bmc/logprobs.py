"""Per-token log-probabilities of response tokens (plain rows, and the rows of a pair or ranked list with their
prompt shared).

By default from the model's full logits. With ``chunk_positions`` (``logprob_chunk`` in the config; set for
pretrained models, whose 49k-256k vocabularies make the logits the largest tensor of a step), from the decoder's
hidden states and the LM head applied to that many positions at a time, each chunk recomputed in the backward
pass: no (rows, length, vocabulary) tensor, nor a float32 copy of one, is ever built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from bmc.attention import packed_attention_mask
from bmc.sharding import as_root_forward

#: raised whenever a change alters the values a scoring path gives, so that caches of log-probs keyed on it
#: (bmc.reference) never serve values of an earlier path. 2: the shared-prompt layout keeps sliding windows and
#: learned position tables, the chunked head applies logit multipliers
SCORING_REVISION = 2


def token_logps(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 16) -> torch.Tensor:
    """``log softmax(logits)[labels]`` per token, in float32.

    With gradients: one log-softmax over the vocabulary and a gather, which on CPU runs forward + backward
    several times faster than the gathered logit minus a logsumexp, chunked or not (docs/performance.md).
    Without gradients (reference log-probs), ``chunk_rows`` rows at a time, so a bf16 model never
    materialises a float32 copy of the whole (batch, length, vocabulary) tensor.
    """

    def gather(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(rows, -1, dtype=torch.float32).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    if torch.is_grad_enabled() and logits.requires_grad:
        return gather(logits, labels)
    return torch.cat(
        [gather(logits[s : s + chunk_rows], labels[s : s + chunk_rows]) for s in range(0, logits.shape[0], chunk_rows)]
    )


def _decoder_and_head(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.nn.Module, Callable | None]:
    """The decoder stack, the LM head and what the model does to the head's logits (:func:`_logit_transform`)
    of a causal LM, through a PEFT wrapper (whose adapters live inside these modules)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.get_output_embeddings(), _logit_transform(base.config)


def _logit_transform(config: object) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The scaling and soft-capping a family applies to its LM head's logits, in its own order: Cohere's
    ``logit_scale`` (times), Granite's ``logits_scaling`` (divided by), Falcon-H1's ``lm_head_multiplier``
    (times), then Gemma-2/3's ``final_logit_softcapping`` (``tanh(logits / cap) * cap``). A family that does
    anything else is caught by the first-batch check (:mod:`bmc.scoring_check`), which compares the chunked head
    with the model's own logits."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    for name, power in (("logit_scale", 1), ("logits_scaling", -1), ("lm_head_multiplier", 1)):
        if getattr(text, name, None) is not None:
            scale *= float(getattr(text, name)) ** power
    softcap = text.to_dict().get("final_logit_softcapping")
    if scale == 1.0 and softcap is None:
        return None

    def transform(logits: torch.Tensor) -> torch.Tensor:
        logits = logits * scale if scale != 1.0 else logits
        return logits if softcap is None else torch.tanh(logits / softcap) * softcap

    return transform


def _head_token_logps(
    head: torch.nn.Module,
    transform: Callable | None,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    chunk_positions: int,
) -> torch.Tensor:
    """``log softmax(head(hidden))[labels]`` in float32, ``chunk_positions`` positions at a time; with
    gradients, each chunk's logits are recomputed in the backward pass instead of kept."""

    def chunk(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = head(rows)
        return token_logps(logits if transform is None else transform(logits), targets)

    flat, targets = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    grads = torch.is_grad_enabled() and hidden.requires_grad
    pieces = [
        checkpoint(chunk, flat[s : s + chunk_positions], targets[s : s + chunk_positions], use_reentrant=False)
        if grads
        else chunk(flat[s : s + chunk_positions], targets[s : s + chunk_positions])
        for s in range(0, flat.shape[0], chunk_positions)
    ]
    return torch.cat(pieces).view(labels.shape)


def _next_token_logps(
    model: PreTrainedModel,
    labels: torch.Tensor,
    chunk_positions: int | None,
    select: tuple[torch.Tensor, torch.Tensor] | None = None,
    **inputs: torch.Tensor,
) -> torch.Tensor:
    """Log-probs of ``labels`` (N, T-1) from the outputs at positions 0..T-2 of each row of ``inputs``, or at
    the (rows, positions) of ``select`` (the shared-prompt layout), from the full logits or the chunked head."""
    # scoring never reuses keys and values; transformers would otherwise fill a KV cache in every forward, and
    # torch.compile recompile each layer on the cache's state
    inputs = {**inputs, "use_cache": False}
    if chunk_positions is None:
        logits = model(**inputs).logits
        return token_logps(logits[:, :-1] if select is None else logits[select], labels)

    def decoder_then_head() -> torch.Tensor:
        decoder, head, transform = _decoder_and_head(model)
        hidden = decoder(**inputs).last_hidden_state
        scored = hidden[:, :-1] if select is None else hidden[select]
        return _head_token_logps(head, transform, scored, labels, chunk_positions)

    # the decoder and the head called apart, not through model's forward: a sharded model gathers its own
    # weights (embeddings, norm, head) only in a forward
    return as_root_forward(model, decoder_then_head)


def response_token_logps(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], chunk_positions: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each next token, zero outside the response; returns (logps, mask), both (N, T-1).

    Position t scores token t+1, so the masks are shifted by one; prompt and padding tokens never
    contribute. ``chunk_positions``: the chunked LM head (module docstring).
    """
    mask = batch["response_mask"][:, 1:]
    logps = _next_token_logps(
        model,
        batch["input_ids"][:, 1:],
        chunk_positions,
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
    )
    return logps.masked_fill(~mask, 0.0), mask


def prompt_groups(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(G, K) the rows of a preference batch that share a prompt, each group's rows in order, ``-1`` padding a
    group shorter than the longest: a pair batch's (B chosen rows, then the B rejected rows) ``[i, B + i]``; a
    batch of ranked lists (with ``list_index``, each list's rows consecutive, :mod:`bmc.data.lists`) its lists."""
    n_rows = batch["input_ids"].shape[0]
    device = batch["input_ids"].device
    if "list_index" not in batch:
        pairs = torch.arange(n_rows // 2, device=device)
        return torch.stack([pairs, pairs + n_rows // 2], dim=1)
    sizes = torch.bincount(batch["list_index"])
    k = torch.arange(int(sizes.max()), device=device)[None]
    return torch.where(k < sizes[:, None], (torch.cumsum(sizes, 0) - sizes)[:, None] + k, -1)


def shared_prompt_token_logps(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], chunk_positions: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_token_logps` of a preference batch, running each prompt through the model once for all its
    responses (a pair's two, a ranked list's K: :func:`prompt_groups`) instead of once per response.

    Each group becomes one row ``prompt + y_1 + ... + y_K``. Every response's position ids restart where the prompt
    ends, and a (G, 1, L, L) attention mask lets a response see the prompt and itself only, so every token attends
    to exactly what it attends to in its own row, sliding windows included (measured on position ids,
    :mod:`bmc.attention`). The logits at the prompt's last token predict the first token of every response.
    Returns the same (N, T-1) layout as :func:`response_token_logps`. The model must honour ``position_ids`` and a
    4D attention mask; :func:`bmc.scoring_check.verify_scoring` checks this on a run's first batch.
    """
    inputs, select = _shared_prompt_inputs(model, batch)
    mask = batch["response_mask"][:, 1:]
    logps = _next_token_logps(model, batch["input_ids"][:, 1:], chunk_positions, select=select, **inputs)
    return logps.masked_fill(~mask, 0.0), mask


def _shared_prompt_inputs(
    model: PreTrainedModel, batch: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The packed rows of :func:`shared_prompt_token_logps` (the model's inputs) and the (rows, positions) of its
    outputs that score each plain position t, in the plain (N, T-1) layout."""
    ids, response = batch["input_ids"], batch["response_mask"]
    groups, width = prompt_groups(batch), ids.shape[1]
    present, members = groups >= 0, groups.clamp(min=0)
    lengths = batch["attention_mask"].sum(-1)
    starts = response.int().argmax(-1)  # the first response position, i.e. the prompt length
    prompt = starts[members[:, 0]]
    in_prompt = torch.arange(width, device=ids.device) < prompt[:, None]
    same_prompt = ((starts[members] == prompt[:, None]) | ~present).all() and not (
        (ids[members] != ids[members[:, :1]]) & in_prompt[:, None] & present[..., None]
    ).any()
    if (prompt < 1).any() or not same_prompt or int(present.sum()) != ids.shape[0]:
        raise ValueError("shared-prompt log-probs need the rows of each pair or list to hold the same non-empty prompt")

    sizes = torch.where(present, lengths[members] - prompt[:, None], 0)  # response lengths, 0 for padding
    ends = prompt[:, None] + sizes.cumsum(-1)  # where each response ends in its packed row
    offsets = ends - sizes  # and where it starts
    packed_width = int(ends[:, -1].max())
    j = torch.arange(packed_width, device=ids.device)[None]
    real = j < ends[:, -1:]
    # the segment of each packed position: -1 the prompt, k response k, K padding
    prompt_part = j < prompt[:, None]
    segment = torch.where(prompt_part, -1, (j[:, :, None] >= ends[:, None, :]).sum(-1))
    own = segment.clamp(0, groups.shape[1] - 1)
    shift = offsets.gather(1, own) - prompt[:, None]  # packed position - position in the response's own row
    source_col = torch.where(prompt_part, j, j - shift).clamp(max=width - 1)
    packed = torch.where(real, ids[members.gather(1, own), source_col], ids.new_zeros(()))
    # padding slots take position 0: a packed row is wider than the plain rows, and positions up to its width
    # would index past a learned position table (GPT-2) that the plain rows fit
    position_ids = torch.where(prompt_part, j, j - shift).masked_fill(~real, 0)

    causal = j.T >= j  # (L, L): query >= key
    query, key = segment[:, :, None], segment[:, None, :]
    # a key in the prompt or in the query's own response; padding queries (whose outputs nothing reads) see all
    visible = (key == -1) | (key == query) | (query == groups.shape[1])
    allowed = (causal & real[:, None, :] & visible) | torch.eye(packed_width, dtype=torch.bool, device=ids.device)

    # plain position t (scoring token t+1) of a row is packed position t + its response's shift, except in the
    # prompt (its last position predicts the first token of every response)
    group_of, slot_of = torch.empty_like(starts), torch.empty_like(starts)
    group_of[groups[present]] = torch.nonzero(present)[:, 0]
    slot_of[groups[present]] = torch.nonzero(present)[:, 1]
    row_shift = (offsets[group_of, slot_of] - prompt[group_of])[:, None]
    t = torch.arange(width - 1, device=ids.device)[None]
    positions = torch.where(t < prompt[group_of][:, None], t, t + row_shift).clamp(max=packed_width - 1)
    inputs = {
        "input_ids": packed,
        "attention_mask": packed_attention_mask(model, allowed, position_ids),
        "position_ids": position_ids,
    }
    return inputs, (group_of[:, None], positions)


def scored_hidden_states(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], share_prompt: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's last hidden states that score each next token, (N, T-1, hidden) in the plain layout of
    :func:`response_token_logps` (position t scores token t+1), from plain rows or, with ``share_prompt``, from the
    packed rows of :func:`shared_prompt_token_logps`; and the response mask (N, T-1). For computing more than a
    token's log-prob from the LM head (:mod:`bmc.sequence_kl`); :func:`lm_head` turns them into logits."""
    decoder, _, _ = _decoder_and_head(model)
    if share_prompt:
        inputs, select = _shared_prompt_inputs(model, batch)
    else:
        inputs, select = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, None
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    return (hidden[:, :-1] if select is None else hidden[select]), batch["response_mask"][:, 1:]


def lm_head(model: PreTrainedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hidden states -> the model's logits: its LM head and the family's logit scaling (:func:`_logit_transform`)."""
    _, head, transform = _decoder_and_head(model)
    return head if transform is None else lambda hidden: transform(head(hidden))
