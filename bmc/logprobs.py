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
