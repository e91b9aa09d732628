"""The win-rate statistics: the length-controlled win rate on cases with a closed-form answer, and seeded bootstrap
intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bmc.winrate_stats import (
    LOSS,
    TIE,
    WIN,
    extrapolates,
    length_controlled_winrate,
    winrate_summary,
)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _two_lengths(d1: float, n1: int, wins1: int, d2: float, n2: int, wins2: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes at two length differences: the logistic fit is saturated, so it reproduces both win shares."""
    outcomes = [WIN] * wins1 + [LOSS] * (n1 - wins1) + [WIN] * wins2 + [LOSS] * (n2 - wins2)
    return np.array(outcomes), np.array([d1] * n1 + [d2] * n2)


def _saturated(d: np.ndarray, p1: float, p2: float) -> tuple[float, float]:
    """(LC, φ) of a two-length design by hand: the fit passes through (x_k, logit p_k), x_k = tanh(d_k / s)
    with s the std (ddof 1) of all the differences, so θ is that line's value at x = 0."""
    s = float(np.std(d, ddof=1))
    x1, x2 = math.tanh(d[0] / s), math.tanh(d[-1] / s)
    theta = (x2 * _logit(p1) - x1 * _logit(p2)) / (x2 - x1)
    return 1 / (1 + math.exp(-theta)), (_logit(p1) - _logit(p2)) / (x1 - x2)


def test_length_controlled_winrate_has_the_closed_form_of_a_saturated_fit() -> None:
    # Judged by length alone: the longer answer wins 7 of 8 games, and the policy is longer on 32 of 40 prompts.
    # logit p = θ + φ tanh(d/s) through (+x, 7/8) and (−x, 1/8), tanh odd: θ = (logit 7/8 + logit 1/8) / 2 = 0.
    y, d = _two_lengths(10, 32, 28, -10, 8, 1)
    assert y.mean() == pytest.approx(0.725)
    lc = length_controlled_winrate(y, d)
    assert lc.winrate == pytest.approx(0.5, abs=1e-3) and lc.phi > 0 and not lc.extrapolated
    # No length effect: 3/4 wins at both lengths, so φ = 0 and LC = W.
    y, d = _two_lengths(10, 32, 24, -10, 8, 6)
    lc = length_controlled_winrate(y, d)
    assert lc.winrate == pytest.approx(y.mean(), abs=1e-3) == pytest.approx(0.75, abs=1e-3)
    assert lc.phi == pytest.approx(0.0, abs=1e-3)
    # Equal lengths everywhere: nothing to control for, and nothing extrapolated.
    lc = length_controlled_winrate(np.array([1, 1, 0, 0.5]), np.zeros(4))
    assert lc.winrate == pytest.approx(0.625, abs=1e-3) and not lc.extrapolated


def test_the_tanh_length_term_against_a_hand_computed_fit() -> None:
    # p = 0.8 at d = +30, 0.3 at d = −10 (10 prompts each): s = 20·sqrt(20/19) = 20.5196,
    # x = tanh(30/s) = 0.89804 and tanh(−10/s) = −0.45210, so φ = (logit 0.8 − logit 0.3) / 1.35014 = 1.6543 and
    # θ = (−0.45210 logit 0.8 − 0.89804 logit 0.3) / (−1.35014) = −0.09937: LC = σ(θ) = 0.4752.
    y, d = _two_lengths(30, 10, 8, -10, 10, 3)
    lc = length_controlled_winrate(y, d)
    assert (lc.winrate, lc.phi) == pytest.approx(_saturated(d, 0.8, 0.3), abs=1e-3)
    assert (lc.winrate, lc.phi) == pytest.approx((0.4752, 1.6543), abs=1e-3)
    assert not lc.extrapolated  # the differences straddle 0: LC is read between them


def test_a_one_sided_length_difference_flags_lc_as_extrapolated_and_reports_phi() -> None:
    # Every policy answer shorter (d = −10 on 20 prompts, 4 won; d = −60 on 20, 1 won): W = 0.125, but the curve
    # through both, carried on to d = 0, says 0.396 (s = 25.318, x = −0.37564 and −0.98267, φ = 2.5668).
    y, d = _two_lengths(-10, 20, 4, -60, 20, 1)
    lc = length_controlled_winrate(y, d)  # the ridge pulls φ by about 1e-3 here
    assert (lc.winrate, lc.phi) == pytest.approx(_saturated(d, 0.2, 0.05), abs=2e-3)
    assert (lc.winrate, lc.phi) == pytest.approx((0.396, 2.567), abs=2e-3) and lc.extrapolated
    summary = winrate_summary(y, d, samples=200)
    assert summary["winrate"] == 0.125 and summary["winrate_lc_extrapolated"] == 1.0
    assert summary["winrate_lc_phi"] == pytest.approx(lc.phi) and summary["winrate_lc"] == lc.winrate
    # one-sided counts ties at 0 in (every d ≥ 0), equal lengths everywhere do not, a single opposite sign does
    assert extrapolates(np.array([0.0, 5.0, 12.0])) and extrapolates(np.array([-3.0, 0.0]))
    assert not extrapolates(np.zeros(3)) and not extrapolates(np.array([-1.0, 40.0, 90.0]))


def test_length_controlled_winrate_stays_finite_on_separable_outcomes() -> None:
    y, d = _two_lengths(10, 30, 30, -10, 10, 0)  # the longer answer always wins
    assert 0.0 < length_controlled_winrate(y, d).winrate < 1.0
    assert length_controlled_winrate(np.ones(20), np.arange(20.0)).winrate > 0.99  # every game won


def test_bootstrap_intervals_hold_the_estimate_and_are_seeded() -> None:
    rng = np.random.default_rng(3)
    y, d = rng.choice([WIN, TIE, LOSS], size=60), rng.normal(0, 40, size=60)
    summary = winrate_summary(y, d, samples=300, seed=7)
    assert summary["winrate"] == pytest.approx(y.mean()) and summary["tie_rate"] == pytest.approx(np.mean(y == TIE))
    for name in ("winrate", "winrate_lc"):
        assert summary[f"{name}_ci_low"] <= summary[name] <= summary[f"{name}_ci_high"]
        assert summary[f"{name}_ci_low"] < summary[f"{name}_ci_high"]
    assert winrate_summary(y, d, samples=300, seed=7) == summary
    assert winrate_summary(y, d, samples=300, seed=8) != summary
