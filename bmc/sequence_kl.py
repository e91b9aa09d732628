"""The sequential KL of TDPO (Zeng et al., ICML 2024, arXiv 2404.11999; METHODS.md section 6), chunk by chunk.

SeqKL(x, y) = sum_t KL(pi_ref(.|x, y_<t) || pi_theta(.|x, y_<t)) over the response positions t of y, each KL over
the whole vocabulary: sum_v pi_ref(v) (log pi_ref(v) - log pi_theta(v)). It needs both models' full next-token
distributions, which a cache of the reference's per-token log-probs (bmc.reference) cannot give, so the reference
runs in the step. Both decoders run once (the reference without gradients); then the LM heads are applied to
``chunk_positions`` response positions at a time, giving in one pass the policy's and the reference's token
log-probs and the per-position KL. With gradients each chunk runs under activation checkpointing: its logits are
recomputed in the backward pass, so at most one chunk's (chunk, vocabulary) tensors of both models exist at a
time, never a (rows, length, vocabulary) tensor of either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from bmc.logprobs import lm_head, scored_hidden_states

#: response positions per LM-head chunk when the run sets no ``logprob_chunk``: the chunk's logits of both models
#: (2 x 1024 x vocabulary floats, 400 MB at a 49k vocabulary) rather than the whole batch's
DEFAULT_CHUNK = 1024

Head = Callable[[Tensor], Tensor]


@dataclass
class TokenKL:
    """Per position of the plain (N, T-1) layout, zero outside the response: the policy's token log-probs (with
    gradients), the reference's (without), the KL(pi_ref || pi_theta) over the vocabulary (with gradients), and
    the response mask."""

    policy: Tensor
    reference: Tensor
    kl: Tensor
    mask: Tensor


def _chunk(policy_head: Head, reference_head: Head, hidden: Tensor, ref_hidden: Tensor, labels: Tensor) -> tuple:
    """(policy token log-probs, reference token log-probs, KL(pi_ref || pi_theta)) of a chunk of positions."""
    logp = torch.log_softmax(policy_head(hidden), -1, dtype=torch.float32)
    with torch.no_grad():
        logq = torch.log_softmax(reference_head(ref_hidden), -1, dtype=torch.float32)
        ref_logps = logq.gather(-1, labels[:, None])[:, 0]
        # a token the reference gives probability 0 adds nothing: clamped, its 0 * log 0 is 0 rather than NaN
        q = logq.clamp_(min=torch.finfo(logq.dtype).min).exp()
    # KL = sum_v q (log q - log p): the difference written over log q in place and the sum a (1, V) x (V, 1)
    # product, so that a chunk holds three vocabulary-wide tensors (log p, q, the difference), not six
    kl = torch.bmm(q[:, None, :], logq.sub_(logp)[:, :, None])[:, 0, 0]
    return logp.gather(-1, labels[:, None])[:, 0], ref_logps, kl


def chunked_token_kl(
    policy_head: Head,
    reference_head: Head,
    hidden: Tensor,
    ref_hidden: Tensor,
    labels: Tensor,
    mask: Tensor,
    chunk_positions: int = DEFAULT_CHUNK,
) -> TokenKL:
    """:class:`TokenKL` from the two models' scoring hidden states (N, T-1, hidden), the next tokens ``labels``
    (N, T-1) and the response ``mask``; only response positions reach the heads, ``chunk_positions`` at a time."""
    if chunk_positions < 1:
        raise ValueError(f"chunk_positions must be >= 1, got {chunk_positions}")
    mask = mask.bool()
    flat, ref_flat, targets = hidden[mask], ref_hidden[mask].detach(), labels[mask]
    grads = torch.is_grad_enabled() and flat.requires_grad
    pieces = []
    for s in range(0, flat.shape[0], chunk_positions):
        args = (policy_head, reference_head, flat[s : s + chunk_positions], ref_flat[s : s + chunk_positions],
                targets[s : s + chunk_positions])  # fmt: skip
        pieces.append(checkpoint(_chunk, *args, use_reentrant=False) if grads else _chunk(*args))
    empty = [flat.new_zeros(0)] * 3  # a batch without response tokens
    policy, reference, kl = [torch.cat(column) for column in zip(*pieces)] if pieces else empty

    def spread(values: Tensor) -> Tensor:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask, values.float())

    return TokenKL(spread(policy), spread(reference), spread(kl), mask)


def sequence_kl_token_logps(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    batch: dict[str, Tensor],
    share_prompt: bool = False,
    reference_shares_prompt: bool | None = None,
    chunk_positions: int | None = None,
) -> TokenKL:
    """:class:`TokenKL` of a preference batch. ``reference=None``: the LoRA ``policy`` with its adapters disabled
    is the reference. ``share_prompt``/``reference_shares_prompt`` (default: the policy's): each model's layout
    (bmc.logprobs, shared-prompt packing); ``chunk_positions``: response positions per chunk (default
    :data:`DEFAULT_CHUNK`)."""
    if reference is None and not hasattr(policy, "disable_adapter"):
        raise RuntimeError("the sequential KL needs a reference: pass a reference model or use a LoRA policy")
    ref_packs = share_prompt if reference_shares_prompt is None else reference_shares_prompt
    policy_head = lm_head(policy)
    with torch.no_grad():
        if reference is None:
            with policy.disable_adapter():
                ref_hidden, _ = scored_hidden_states(policy, batch, ref_packs)
            reference_head = _adapters_disabled(policy, policy_head)
        else:
            ref_hidden, _ = scored_hidden_states(reference, batch, ref_packs)
            reference_head = lm_head(reference)
    hidden, mask = scored_hidden_states(policy, batch, share_prompt)
    labels, chunk = batch["input_ids"][:, 1:], chunk_positions or DEFAULT_CHUNK
    return chunked_token_kl(policy_head, reference_head, hidden, ref_hidden, labels, mask, chunk)


def _adapters_disabled(model: PreTrainedModel, head: Head) -> Head:
    """``head`` run with the PEFT model's adapters disabled (an adapter on the LM head itself is then off too);
    entered again when a checkpointed chunk is recomputed in the backward pass."""

    def call(hidden: Tensor) -> Tensor:
        with model.disable_adapter():
            return head(hidden)

    return call
