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

**Length control** (AlpacaEval 2's idea, with the length term alone): with ``d_i`` the policy's answer length
minus the baseline's (tokens), scaled to ``z_i = d_i / s`` by their root mean square ``s = sqrt(mean(d²))``
(not centred, so that z = 0 still means equal length), fit

    P(y_i = 1) = σ(θ0 + θ1 z_i)

by maximising the Bernoulli log-likelihood with soft labels ``Σ y log σ + (1 − y) log(1 − σ)`` minus a
small ridge ``λ/2 ‖θ‖²`` (it keeps θ finite when the outcomes are separable, e.g. every game won, or won
exactly by the longer answer), with Newton's method. The length-controlled win rate is the fit at equal
length, ``LC = σ(θ0)``. A judge that only rewards length gives LC ≈ 0.5 however high W is; outcomes unrelated
to length give LC ≈ W.

**Intervals.** B bootstrap resamples of the prompts (with replacement, from a seeded generator) recompute W
and LC; the 95% interval is their 2.5th to 97.5th percentile.
"""

from __future__ import annotations

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
    """``s = sqrt(mean(d²))``, the scale z = d / s of the length differences (1 when all are 0: z = 0)."""
    rms = float(np.sqrt(np.mean(np.square(length_diff, dtype=float))))
    return rms or 1.0


def fit_length_logistic(
    outcomes: np.ndarray, z: np.ndarray, ridge: float = RIDGE, max_iter: int = 100, tol: float = 1e-10
) -> np.ndarray:
    """θ = (θ0, θ1) of the ridge-penalised logistic regression ``P(y = 1) = σ(θ0 + θ1 z)`` (module docstring),
    by Newton's method; batched: ``outcomes`` and ``z`` of shape (..., n) give θ of shape (..., 2).

    Newton step: ``θ ← θ − H⁻¹ g`` with ``g = Xᵀ(y − p) − λθ`` and ``H = −Xᵀ diag(p(1 − p)) X − λI``,
    ``X = [1, z]``. A step is clipped to 4 in each coordinate: where p(1 − p) vanishes (separable outcomes)
    the curvature is little more than λ, and a full step would overshoot by orders of magnitude."""
    y = np.asarray(outcomes, dtype=float)
    x = np.stack([np.ones_like(y), np.broadcast_to(np.asarray(z, dtype=float), y.shape)], axis=-1)
    theta = np.zeros((*y.shape[:-1], 2))
    eye = np.eye(2)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-np.einsum("...nk,...k->...n", x, theta)))
        gradient = np.einsum("...nk,...n->...k", x, y - p) - ridge * theta
        curvature = np.einsum("...nk,...n,...nl->...kl", x, p * (1.0 - p), x) + ridge * eye
        step = np.clip(np.linalg.solve(curvature, gradient[..., None])[..., 0], -4.0, 4.0)
        theta = theta + step
        if np.max(np.abs(step), initial=0.0) < tol:
            break
    return theta


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def length_controlled_winrate(outcomes: np.ndarray, length_diff: np.ndarray) -> float:
    """``LC = σ(θ0)``: the win rate the length regression predicts at equal length (module docstring)."""
    diff = np.asarray(length_diff, dtype=float)
    return float(_sigmoid(fit_length_logistic(np.asarray(outcomes, dtype=float), diff / length_scale(diff))[0]))


def winrate_summary(
    outcomes: np.ndarray, length_diff: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Win rate, tie rate, length-controlled win rate and percentile bootstrap intervals of the first and the
    last (``*_ci_low`` / ``*_ci_high`` at ``level``), from ``samples`` resamples of the prompts drawn with
    ``numpy.random.default_rng(seed)``: the same seed gives the same intervals."""
    y = np.asarray(outcomes, dtype=float)
    diff = np.asarray(length_diff, dtype=float)
    if y.size == 0:
        raise ValueError("a win rate needs at least one judged prompt")
    # one scale for the point estimate and every resample: LC does not depend on it, only the ridge's pull does
    z = diff / length_scale(diff)
    draws = np.random.default_rng(seed).integers(0, y.size, size=(samples, y.size))
    resampled_winrate = y[draws].mean(axis=1)
    resampled_lc = _sigmoid(fit_length_logistic(y[draws], z[draws])[:, 0])
    tail = 100 * (1 - level) / 2
    summary = {
        "winrate": float(y.mean()),
        "tie_rate": float(np.mean(y == TIE)),
        "winrate_lc": length_controlled_winrate(y, diff),
    }
    for name, values in (("winrate", resampled_winrate), ("winrate_lc", resampled_lc)):
        low, high = np.percentile(values, [tail, 100 - tail])
        summary[f"{name}_ci_low"], summary[f"{name}_ci_high"] = float(low), float(high)
    return summary
