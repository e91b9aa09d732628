"""BMC token-level weighting (Jiang et al., ICLR 2025, arXiv 2408.07471; METHODS.md section 1.2).

For response token t with diff mask m_t in {0, 1} and confidence p_t = pi(y_t | x, y_<t):
    ``bmc``:     w_t = 1 + m_t * min(1 / p_t, delta)  (delta >= 1: marked tokens weigh in [2, 1 + delta];
                                                      delta < 1: always 1 + delta as 1 / p_t >= 1; 0: uniform)
    ``fixed``:   w_t = 1 + m_t * delta                (the paper's fixed-weight comparison)
    ``uniform``: w_t = 1                              (plain DPO)
    ``confpo``:  w_t = 1[p_t < mean_s p_s]             (ConfPO: the tokens the policy is least sure of, the mean
                                                      over the response's own tokens; ``ConfPOWeighting``)
Weights are detached: the confidence only scales each token's gradient, it is not itself optimised. The
sequence score S(y) = sum_t w_t log p_t (``weighted_score``, not renormalised) replaces lp/ref in any loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bmc.plugins import WEIGHTINGS as TOKEN_WEIGHTINGS


class TokenWeighting:
    """Base class and ``uniform`` weighting.

    ``ref_weights`` tells the caller whose confidence weights the reference term: ``own`` (the reference
    model's p_t, as the official code; makes weighted reference scores precomputable) or ``policy`` (the
    policy's p_t on both terms, the paper's formula; needs per-token reference log-probs). Weightings that
    ignore p_t use ``own``.
    """

    ref_weights: str = "own"

    def weights(self, token_logps: Tensor, diff_mask: Tensor, response_mask: Tensor | None = None) -> Tensor:
        """(N, T) token log-probs, 0/1 diff mask and response mask -> (N, T) detached weights."""
        return torch.ones_like(token_logps)


TOKEN_WEIGHTINGS.register("uniform")(TokenWeighting)


@TOKEN_WEIGHTINGS.register("bmc", ranges={"ref_weights": ("own", "policy")})
class BMCWeighting(TokenWeighting):
    """Dynamic weights w_t = 1 + m_t min(1 / p_t, delta). Published delta: QA 3.0, math 2.5, IF 1.5-2.0."""

    def __init__(self, delta: float = 2.5, ref_weights: str = "own") -> None:
        self.delta, self.ref_weights = delta, ref_weights

    @torch.no_grad()
    def weights(self, token_logps: Tensor, diff_mask: Tensor, response_mask: Tensor | None = None) -> Tensor:
        # 1/p_t = exp(-log p_t) may be inf on -inf (padding) log-probs; clamping first keeps 0 * inf out.
        inverse_p = torch.exp(-token_logps.detach()).clamp(max=self.delta)
        return 1 + diff_mask.to(token_logps.dtype) * inverse_p


@TOKEN_WEIGHTINGS.register("fixed")
class FixedWeighting(TokenWeighting):
    """Constant w_t = 1 + m_t delta on marked tokens (the paper's fixed-weight ablation)."""

    def __init__(self, delta: float = 2.5) -> None:
        self.delta = delta

    def weights(self, token_logps: Tensor, diff_mask: Tensor, response_mask: Tensor | None = None) -> Tensor:
        return 1 + self.delta * diff_mask.to(token_logps.dtype)


@TOKEN_WEIGHTINGS.register("confpo", ranges={"ref_weights": ("own", "policy")})
class ConfPOWeighting(TokenWeighting):
    """ConfPO (Yoon et al., ICML 2025, arXiv 2506.08712): keep only the response tokens whose probability is below
    the mean token probability of their own response, w_t = 1[p_t < (1/n) sum_s p_s], else 0; detached.

    Rule and threshold as the official code (github.com/hee-suk-yoon/ConfPO, ``cpo_trainer.py:cpo_loss_confpo``:
    ``logps < log(mean(exp(logps)))`` over the loss mask, detached); the paper's text was not reachable when this
    was written, so no section is cited. The paper trains SimPO this way and normalises by the count of kept tokens;
    here the weights compose with any loss like BMC's, and n(y) stays the response's token count. A response
    whose tokens all have one probability (a single token) keeps none and scores 0; the official code then drops
    the pair's loss. ``ref_weights``: ``policy`` (default) applies the policy's selection to the reference term
    too, so that r = lp - ref sums the same tokens; ``own`` selects with the reference's own probabilities.
    """

    def __init__(self, ref_weights: str = "policy") -> None:
        self.ref_weights = ref_weights

    @torch.no_grad()
    def weights(self, token_logps: Tensor, diff_mask: Tensor, response_mask: Tensor | None = None) -> Tensor:
        if response_mask is None:
            raise ValueError("token weighting 'confpo' needs the response mask: its threshold is a mean over it")
        response = response_mask.bool()
        probs = torch.where(response, token_logps.detach().exp(), 0.0)
        threshold = probs.sum(-1, keepdim=True) / response.sum(-1, keepdim=True).clamp(min=1)
        return (response & (probs < threshold)).to(token_logps.dtype)


def build_token_weighting(name: str, **opts: Any) -> TokenWeighting:
    """``uniform``, ``bmc`` (delta, ref_weights), ``fixed`` (delta) or ``confpo`` (ref_weights); bad names/options
    raise."""
    return TOKEN_WEIGHTINGS.build(name, opts)


def weighted_score(token_logps: Tensor, weights: Tensor, response_mask: Tensor) -> Tensor:
    """S(y) = sum_t w_t log p_t over response tokens: (N, T) -> (N,).

    ``torch.where`` rather than a product with the mask: padding log-probs may be -inf, and -inf * 0 is NaN.
    """
    return torch.where(response_mask.bool(), weights * token_logps, 0.0).sum(-1)


def weighting_stats(weights: Tensor, diff_mask: Tensor, response_mask: Tensor) -> dict[str, Tensor]:
    """Logging: ``mean_weight_marked`` (mean weight over marked response tokens, 0 if none is marked),
    ``marked_fraction`` (marked / response tokens) and ``mean_weight`` (over all response tokens: for ``confpo``
    the fraction of tokens kept), as detached 0-d tensors."""
    response = response_mask.bool()
    marked = diff_mask.bool() & response
    n_marked, n_response = marked.sum(), response.sum().clamp(min=1)
    return {
        "mean_weight_marked": (weights.detach() * marked).sum() / n_marked.clamp(min=1),
        "marked_fraction": n_marked / n_response,
        "mean_weight": (weights.detach() * response).sum() / n_response,
    }
