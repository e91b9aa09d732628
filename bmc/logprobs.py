"""Per-token log-probabilities of response tokens."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


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


def response_token_logps(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each next token, zero outside the response; returns (logps, mask), both (N, T-1).

    Position t scores token t+1, so the masks are shifted by one; prompt and padding tokens never
    contribute.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["response_mask"][:, 1:]
    logps = token_logps(logits[:, :-1], batch["input_ids"][:, 1:])
    return logps.masked_fill(~mask, 0.0), mask


def shared_prompt_token_logps(
    model: PreTrainedModel, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_token_logps` of a preference batch (B chosen rows, then the B rejected rows of the same
    prompts), running each prompt through the model once instead of twice.

    Each pair becomes one row ``prompt + chosen + rejected``. The rejected response's position ids restart
    where the prompt ends, and a (B, 1, L, L) attention mask keeps it from seeing the chosen response, so
    every token attends to exactly what it attends to in its own row. The logits at the prompt's last token
    predict the first token of both responses. Returns the same (2B, T-1) layout as
    :func:`response_token_logps`. The model must honour ``position_ids`` and a 4D boolean attention mask
    (Llama-style models in ``transformers`` do); ``PreferenceModule`` checks this on its first batch.
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
    logits = model(input_ids=packed, attention_mask=allowed[:, None], position_ids=position_ids).logits

    # plain position t (scoring token t+1) of a rejected row is packed position t + len(chosen), except the
    # prompt's last position, which both responses share
    t = torch.arange(width - 1, device=ids.device)[None]
    rejected_source = torch.where(t < prompt[:, None], t, t + chosen[:, None]).clamp(max=packed_width - 1)
    positions = torch.cat([t.expand(n_pairs, -1).clamp(max=packed_width - 1), rejected_source])
    rows = torch.arange(n_pairs, device=ids.device).repeat(2)[:, None]
    mask = response[:, 1:]
    logps = token_logps(logits[rows, positions], ids[:, 1:])
    return logps.masked_fill(~mask, 0.0), mask
