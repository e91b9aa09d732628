"""TDPO: token-level DPO with the sequential KL (Zeng et al., ICML 2024, arXiv 2404.11999; METHODS.md section 6).

SeqKL(x, y) = sum_t KL(pi_ref(.|x, y_<t) || pi_theta(.|x, y_<t)) over the response positions of y, over the
whole vocabulary (:mod:`bmc.sequence_kl` computes it chunk by chunk; the loss reads it from ``SequenceLogps``).
With u = beta * (r_w - r_l) (DPO's logit, r = lp - ref) and delta = beta * SeqKL(y_l) - beta * SeqKL(y_w), the
paper's token-level Bradley-Terry model is P(y_w > y_l) = sigma(u - delta); TDPO1 maximises it, TDPO2 scales
delta by alpha and stops the gradient through the chosen response's KL. Checked against the official code
(github.com/Vance0124/Token-level-Direct-Preference-Optimization, ``trainers.py:tdpo_loss``):
logits = (r_w - r_l) + alpha * (sg[SeqKL_w] - SeqKL_l), loss = -log sigma(beta * logits), the same value (TDPO1:
alpha = 1, no stop-gradient); its defaults beta = 0.1, alpha = 0.5 (``config/loss/tdpo.yaml``) are the defaults
here. The paper's own text was not reachable when this was written, so no equation numbers are cited.
Rewards are beta * r like every reference-based loss here; the official code logs beta * (r + SeqKL).
"""

from __future__ import annotations

import torch.nn.functional as F

from bmc.losses.registry import LossOutput, SequenceLogps, register_loss


@register_loss("tdpo1", sequence_kl=True)
def tdpo1(logps: SequenceLogps, *, beta: float = 0.1) -> LossOutput:
    """TDPO1: -log sigma(u - (beta SeqKL(y_l) - beta SeqKL(y_w))), gradients through both KL terms."""
    r_w, r_l = logps.logratios()
    kl_w, kl_l = logps.sequence_kl()
    losses = -F.logsigmoid(beta * (r_w - r_l) - (beta * kl_l - beta * kl_w))
    return LossOutput(losses, beta * r_w, beta * r_l)


@register_loss("tdpo2", sequence_kl=True)
def tdpo2(logps: SequenceLogps, *, beta: float = 0.1, alpha: float = 0.5) -> LossOutput:
    """TDPO2: -log sigma(u - alpha (beta SeqKL(y_l) - sg[beta SeqKL(y_w)])), sg = stop-gradient: the chosen
    response's KL shifts the logit but is not itself pushed down (the paper's fix for TDPO1's instability)."""
    r_w, r_l = logps.logratios()
    kl_w, kl_l = logps.sequence_kl()
    losses = -F.logsigmoid(beta * (r_w - r_l) - alpha * (beta * kl_l - beta * kl_w.detach()))
    return LossOutput(losses, beta * r_w, beta * r_l)
