"""Per-token log-probabilities of response tokens.

By default from the model's full logits. With ``chunk_positions`` (``logprob_chunk`` in the config; set for
pretrained models, whose 49k-256k vocabularies make the logits the largest tensor of a step), from the decoder's
hidden states and the LM head applied to that many positions at a time, each chunk recomputed in the backward
pass: no (rows, length, vocabulary) tensor, nor a float32 copy of one, is ever built.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

#: the largest per-token log-prob difference between shared-prompt and plain scoring that
#: :func:`scores_with_shared_prompt` accepts, by the dtype of the weights (the check runs outside autocast, so
#: float32 weights are checked in float32 under any mixed precision). Measured on SmolLM2-135M's pairs
#: (docs/performance.md, "bf16 on this CPU"): rounding reaches 2e-5 in float32 and 0.39 with bfloat16
#: weights; a model that ignores the position ids or the 4D mask is off by 1.9 to 9.7
SHARE_PROMPT_TOLERANCE = {"32-bit and wider": 0.05, "16-bit": 1.0}


def share_prompt_tolerance(dtype: torch.dtype) -> float:
    """The entry of :data:`SHARE_PROMPT_TOLERANCE` for weights of ``dtype``."""
    return SHARE_PROMPT_TOLERANCE["16-bit" if dtype.itemsize < 4 else "32-bit and wider"]


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


def _decoder_and_head(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """The decoder stack, the LM head and the final logit soft-cap (Gemma-2) of a causal LM, through a PEFT
    wrapper (whose adapters live inside these modules)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if getattr(config, "logit_scale", None) is not None or getattr(config, "logits_scaling", None) is not None:
        raise ValueError(
            f"logprob_chunk: {type(base).__name__} rescales its logits after the LM head, which the chunked head "
            "does not reproduce; set logprob_chunk=null"
        )
    return (
        getattr(base, base.base_model_prefix),
        base.get_output_embeddings(),
        config.get_text_config().to_dict().get("final_logit_softcapping"),
    )


def _head_token_logps(
    head: torch.nn.Module, softcap: float | None, hidden: torch.Tensor, labels: torch.Tensor, chunk_positions: int
) -> torch.Tensor:
    """``log softmax(head(hidden))[labels]`` in float32, ``chunk_positions`` positions at a time; with
    gradients, each chunk's logits are recomputed in the backward pass instead of kept."""

    def chunk(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = head(rows)
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return token_logps(logits, targets)

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
    decoder, head, softcap = _decoder_and_head(model)
    hidden = decoder(**inputs).last_hidden_state
    scored = hidden[:, :-1] if select is None else hidden[select]
    return _head_token_logps(head, softcap, scored, labels, chunk_positions)


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


def shared_prompt_token_logps(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], chunk_positions: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_token_logps` of a preference batch (B chosen rows, then the B rejected rows of the same
    prompts), running each prompt through the model once instead of twice.

    Each pair becomes one row ``prompt + chosen + rejected``. The rejected response's position ids restart
    where the prompt ends, and a (B, 1, L, L) attention mask keeps it from seeing the chosen response, so
    every token attends to exactly what it attends to in its own row. The logits at the prompt's last token
    predict the first token of both responses. Returns the same (2B, T-1) layout as
    :func:`response_token_logps`. The model must honour ``position_ids`` and a 4D attention mask (boolean for
    sdpa, additive float for eager attention, which adds it to the scores); ``PreferenceModule`` checks this on
    its first batch.
    """
    ids, response = batch["input_ids"], batch["response_mask"]
    n_pairs, width = ids.shape[0] // 2, ids.shape[1]
    lengths = batch["attention_mask"].sum(-1)
    starts = response.int().argmax(-1)  # the first response position, i.e. the prompt length
    prompt = starts[:n_pairs]
    chosen, rejected = lengths[:n_pairs] - prompt, lengths[n_pairs:] - prompt  # response lengths
    in_prompt = torch.arange(width, device=ids.device) < prompt[:, None]
    same_prompt = (starts[n_pairs:] == prompt).all() and not ((ids[:n_pairs] != ids[n_pairs:]) & in_prompt).any()
    if (prompt < 1).any() or not same_prompt:
        raise ValueError("shared-prompt log-probs need rows i and B+i to hold the same non-empty prompt")

    packed_width = int((prompt + chosen + rejected).max())
    j = torch.arange(packed_width, device=ids.device)[None]
    first_end = (prompt + chosen)[:, None]
    in_rejected = (j >= first_end) & (j < first_end + rejected[:, None])
    real = (j < first_end) | in_rejected
    pair = torch.arange(n_pairs, device=ids.device)[:, None]
    source_row = torch.where(in_rejected, pair + n_pairs, pair)
    source_col = torch.where(in_rejected, j - chosen[:, None], j).clamp(max=width - 1)
    packed = torch.where(real, ids[source_row, source_col], ids.new_zeros(()))
    position_ids = torch.where(in_rejected, j - chosen[:, None], j)

    causal = j.T >= j  # (L, L): query >= key
    sees_chosen = in_rejected[:, :, None] & ((j >= prompt[:, None]) & (j < first_end))[:, None, :]
    allowed = (causal & real[:, None, :] & ~sees_chosen) | torch.eye(packed_width, dtype=torch.bool, device=ids.device)

    # plain position t (scoring token t+1) of a rejected row is packed position t + len(chosen), except the
    # prompt's last position, which both responses share
    t = torch.arange(width - 1, device=ids.device)[None]
    rejected_source = torch.where(t < prompt[:, None], t, t + chosen[:, None]).clamp(max=packed_width - 1)
    positions = torch.cat([t.expand(n_pairs, -1).clamp(max=packed_width - 1), rejected_source])
    rows = torch.arange(n_pairs, device=ids.device).repeat(2)[:, None]
    mask = response[:, 1:]
    logps = _next_token_logps(
        model,
        ids[:, 1:],
        chunk_positions,
        select=(rows, positions),
        input_ids=packed,
        attention_mask=_attention_mask(model, allowed[:, None]),
        position_ids=position_ids,
    )
    return logps.masked_fill(~mask, 0.0), mask


def _attention_mask(model: PreTrainedModel, allowed: torch.Tensor) -> torch.Tensor:
    """A 4D mask as the model's attention takes it: boolean (sdpa, flex), or additive float for eager
    attention, which adds the mask to the scores (a boolean would add 0 and 1)."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) != "eager":
        return allowed
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


@torch.no_grad()
def scores_with_shared_prompt(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], chunk_positions: int | None = None
) -> bool:
    """Whether ``model`` can score pairs with :func:`shared_prompt_token_logps`, decided on one preference batch.

    A model on a flash-attention kernel, which takes no 4D mask, cannot: False, with one log line. Any other
    model scores ``batch`` both ways (in eval mode, so that dropout does not make them differ; outside autocast,
    in the weights' dtype); one whose log-probs differ by more than :func:`share_prompt_tolerance` ignores
    ``position_ids`` or the 4D mask, and raises instead of training on wrong log-probs.
    """
    attention = str(getattr(getattr(model, "config", None), "_attn_implementation", None) or "")
    if "flash" in attention:
        log.info("share_prompt: %s runs %s, which takes no 4D attention mask: its pairs are scored as separate rows",
                 type(model).__name__, attention)  # fmt: skip
        return False
    was_training = model.training
    model.eval()
    tolerance = share_prompt_tolerance(next(model.parameters()).dtype)
    try:
        # the question is the model's structure, not rounding: under bf16 autocast the two layouts of an honest
        # model differ by up to 0.38 per token, in float32 by 2e-5
        with torch.autocast(batch["input_ids"].device.type, enabled=False):
            plain, mask = response_token_logps(model, batch, chunk_positions)
            shared, _ = shared_prompt_token_logps(model, batch, chunk_positions)
    finally:
        model.train(was_training)
    gap = float((plain - shared)[mask].abs().max()) if mask.any() else 0.0
    if gap > tolerance:
        raise RuntimeError(
            f"share_prompt=true: {type(model).__name__} scores a pair differently when its prompt is shared "
            f"(largest per-token log-prob gap {gap:.3g}, above {tolerance} for its weights' dtype); it "
            "does not honour position_ids or a 4D attention mask. Run with share_prompt=false."
        )
    return True
