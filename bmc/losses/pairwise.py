"""Reference-based pairwise preference losses (METHODS.md section 3).

Notation: r = lp(y) - ref(y) per response, Delta = r_w - r_l, n(y) the response token count, sigma = sigmoid.
Every function returns per-pair losses (B,) and the rewards beta * r_w, beta * r_l (the loss's own scale).
With BMC token weighting the caller passes the weighted scores S(y) as lp/ref; nothing changes here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from bmc.losses.registry import LossOutput, SequenceLogps, register_loss
from bmc.plugins import Interval


def _output(losses: Tensor, scale: float, r_w: Tensor, r_l: Tensor) -> LossOutput:
    return LossOutput(losses, scale * r_w, scale * r_l)


def _smoothed_sigmoid(z: Tensor, eps: float) -> Tensor:
    """-(1 - eps) log sigma(z) - eps log sigma(-z): logistic loss, label flipped with probability eps."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@register_loss("dpo")
def dpo(logps: SequenceLogps, *, beta: float = 0.1) -> LossOutput:
    """DPO (Rafailov et al., 2023, arXiv 2305.18290): -log sigma(beta * Delta)."""
    r_w, r_l = logps.logratios()
    return _output(-F.logsigmoid(beta * (r_w - r_l)), beta, r_w, r_l)


@register_loss("robust")
def robust(logps: SequenceLogps, *, beta: float = 0.1, eps: float = 0.1) -> LossOutput:
    """Robust DPO (Chowdhury et al., 2024, arXiv 2403.00409), unbiased under label-flip rate eps in [0, 0.5):

    [-(1 - eps) log sigma(beta Delta) + eps log sigma(-beta Delta)] / (1 - 2 eps).
    """
    r_w, r_l = logps.logratios()
    z = beta * (r_w - r_l)
    losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return _output(losses, beta, r_w, r_l)


@register_loss("hinge")
def hinge(logps: SequenceLogps, *, beta: float = 0.1) -> LossOutput:
    """SLiC-HF hinge (Zhao et al., 2023, arXiv 2305.10425): relu(1 - beta * Delta)."""
    r_w, r_l = logps.logratios()
    return _output(torch.relu(1 - beta * (r_w - r_l)), beta, r_w, r_l)


@register_loss("ipo")
def ipo(logps: SequenceLogps, *, tau: float = 0.1) -> LossOutput:
    """IPO (Azar et al., 2023, arXiv 2310.12036, eq. 17): (r_w / n_w - r_l / n_l - 1 / (2 tau))^2.

    Length-normalised as in TRL; tau is IPO's regulariser, in the place of DPO's beta.
    """
    r_w, r_l = logps.logratios()
    n_w, n_l = logps.lengths()
    return _output((r_w / n_w - r_l / n_l - 1 / (2 * tau)) ** 2, tau, r_w, r_l)


@register_loss("sigmoid_norm")
def sigmoid_norm(logps: SequenceLogps, *, beta: float = 2.0) -> LossOutput:
    """Length-normalised DPO (SimPO paper, arXiv 2405.14734): -log sigma(beta (r_w/n_w - r_l/n_l)).

    The margin is per token, hence a SimPO-like beta rather than DPO's 0.1.
    """
    r_w, r_l = logps.logratios()
    n_w, n_l = logps.lengths()
    return _output(-F.logsigmoid(beta * (r_w / n_w - r_l / n_l)), beta, r_w, r_l)


@register_loss("exo_pair", ranges={"eps": Interval(0.0, 1.0, low_open=True, high_open=True)})
def exo_pair(logps: SequenceLogps, *, beta: float = 0.1, eps: float = 1e-3) -> LossOutput:
    """EXO, pairwise (Ji et al., 2024, arXiv 2402.00856): KL from the model's preference to (1-eps, eps):

    sigma(z) (log sigma(z) - log(1 - eps)) + sigma(-z) (log sigma(-z) - log eps), z = beta Delta, 0 < eps < 1.
    """
    r_w, r_l = logps.logratios()
    z = beta * (r_w - r_l)
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )
    return _output(losses, beta, r_w, r_l)


@register_loss("nca_pair")
def nca_pair(logps: SequenceLogps, *, beta: float = 0.1) -> LossOutput:
    """NCA, pairwise (Chen et al., 2024, arXiv 2402.05369):

    -log sigma(beta r_w) - 1/2 log sigma(-beta r_w) - 1/2 log sigma(-beta r_l).
    """
    r_w, r_l = logps.logratios()
    z_w, z_l = beta * r_w, beta * r_l
    losses = -F.logsigmoid(z_w) - 0.5 * F.logsigmoid(-z_w) - 0.5 * F.logsigmoid(-z_l)
    return _output(losses, beta, r_w, r_l)


@register_loss("bco_pair", ranges={"momentum": Interval(0.0, 1.0, high_open=True, optional=True)})
class BCOPair(torch.nn.Module):
    """BCO, pairwise (Jung et al., 2024, arXiv 2404.04656):

    -log sigma(beta r_w - delta) - log sigma(-(beta r_l - delta)), delta a running mean of the rewards
    beta * r over chosen and rejected responses. It is updated (before use, as in TRL) with each batch's
    detached mean reward, only while gradients are enabled, so validation under ``torch.no_grad`` leaves it.
    ``momentum=None`` (default, TRL's ``RunningMoments``): delta is the plain mean of all batch means so far;
    ``momentum=m`` in [0, 1): exponential moving average delta <- m delta + (1 - m) batch_mean.
    An ``nn.Module`` so that delta lives in a buffer, saved with checkpoints when registered as a sub-module.
    """

    def __init__(self, beta: float = 0.1, momentum: float | None = None) -> None:
        super().__init__()
        self.beta, self.momentum = beta, momentum
        self.register_buffer("running_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, batch_mean: Tensor) -> None:
        batch_mean = batch_mean.to(self.running_mean)
        # The first batch initialises an EMA too: starting from 0 would bias delta for ~1 / (1 - m) steps.
        keep = self.count / (self.count + 1) if self.momentum is None or self.count == 0 else self.momentum
        self.running_mean.mul_(keep).add_((1 - keep) * batch_mean)
        self.count += 1

    def forward(self, logps: SequenceLogps) -> LossOutput:
        r_w, r_l = logps.logratios()
        z_w, z_l = self.beta * r_w, self.beta * r_l
        if torch.is_grad_enabled():
            self._update(torch.cat([z_w, z_l]).mean().detach())
        delta = self.running_mean.to(z_w)
        losses = -F.logsigmoid(z_w - delta) - F.logsigmoid(-(z_l - delta))
        return _output(losses, self.beta, r_w, r_l)


@register_loss("sppo_hard")
def sppo_hard(logps: SequenceLogps, *, beta: float = 0.1) -> LossOutput:
    """SPPO-hard (Wu et al., 2024, arXiv 2405.00675): (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2."""
    r_w, r_l = logps.logratios()
    return _output((r_w - 1 / (2 * beta)) ** 2 + (r_l + 1 / (2 * beta)) ** 2, beta, r_w, r_l)


@register_loss("aot")
def aot(logps: SequenceLogps, *, beta: float = 0.1, eps: float = 0.0) -> LossOutput:
    """AOT, paired (Melnyk et al., 2024, arXiv 2406.05882): eps-smoothed sigmoid loss of beta * d with
    d = sort_batch(lp_w - lp_l) - sort_batch(ref_w - ref_l) (first-order stochastic dominance over the batch).

    losses[i] belongs to the i-th smallest margin, not to pair i; only their mean is meaningful.
    """
    ref_w, ref_l = logps.reference()
    d = torch.sort(logps.chosen - logps.rejected, dim=0).values - torch.sort(ref_w - ref_l, dim=0).values
    r_w, r_l = logps.logratios()
    return _output(_smoothed_sigmoid(beta * d, eps), beta, r_w, r_l)


@register_loss("aot_unpaired")
def aot_unpaired(logps: SequenceLogps, *, beta: float = 0.1, eps: float = 0.0) -> LossOutput:
    """AOT, unpaired (Melnyk et al., 2024; TRL aot_pair): d = sort_batch(r_w) - sort_batch(r_l)."""
    r_w, r_l = logps.logratios()
    d = torch.sort(r_w, dim=0).values - torch.sort(r_l, dim=0).values
    return _output(_smoothed_sigmoid(beta * d, eps), beta, r_w, r_l)


@register_loss("apo_zero")
def apo_zero(logps: SequenceLogps, *, beta: float = 0.1) -> LossOutput:
    """APO-zero (D'Oosterlinck et al., 2024, arXiv 2408.06266, eq. 7): 1 - sigma(beta r_w) + sigma(beta r_l).

    For chosen responses better than the model's own outputs: push chosen up and rejected down.
    """
    r_w, r_l = logps.logratios()
    return _output(1 - torch.sigmoid(beta * r_w) + torch.sigmoid(beta * r_l), beta, r_w, r_l)


@register_loss("apo_down")
def apo_down(logps: SequenceLogps, *, beta: float = 0.1) -> LossOutput:
    """APO-down (D'Oosterlinck et al., 2024, eq. 8): sigma(beta r_w) + (1 - sigma(beta Delta)).

    For chosen responses worse than the model's own outputs: both likelihoods go down, rejected more.
    """
    r_w, r_l = logps.logratios()
    return _output(torch.sigmoid(beta * r_w) + 1 - torch.sigmoid(beta * (r_w - r_l)), beta, r_w, r_l)


@register_loss("discopop")
def discopop(logps: SequenceLogps, *, beta: float = 0.1, tau: float = 0.05) -> LossOutput:
    """DiscoPOP, log-ratio modulated loss (Chan et al., 2024, arXiv 2406.08414):

    (1 - m)(-log sigma(z)) + m exp(-z), z = beta Delta, m = sigma(z / tau).
    """
    r_w, r_l = logps.logratios()
    z = beta * (r_w - r_l)
    # m * exp(-z) computed as exp(log m - z): the naive product is 0 * inf = NaN for very negative z.
    losses = -torch.sigmoid(-z / tau) * F.logsigmoid(z) + torch.exp(F.logsigmoid(z / tau) - z)
    return _output(losses, beta, r_w, r_l)


@register_loss("rdpo")
def rdpo(
    logps: SequenceLogps, *, beta: float = 0.1, alpha: float = 0.01, alpha_inside_beta: bool = False
) -> LossOutput:
    """R-DPO (Park et al., 2024, arXiv 2403.19159): -log sigma(beta Delta - alpha (n_w - n_l)).

    ``alpha_inside_beta=True`` gives the BMC paper's form -log sigma(beta (Delta - alpha (n_w - n_l))).
    """
    r_w, r_l = logps.logratios()
    penalty = alpha * (logps.chosen_tokens - logps.rejected_tokens).to(r_w.dtype)
    logits = beta * (r_w - r_l - penalty) if alpha_inside_beta else beta * (r_w - r_l) - penalty
    return _output(-F.logsigmoid(logits), beta, r_w, r_l)


@register_loss("kto_pair")
def kto_pair(logps: SequenceLogps, *, beta: float = 0.1) -> LossOutput:
    """Paired KTO (Ethayarajh et al., 2024, arXiv 2402.01306; HALOs eq. 7, TRL's former ``kto_pair``):

    z_w = mean_batch(r_w).clamp(min=0), z_l = mean_batch(r_l).clamp(min=0) (batch KL reference points, each
    response's taken from the other half of the pair, detached as in the KTO paper);
    loss = 1/2 [(1 - sigma(beta (r_w - z_l))) + (1 - sigma(beta (z_w - r_l)))].
    TRL concatenates the 2B chosen/rejected terms and averages them; the per-pair loss here is the mean of the
    pair's two terms, so the batch mean equals TRL's loss exactly.
    """
    r_w, r_l = logps.logratios()
    kl_w, kl_l = (r.mean().clamp(min=0).detach() for r in (r_w, r_l))
    losses = 0.5 * ((1 - torch.sigmoid(beta * (r_w - kl_l))) + (1 - torch.sigmoid(beta * (kl_w - r_l))))
    return _output(losses, beta, r_w, r_l)
