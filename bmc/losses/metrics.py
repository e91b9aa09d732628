"""What a preference step logs (METHODS.md section 3): the loss, the implicit rewards, the log-probs, and where
the objective has them the regularizer, Delta_w, the token weights and the sequential KL."""

from __future__ import annotations

from torch import Tensor

from bmc.losses.registry import LossOutput, SequenceLogps
from bmc.losses.regularizers import Regularizer
from bmc.losses.weighting import weighting_stats


def preference_metrics(
    loss: Tensor,
    out: LossOutput,
    unweighted: SequenceLogps,
    regularizer: tuple[str, Regularizer, Tensor],
    weighting: tuple[str, Tensor, Tensor, Tensor],
) -> dict[str, Tensor]:
    """Metric name -> 0-d tensor. ``unweighted``: the plain log-prob sums of the pairs (and their references and
    sequential KL where computed); ``regularizer``: (name, regularizer, per-pair penalty); ``weighting``: (name,
    weights, diff mask, response mask)."""
    n_w, n_l = unweighted.lengths()
    metrics = {
        "loss": loss,
        "rewards/chosen": out.chosen_rewards.mean(),
        "rewards/rejected": out.rejected_rewards.mean(),
        "rewards/margins": (out.chosen_rewards - out.rejected_rewards).mean(),
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().mean(),
        "logps/chosen": unweighted.chosen.mean(),
        "logps/rejected": unweighted.rejected.mean(),
        "logps/chosen_mean": (unweighted.chosen / n_w).mean(),
        "logps/rejected_mean": (unweighted.rejected / n_l).mean(),
    }
    name, reg, penalty = regularizer
    if name != "none":
        metrics[f"regularizer/{name}"] = penalty.mean()
    if unweighted.ref_chosen is not None:
        metrics["delta_w"] = reg.delta_w(unweighted).mean()
    if unweighted.chosen_kl is not None:  # TDPO's SeqKL(y_w), SeqKL(y_l): the divergence it regulates per response
        metrics["kl/chosen"] = unweighted.chosen_kl.detach().mean()
        metrics["kl/rejected"] = unweighted.rejected_kl.detach().mean()
    weighting_name, weights, diff_mask, mask = weighting
    if weighting_name != "uniform":
        metrics.update({f"bmc/{k}": v for k, v in weighting_stats(weights, diff_mask, mask).items()})
    return metrics
