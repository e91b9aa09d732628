"""Loss registry: the per-pair inputs/outputs every preference loss shares, and the factories that bind them.

A loss is a function ``f(logps: SequenceLogps, *, <hparams>) -> LossOutput`` or a class (for state, e.g.
``bco_pair``'s running mean) whose ``__init__`` takes the hyper-parameters and whose ``__call__(logps)``
returns a ``LossOutput``. The keyword names are the YAML keys of ``conf/loss/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bmc.plugins import LOSSES, Interval

LossFn = Callable[["SequenceLogps"], "LossOutput"]


@dataclass
class SequenceLogps:
    """Per-pair sequence scores, each of shape (B,).

    ``chosen``/``rejected``: the policy's scores lp(y) = sum of (possibly BMC-weighted) response-token
    log-probs; ``*_tokens``: the unweighted response token counts n(y); ``ref_*``: the same scores under the
    frozen reference, ``None`` for reference-free losses; ``*_kl``: the sequential KL
    SeqKL(x, y) = sum_t KL(pi_ref(.|x, y_<t) || pi_theta(.|x, y_<t)) over response positions
    (:mod:`bmc.sequence_kl`), computed only for the losses registered with ``sequence_kl=True``.
    """

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_kl: Tensor | None = None
    rejected_kl: Tensor | None = None

    def reference(self) -> tuple[Tensor, Tensor]:
        """(ref(y_w), ref(y_l)); raises a clear error when the reference scores were not computed."""
        if self.ref_chosen is None or self.ref_rejected is None:
            free = sorted(name for name, entry in LOSSES.items() if "reference_free" in entry.traits)
            raise ValueError(
                "this loss needs reference log-probs but SequenceLogps.ref_chosen/ref_rejected are None; "
                f"compute them with the reference model or use a reference-free loss {free}"
            )
        return self.ref_chosen, self.ref_rejected

    def sequence_kl(self) -> tuple[Tensor, Tensor]:
        """(SeqKL(x, y_w), SeqKL(x, y_l)); raises a clear error when they were not computed."""
        if self.chosen_kl is None or self.rejected_kl is None:
            raise ValueError(
                "this loss needs the sequential KL but SequenceLogps.chosen_kl/rejected_kl are None; compute them "
                "with bmc.sequence_kl.sequence_kl_token_logps (PreferenceModule does for losses registered with "
                "sequence_kl=True)"
            )
        return self.chosen_kl, self.rejected_kl

    def logratios(self) -> tuple[Tensor, Tensor]:
        """(r_w, r_l) with r = lp(y) - ref(y)."""
        ref_chosen, ref_rejected = self.reference()
        return self.chosen - ref_chosen, self.rejected - ref_rejected

    def lengths(self) -> tuple[Tensor, Tensor]:
        """(n_w, n_l) as floats clamped to >= 1: an empty response must not make a normalised loss NaN."""
        return tuple(n.to(self.chosen.dtype).clamp(min=1) for n in (self.chosen_tokens, self.rejected_tokens))

    def mean_logps(self) -> tuple[Tensor, Tensor]:
        """(lp_w / n_w, lp_l / n_l): token-mean log-likelihoods (the token-mean NLL of y_w is -lp_w / n_w)."""
        n_w, n_l = self.lengths()
        return self.chosen / n_w, self.rejected / n_l


@dataclass
class LossOutput:
    """``losses``: (B,) per-pair losses, the batch loss is their mean.

    ``chosen_rewards``/``rejected_rewards``: (B,) implicit rewards for logging, detached here. Reference-based
    losses report beta * r (TRL convention, beta being the loss's own scale, e.g. tau for ipo); reference-free
    ones their natural implicit reward (e.g. beta * lp / n for simpo).
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor

    def __post_init__(self) -> None:
        self.chosen_rewards = self.chosen_rewards.detach()
        self.rejected_rewards = self.rejected_rewards.detach()


def register_loss(
    name: str,
    *,
    reference_free: bool = False,
    sequence_kl: bool = False,
    listwise: bool = False,
    ranges: Mapping[str, Container] | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator registering a loss function or class under ``name``.

    ``ranges`` maps hyper-parameter names to the values they accept (anything supporting ``in``, e.g. an
    ``Interval``), overriding the shared defaults (beta > 0, eps in [0, 0.5), ...). ``sequence_kl``: the loss
    reads ``SequenceLogps.chosen_kl``/``rejected_kl``, so the reference runs in the step (TDPO). ``listwise``: the
    loss takes the ranked lists of K responses per prompt (:class:`bmc.losses.ranked_logps.RankedLogps`), not pairs.
    """
    flags = {"reference_free": reference_free, "sequence_kl": sequence_kl, "listwise": listwise}
    return LOSSES.register(name, ranges=ranges, traits=[trait for trait, on in flags.items() if on])


def build_loss(name: str, **hparams: Any) -> LossFn:
    """Bind a loss's hyper-parameters; unknown names, unknown keys and out-of-range values raise."""
    return LOSSES.build(name, hparams)


def is_reference_free(name: str, **hparams: Any) -> bool:
    """Whether the loss needs no reference model. For ``mix`` pass its ``components``: free iff all are.

    Accepts the loss's other hyper-parameters and ignores them, so ``is_reference_free(**cfg.loss)`` works.
    """
    components = hparams.get("components")
    if name == "mix" and components:
        return all(is_reference_free(**component) for component in components)
    return "reference_free" in LOSSES.entry(name).traits


def needs_sequence_kl(name: str, **hparams: Any) -> bool:
    """Whether the loss reads the sequential KL (:class:`SequenceLogps`); ``mix``: whether any component does.
    Accepts and ignores the other hyper-parameters, like :func:`is_reference_free`."""
    components = hparams.get("components")
    if name == "mix" and components:
        return any(needs_sequence_kl(**component) for component in components)
    return "sequence_kl" in LOSSES.entry(name).traits


def is_listwise(name: str, **hparams: Any) -> bool:
    """Whether the loss trains on ranked lists. For ``mix``: iff all its ``components`` are; a mix of listwise
    and pairwise losses raises (a batch holds either lists or pairs). Other hyper-parameters are ignored."""
    components = hparams.get("components")
    if name == "mix" and components:
        kinds = {is_listwise(**component) for component in components}
        if len(kinds) > 1:
            raise ValueError(f"loss 'mix' mixes listwise and pairwise components: {list(components)}")
        return kinds.pop()
    return "listwise" in LOSSES.entry(name).traits


def preference_loss(
    name: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    **hparams: Any,
) -> LossOutput:
    """Functional entry point (like TRL's ``dpo_loss``), usable without Lightning.

    All tensors are (B,). Lengths default to 1, i.e. the log-probs are taken as already length-normalised:
    pass the token counts for ipo, sigmoid_norm, simpo, orpo, sft, cpo and rdpo. Builds a fresh loss on
    every call, so a stateful loss (bco_pair) starts from an empty running mean: ``build_loss`` keeps state.
    """
    ones = torch.ones_like(policy_chosen_logps)
    logps = SequenceLogps(
        policy_chosen_logps,
        policy_rejected_logps,
        ones if chosen_lengths is None else chosen_lengths,
        ones if rejected_lengths is None else rejected_lengths,
        ref_chosen_logps,
        ref_rejected_logps,
    )
    return build_loss(name, **hparams)(logps)


@register_loss("mix")
class WeightedLoss:
    """Weighted sum of losses (TRL's ``loss_weights``): ``components=[{name: dpo, weight: 1}, ...]``.

    Per-pair loss = sum_i weight_i * loss_i; the rewards reported are the first component's.
    """

    def __init__(self, components: Sequence[Mapping[str, Any]]) -> None:
        if not components:
            raise ValueError("loss 'mix' needs at least one component")
        self.components: list[tuple[float, LossFn]] = []
        for component in components:
            hparams = dict(component)
            if "name" not in hparams:
                raise ValueError(f"loss 'mix': component {hparams} has no 'name'")
            weight = hparams.pop("weight", 1.0)
            if weight not in Interval(0.0, high_open=True):
                raise ValueError(f"loss 'mix': weight={weight!r} of {hparams['name']!r} must be >= 0")
            self.components.append((float(weight), build_loss(hparams.pop("name"), **hparams)))

    def __call__(self, logps: SequenceLogps) -> LossOutput:
        outputs = [(weight, loss(logps)) for weight, loss in self.components]
        losses = sum(weight * out.losses for weight, out in outputs)
        first = outputs[0][1]
        return LossOutput(losses, first.chosen_rewards, first.rejected_rewards)


def build_weighted_loss(components: Sequence[Mapping[str, Any]]) -> LossFn:
    """Same as ``build_loss("mix", components=components)``."""
    return build_loss("mix", components=components)
