"""Regularizers on the chosen response's likelihood (METHODS.md section 2.2), added to any preference loss.

Per training step the caller does::

    out = loss_fn(regularizer.adjust(logps, unweighted))      # dpop acts inside the loss's logit
    loss = (out.losses + regularizer.penalty(unweighted)).mean()
    log("delta_w", regularizer.delta_w(unweighted).mean())    # reference-based runs only

where ``unweighted`` holds the UNWEIGHTED log-prob sums (the same as ``logps`` unless token weighting is on).
With l(y) = lp(y) / n(y) the length-normalised log-likelihood:
    ``none``: nothing;  ``nll`` (RPO): alpha * (-l_theta(y_w));
    ``bcr``: lam * h(max(0, l_ref(y_w) - l_theta(y_w) - delta)), h = identity (hinge) or x^2 (squared_hinge);
    ``dpop``: lp(y_w) <- lp(y_w) - lam * max(0, ref(y_w) - lp(y_w)) before the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from bmc.losses.registry import SequenceLogps
from bmc.plugins import REGULARIZERS


class Regularizer:
    """Base class and the ``none`` regularizer: identity ``adjust``, zero ``penalty``."""

    def adjust(self, logps: SequenceLogps, unweighted: SequenceLogps | None = None) -> SequenceLogps:
        """The scores the loss sees; a penalty inside the logit reads ``unweighted`` (default ``logps``)."""
        return logps

    def penalty(self, logps: SequenceLogps) -> Tensor:
        """(B,) extra per-pair loss from unweighted scores."""
        return torch.zeros_like(logps.chosen)

    @staticmethod
    def delta_w(logps: SequenceLogps) -> Tensor:
        """(B,) detached Delta_w = l_theta(y_w) - l_ref(y_w): < 0 when the chosen likelihood fell."""
        ref_chosen, _ = logps.reference()
        n_w, _ = logps.lengths()
        return ((logps.chosen - ref_chosen) / n_w).detach()


REGULARIZERS.register("none")(Regularizer)


@REGULARIZERS.register("nll")
class NLLRegularizer(Regularizer):
    """RPO / NLL term (Pang et al., 2024, arXiv 2404.19733): alpha * token-mean NLL of y_w."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def penalty(self, logps: SequenceLogps) -> Tensor:
        return -self.alpha * logps.mean_logps()[0]


@REGULARIZERS.register(
    "bcr",
    ranges={"normalization": ("per_token", "per_sequence"), "form": ("hinge", "squared_hinge")},
)
class BCRegularizer(Regularizer):
    """Budget-controlled regularization (Chen et al., 2024, arXiv 2411.05875): the chosen log-likelihood may
    fall by up to ``delta`` below the reference's for free; beyond, lam * h(excess).

    ``normalization``: ``per_token`` compares lp / n (default), ``per_sequence`` compares lp (delta then lives
    on the sequence scale). ``form``: ``hinge`` (default) or ``squared_hinge``.
    """

    def __init__(
        self, lam: float = 1.0, delta: float = 0.05, normalization: str = "per_token", form: str = "hinge"
    ) -> None:
        self.lam, self.delta, self.normalization, self.form = lam, delta, normalization, form

    def penalty(self, logps: SequenceLogps) -> Tensor:
        ref_chosen, _ = logps.reference()
        fall = ref_chosen - logps.chosen
        if self.normalization == "per_token":
            fall = fall / logps.lengths()[0]
        excess = torch.relu(fall - self.delta)
        return self.lam * (excess if self.form == "hinge" else excess**2)


@REGULARIZERS.register("dpop")
class DPOPRegularizer(Regularizer):
    """DPO-Positive (Pal et al., 2024, arXiv 2402.13228): logit beta (Delta - lam max(0, ref(y_w) - lp(y_w))).

    Implemented by lowering the chosen score by lam * max(0, ref(y_w) - lp(y_w)), so every loss's logit
    carries the penalty (for dpo it is exactly DPOP). The chosen reward beta * r_w logged by the loss then
    includes it too. Default lam = 50 as in the paper's experiments.
    """

    def __init__(self, lam: float = 50.0) -> None:
        self.lam = lam

    def adjust(self, logps: SequenceLogps, unweighted: SequenceLogps | None = None) -> SequenceLogps:
        source = logps if unweighted is None else unweighted
        ref_chosen, _ = source.reference()
        drop = torch.relu(ref_chosen - source.chosen)
        return dataclasses.replace(logps, chosen=logps.chosen - self.lam * drop)


def build_regularizer(name: str, **opts: Any) -> Regularizer:
    """``none``, ``nll`` (alpha), ``bcr`` (lam, delta, normalization, form) or ``dpop`` (lam); validated."""
    return REGULARIZERS.build(name, opts)
