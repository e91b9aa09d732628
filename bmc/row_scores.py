"""The sequence scores of a preference batch's rows from their per-token log-probs, with the token weighting.

Every row (a pair's chosen or rejected response, a list's response) gets S(y) = Σ_t w_t log p_t with the
weighting's detached weights and the unweighted lp(y) beside it, under the policy and, where computed, the
reference (``ref_weights``: whose confidence weights the reference term, :mod:`bmc.losses.weighting`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bmc.losses import TokenWeighting, weighted_score


@dataclass
class RowScores:
    """Per-row sequence scores, (N,) each: ``score`` S(y) with the token weights, ``raw`` the unweighted lp(y),
    ``lengths`` n(y), the reference's ``ref_score``/``ref_raw`` (None without a reference); and the (N, T-1)
    ``weights``, ``diff_mask`` and response ``mask`` for the weighting's statistics; ``kl`` each row's sequential
    KL (N,), where the loss reads it (TDPO)."""

    score: torch.Tensor
    raw: torch.Tensor
    lengths: torch.Tensor
    weights: torch.Tensor
    diff_mask: torch.Tensor
    mask: torch.Tensor
    ref_score: torch.Tensor | None = None
    ref_raw: torch.Tensor | None = None
    kl: torch.Tensor | None = None


def row_scores(
    policy_tokens: torch.Tensor,
    ref_tokens: torch.Tensor | None,
    mask: torch.Tensor,
    diff_mask: torch.Tensor,
    weighting: TokenWeighting,
) -> RowScores:
    """:class:`RowScores` from (N, T-1) per-token log-probs (zero outside the response), the response ``mask``
    and the diff marks ``diff_mask`` (already restricted to the response)."""
    weights = weighting.weights(policy_tokens.detach(), diff_mask, mask)
    rows = RowScores(
        weighted_score(policy_tokens, weights, mask), policy_tokens.sum(-1), mask.sum(-1).float(), weights, diff_mask,
        mask,
    )  # fmt: skip
    if ref_tokens is not None:
        confidence = ref_tokens if weighting.ref_weights == "own" else policy_tokens.detach()
        rows.ref_raw = ref_tokens.sum(-1)
        rows.ref_score = weighted_score(ref_tokens, weighting.weights(confidence, diff_mask, mask), mask)
    return rows
