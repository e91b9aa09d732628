"""Preference losses, BMC token weighting, diff masks and likelihood regularizers (pure PyTorch).

A loss registers itself where it is defined (``@register_loss``); :data:`bmc.plugins.LOSSES` finds every
module of this package on its first lookup. See ``registry`` for the interface.
"""

from bmc.losses.masks import ENGLISH_STOPWORDS, diff_masks, stopword_token_ids
from bmc.losses.objective import build_objective, needs_reference
from bmc.losses.ranked_logps import RankedLogps
from bmc.losses.registry import (
    LOSSES,
    LossOutput,
    SequenceLogps,
    build_loss,
    build_weighted_loss,
    is_listwise,
    is_reference_free,
    needs_sequence_kl,
    preference_loss,
    register_loss,
)
from bmc.losses.regularizers import REGULARIZERS, Regularizer, build_regularizer
from bmc.losses.weighting import (
    TOKEN_WEIGHTINGS,
    TokenWeighting,
    build_token_weighting,
    weighted_score,
    weighting_stats,
)

__all__ = [
    "ENGLISH_STOPWORDS",
    "LOSSES",
    "REGULARIZERS",
    "TOKEN_WEIGHTINGS",
    "LossOutput",
    "RankedLogps",
    "Regularizer",
    "SequenceLogps",
    "TokenWeighting",
    "build_loss",
    "build_objective",
    "build_regularizer",
    "build_token_weighting",
    "build_weighted_loss",
    "diff_masks",
    "is_listwise",
    "is_reference_free",
    "needs_reference",
    "needs_sequence_kl",
    "preference_loss",
    "register_loss",
    "stopword_token_ids",
    "weighted_score",
    "weighting_stats",
]
