"""Reference-free losses (METHODS.md section 3): they read only the policy scores lp(y) and the lengths n(y).

NLL(y_w) is the token-mean NLL -lp_w / n_w everywhere (n clamped to >= 1). With BMC token weighting lp is the
weighted score S(y) and n stays the unweighted token count, as in the BMC paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from bmc.losses.registry import LossOutput, SequenceLogps, register_loss
from bmc.plugins import Interval

# A mean log-prob of exactly 0 (p = 1 on every token, or an empty response) has odds 1 / 0; capping it just
# below 0 keeps ORPO's log-odds finite (log(1 - e^a) is evaluated through expm1, exact for tiny |a|).
_MAX_MEAN_LOGP = -1e-6


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a < 0, accurate everywhere (Maechler, 2012): expm1 near 0, log1p far from it."""
    return torch.where(a > -math.log(2), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


@register_loss("simpo", reference_free=True, ranges={"gamma": Interval()})
def simpo(logps: SequenceLogps, *, beta: float = 2.0, gamma: float = 0.5) -> LossOutput:
    """SimPO (Meng et al., 2024, arXiv 2405.14734): -log sigma(beta (lp_w/n_w - lp_l/n_l) - gamma).

    gamma is the absolute target margin (TRL's ``simpo_gamma``); rewards are beta * lp / n.
    """
    mean_w, mean_l = logps.mean_logps()
    return LossOutput(-F.logsigmoid(beta * (mean_w - mean_l) - gamma), beta * mean_w, beta * mean_l)


@register_loss("cpo", reference_free=True)
def cpo(logps: SequenceLogps, *, beta: float = 0.1, alpha: float = 1.0) -> LossOutput:
    """CPO (Xu et al., 2024, arXiv 2401.08417): -log sigma(beta (lp_w - lp_l)) + alpha * NLL(y_w).

    alpha is TRL's ``cpo_alpha`` (METHODS.md: alpha = 1); rewards beta * lp.
    """
    mean_w, _ = logps.mean_logps()
    losses = -F.logsigmoid(beta * (logps.chosen - logps.rejected)) - alpha * mean_w
    return LossOutput(losses, beta * logps.chosen, beta * logps.rejected)


@register_loss("orpo", reference_free=True)
def orpo(logps: SequenceLogps, *, lam: float = 0.1) -> LossOutput:
    """ORPO (Hong et al., 2024, arXiv 2403.07691): NLL(y_w) - lam log sigma(log_odds), with a = lp/n and

    log_odds = (a_w - a_l) - (log(1 - e^{a_w}) - log(1 - e^{a_l})). Rewards lam * a (TRL).
    """
    mean_w, mean_l = logps.mean_logps()
    a_w, a_l = mean_w.clamp(max=_MAX_MEAN_LOGP), mean_l.clamp(max=_MAX_MEAN_LOGP)  # only the odds need a < 0
    log_odds = (a_w - a_l) - (_log1mexp(a_w) - _log1mexp(a_l))
    return LossOutput(-mean_w - lam * F.logsigmoid(log_odds), lam * mean_w, lam * mean_l)


@register_loss("sft", reference_free=True)
def sft(logps: SequenceLogps) -> LossOutput:
    """Supervised fine-tuning on y_w: token-mean NLL -lp_w / n_w. Rewards are the mean log-probs lp / n."""
    mean_w, mean_l = logps.mean_logps()
    return LossOutput(-mean_w, mean_w, mean_l)
