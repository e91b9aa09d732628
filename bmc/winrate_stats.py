"""Win-rate arithmetic of a judged comparison between a policy's answers and a baseline's, one held-out prompt
at a time: the both-order rule, the win and tie rates, the length-controlled win rate and bootstrap intervals.

**Both orders.** Each prompt is judged twice, the policy's answer in slot A and then in slot B. Its outcome
``y`` is 1 (the policy wins) only when it is preferred in both orders, 0 (the baseline wins) only when the
baseline is, and 0.5 (a tie) otherwise: a tie verdict in either order, orders that disagree (a judge that
always picks slot A ties everything), or a reply without a verdict (which the judge counts as a tie). This is
MT-Bench's conservative rule; IPR's :func:`bmc.synthesis.judges.compare` instead sums the two verdicts, so
that one win and one tie win there.

**Rates.** Over the n prompts, win rate ``W = mean(y)`` (a tie counts half, as in AlpacaEval) and tie rate
``T = mean(y == 0.5)``.

**Length control** (AlpacaEval 2's length-controlled win rate, Dubois et al. 2024, arXiv 2404.04475, with
its length term alone; METHODS.md §4): with ``d_i`` the policy's answer length minus the baseline's (tokens)
and ``s`` their standard deviation over the prompts (ddof 1, as AlpacaEval's ``glm_winrate`` takes the pandas
``std``; only the scale: d is not centred, so that d = 0 still means equal length), fit

    P(y_i = 1) = σ(θ + φ·tanh(d_i / s))

by maximising the Bernoulli log-likelihood with soft labels ``Σ y log σ + (1 − y) log(1 − σ)`` (a tie,
y = ½, weighs half on each side) minus a small ridge ``λ/2 ‖(θ, φ)‖²`` (it keeps the fit finite when the
outcomes are separable, e.g. every game won, or won exactly by the longer answer), with Newton's method. The
length-controlled win rate is the fit at equal length, ``LC = σ(θ)``; ``φ`` says how much the judge rewards
length (tanh bounds any one answer's pull to ±φ). A judge that only rewards length gives LC ≈ 0.5 however high
W is; outcomes unrelated to length give LC ≈ W and φ ≈ 0.

**Extrapolation.** σ(θ) is read at d = 0. When the differences do not straddle 0 (every d ≥ 0 or every
d ≤ 0, e.g. every policy answer shorter than the baseline's), equal length lies at the edge of the data or
beyond it, where the logistic form rather than the outcomes decides the curve's value: LC is flagged as
extrapolated. Equal lengths everywhere (every d = 0) are the exception: the fit then gives LC = W, read where
the data are.

**Intervals.** B bootstrap resamples of the prompts (with replacement, from a seeded generator) recompute W
and LC; the 95% interval is their 2.5th to 97.5th percentile.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

WIN, TIE, LOSS = 1.0, 0.5, 0.0
#: λ of the ridge: negligible against the log-likelihood of a few prompts, enough to bound a separable fit
RIDGE = 1e-4


def both_order_outcome(policy_first: int, baseline_first: int) -> float:
    """The policy's outcome from the verdicts of its two judgments, each +1 / −1 / 0 from slot A's view:
    ``policy_first`` with the policy's answer in slot A, ``baseline_first`` with the baseline's there.
    :data:`WIN` only if both prefer the policy, :data:`LOSS` only if both prefer the baseline, else :data:`TIE`."""
    if policy_first == 1 and baseline_first == -1:
        return WIN
    if policy_first == -1 and baseline_first == 1:
        return LOSS
    return TIE


def length_scale(length_diff: np.ndarray) -> float:
    """``s``, the standard deviation (ddof 1) of the length differences: the scale of the tanh length term
    (1 when it is 0 or undefined, one prompt or all differences equal: the term is then tanh(d))."""
    diff = np.asarray(length_diff, dtype=float)
    std = float(np.std(diff, ddof=1)) if diff.size > 1 else 0.0
    return std or 1.0


def length_feature(length_diff: np.ndarray) -> np.ndarray:
    """``tanh(d / s)``, each prompt's covariate in the length regression (module docstring)."""
    diff = np.asarray(length_diff, dtype=float)
    return np.tanh(diff / length_scale(diff))


def extrapolates(length_diff: np.ndarray) -> bool:
    """Whether σ(θ) is read outside the length differences: none below 0 or none above 0, unless all are 0."""
    diff = np.asarray(length_diff, dtype=float)
    return bool(np.any(diff != 0) and (np.all(diff >= 0) or np.all(diff <= 0)))


def fit_length_logistic(
    outcomes: np.ndarray, feature: np.ndarray, ridge: float = RIDGE, max_iter: int = 100, tol: float = 1e-10
) -> np.ndarray:
    """(θ, φ) of the ridge-penalised logistic regression ``P(y = 1) = σ(θ + φ x)`` on the length feature
    ``x = tanh(d / s)`` (module docstring), by Newton's method; batched: ``outcomes`` and ``feature`` of shape
    (..., n) give an array of shape (..., 2).

    Newton step: ``β ← β − H⁻¹ g`` with ``β = (θ, φ)``, ``g = Xᵀ(y − p) − λβ`` and
    ``H = −Xᵀ diag(p(1 − p)) X − λI``, ``X = [1, x]``. A step is clipped to 4 in each coordinate: where
    p(1 − p) vanishes (separable outcomes) the curvature is little more than λ, and a full step would overshoot
    by orders of magnitude."""
    y = np.asarray(outcomes, dtype=float)
    x = np.stack([np.ones_like(y), np.broadcast_to(np.asarray(feature, dtype=float), y.shape)], axis=-1)
    beta = np.zeros((*y.shape[:-1], 2))
    eye = np.eye(2)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-np.einsum("...nk,...k->...n", x, beta)))
        gradient = np.einsum("...nk,...n->...k", x, y - p) - ridge * beta
        curvature = np.einsum("...nk,...n,...nl->...kl", x, p * (1.0 - p), x) + ridge * eye
        step = np.clip(np.linalg.solve(curvature, gradient[..., None])[..., 0], -4.0, 4.0)
        beta = beta + step
        if np.max(np.abs(step), initial=0.0) < tol:
            break
    return beta


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class LengthControlled(NamedTuple):
    """The length regression's answer: ``LC = σ(θ)``, the length coefficient ``φ`` and whether LC
    extrapolates (module docstring)."""

    winrate: float
    phi: float
    extrapolated: bool


def length_controlled_winrate(outcomes: np.ndarray, length_diff: np.ndarray) -> LengthControlled:
    """LC, φ and the extrapolation flag of the outcomes against the length differences (module docstring)."""
    diff = np.asarray(length_diff, dtype=float)
    theta, phi = fit_length_logistic(np.asarray(outcomes, dtype=float), length_feature(diff))
    return LengthControlled(float(_sigmoid(theta)), float(phi), extrapolates(diff))


def winrate_summary(
    outcomes: np.ndarray, length_diff: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Win rate, tie rate, length-controlled win rate with its ``winrate_lc_phi`` and
    ``winrate_lc_extrapolated`` (1.0 when LC extrapolates, else 0.0: metrics are numbers), and percentile
    bootstrap intervals of the win rate and LC (``*_ci_low`` / ``*_ci_high`` at ``level``), from ``samples``
    resamples of the prompts drawn with ``numpy.random.default_rng(seed)``: the same seed gives the same
    intervals."""
    y = np.asarray(outcomes, dtype=float)
    diff = np.asarray(length_diff, dtype=float)
    if y.size == 0:
        raise ValueError("a win rate needs at least one judged prompt")
    # each prompt's tanh(d / s) with the full sample's s is its covariate: a resample draws (outcome, covariate)
    # pairs rather than rescaling, so that every resample fits the same regression as the point estimate
    feature = length_feature(diff)
    draws = np.random.default_rng(seed).integers(0, y.size, size=(samples, y.size))
    resampled_winrate = y[draws].mean(axis=1)
    resampled_lc = _sigmoid(fit_length_logistic(y[draws], feature[draws])[:, 0])
    tail = 100 * (1 - level) / 2
    lc = length_controlled_winrate(y, diff)
    summary = {
        "winrate": float(y.mean()),
        "tie_rate": float(np.mean(y == TIE)),
        "winrate_lc": lc.winrate,
        "winrate_lc_phi": lc.phi,
        "winrate_lc_extrapolated": float(lc.extrapolated),
    }
    for name, values in (("winrate", resampled_winrate), ("winrate_lc", resampled_lc)):
        low, high = np.percentile(values, [tail, 100 - tail])
        summary[f"{name}_ci_low"], summary[f"{name}_ci_high"] = float(low), float(high)
    return summary
