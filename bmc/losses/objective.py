"""A run's objective from its config: the loss, the token weighting and the regularizer together."""

from __future__ import annotations

from typing import Any

from bmc.losses.registry import LossFn, build_loss, is_reference_free
from bmc.losses.regularizers import Regularizer, build_regularizer
from bmc.losses.weighting import TokenWeighting, build_token_weighting


def build_objective(
    loss: dict[str, Any], token_weighting: dict[str, Any], regularizer: dict[str, Any]
) -> tuple[LossFn, TokenWeighting, Regularizer]:
    """The loss, token weighting and regularizer of a config; unknown names and out-of-range options raise."""
    return build_loss(**loss), build_token_weighting(**token_weighting), build_regularizer(**regularizer)


def needs_reference(loss: dict[str, Any], regularizer: dict[str, Any]) -> bool:
    """A reference model is needed by reference-based losses and by every likelihood regularizer."""
    hparams = {k: v for k, v in loss.items() if k != "name"}
    return not is_reference_free(loss["name"], **hparams) or regularizer["name"] != "none"
