"""Listwise preference losses on ranked lists of K responses per prompt (METHODS.md section 6).

Notation: r_k = β·(lp(y_k) − ref(y_k)) for response k of a prompt (β included), τ the ranking best first, ψ_k a
grade (the data's score, else from the ranking: :meth:`RankedLogps.grades`). Each loss returns one value per list,
summed over its responses; the batch loss is the mean over lists, whatever their lengths. The rewards reported are
β·r of each list's best and worst response. With BMC token weighting the caller passes the weighted scores S(y)
as lp/ref, as for the pairwise losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bmc.losses.ranked_logps import RankedLogps
from bmc.losses.registry import LossOutput, register_loss
from bmc.plugins import POSITIVE

_NEG_INF = float("-inf")


def _output(losses: Tensor, rewards: Tensor, lists: RankedLogps) -> LossOutput:
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    return LossOutput(losses, rewards[:, 0], rewards[rows, lists.last()])


@register_loss("dpo_pl", listwise=True)
def dpo_pl(lists: RankedLogps, *, beta: float = 0.1) -> LossOutput:
    """Plackett–Luce DPO (Rafailov et al., 2023, arXiv 2305.18290, appendix A.3, the Plackett–Luce objective that
    ends it): L = −Σ_{k=1}^{K−1} [r_{τ(k)} − log Σ_{j=k}^{K} exp(r_{τ(j)})]. K = 2 is DPO, −log σ(r_1 − r_2).

    Ties (Breslow's rule, as for tied event times in Cox's partial likelihood): a tie block orders nothing among
    its members, so each member's term uses the risk set of the whole block, every response whose block is not
    better than its own. The last block contributes no term, as τ(K) contributes none without ties; a list that is
    one tie block gives 0.
    """
    r = beta * lists.logratios()
    valid, ranks = lists.valid, lists.ranks
    # risk[b, i, j]: response j is still "in the urn" when the block of response i is drawn
    risk = valid[:, None, :] & (ranks[:, None, :] >= ranks[:, :, None])
    log_risk = torch.logsumexp(r[:, None, :].masked_fill(~risk, _NEG_INF), dim=-1)
    last_block = ranks.masked_fill(~valid, -1).amax(-1, keepdim=True)
    counted = valid & (ranks < last_block)
    losses = -torch.where(counted, r - log_risk, 0.0).sum(-1)
    return _output(losses, r, lists)


def lambda_weights(r: Tensor, grades: Tensor, valid: Tensor) -> Tensor:
    """(B, K, K) LiPO-λ's Δ_ij = |G_i − G_j|·|1/D(q_i) − 1/D(q_j)|, G = 2^ψ − 1, D(q) = log(1 + q), q_i the
    1-based rank of response i by the current r, ties in r broken by the list's order (at step 0, when every r is
    0, q is the list's order). Detached: q is piecewise constant in r, the weights carry no gradient."""
    r = r.detach()
    position = torch.arange(r.shape[1], device=r.device)
    ahead = (r[:, None, :] > r[:, :, None]) | ((r[:, None, :] == r[:, :, None]) & (position < position[:, None]))
    q = 1 + (ahead & valid[:, None, :]).sum(-1).to(r.dtype)
    gain, discount = torch.exp2(grades) - 1, 1 / torch.log1p(q)
    return (gain[:, :, None] - gain[:, None, :]).abs() * (discount[:, :, None] - discount[:, None, :]).abs()


@register_loss("lipo", listwise=True)
def lipo(lists: RankedLogps, *, beta: float = 0.1) -> LossOutput:
    """LiPO-λ (Liu et al., 2024, arXiv 2402.01878, section 4, the Lambda loss with the LambdaLoss weights of
    Wang et al., 2018): L = −Σ_{ψ_i > ψ_j} Δ_ij·log σ(r_i − r_j), with Δ_ij of :func:`lambda_weights`.

    Without data scores ψ comes from the ranking (K − position; a tie block shares one grade, so tied responses
    form no pair). At K = 2 with ψ from the ranking it is DPO times Δ_12 = (1/ln 2 − 1/ln 3), not DPO itself.
    """
    r = beta * lists.logratios()
    grades, valid = lists.grades(), lists.valid
    ordered = (grades[:, :, None] > grades[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    pairwise = -F.logsigmoid(r[:, :, None] - r[:, None, :])
    losses = torch.where(ordered, lambda_weights(r, grades, valid) * pairwise, 0.0).sum((-1, -2))
    return _output(losses, r, lists)


@register_loss("infonca", listwise=True, ranges={"alpha": POSITIVE})
def infonca(lists: RankedLogps, *, beta: float = 0.1, alpha: float = 0.5) -> LossOutput:
    """InfoNCA (Chen et al., 2024, arXiv 2402.05369, the InfoNCA objective of section 3): the cross-entropy from
    the data's reward distribution softmax(ψ/α) to the policy's softmax(r) over a prompt's K responses,
    L = −Σ_k softmax(ψ/α)_k·log softmax(r)_k.

    Without data scores ψ comes from the ranking (K − position). At K = 2 it is label-smoothed DPO,
    −(1−ε) log σ(r_1 − r_2) − ε log σ(r_2 − r_1) with ε = σ(−(ψ_1 − ψ_2)/α); α → 0 gives DPO.
    """
    r = beta * lists.logratios()
    valid = lists.valid
    targets = torch.softmax((lists.grades() / alpha).masked_fill(~valid, _NEG_INF), dim=-1)
    log_policy = torch.log_softmax(r.masked_fill(~valid, _NEG_INF), dim=-1)
    losses = -torch.where(valid, targets * log_policy, 0.0).sum(-1)
    return _output(losses, r, lists)

