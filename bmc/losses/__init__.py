"""Preference losses, BMC token weighting, diff masks and likelihood regularizers (pure PyTorch).

Importing this package registers every loss; see ``registry`` for the interface.
"""

from bmc.losses import listwise, pairwise, reference_free  # noqa: F401  (registration side effect)
from bmc.losses.masks import ENGLISH_STOPWORDS, diff_masks, stopword_token_ids
from bmc.losses.objective import build_objective, needs_reference
from bmc.losses.ranked import RankedLogps
from bmc.losses.registry import (
    LOSSES,
    LossOutput,
    SequenceLogps,
    build_loss,
    build_weighted_loss,
    is_listwise,
    is_reference_free,
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
    "preference_loss",
    "register_loss",
    "stopword_token_ids",
    "weighted_score",
    "weighting_stats",
]
