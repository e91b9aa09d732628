"""Regularizers on the chosen likelihood: values, zero regions, and DPOP's shift of the DPO logit."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml

from bmc.losses import SequenceLogps, build_loss, build_regularizer

CONF = Path(__file__).resolve().parents[2] / "conf"


def make(chosen, ref_chosen, n, grad=False, rejected=None, ref_rejected=None) -> SequenceLogps:
    def t(xs):
        return torch.tensor(xs, dtype=torch.float64)

    rejected = rejected or [-20.0] * len(chosen)
    ref_rejected = ref_rejected or [-20.0] * len(chosen)
    return SequenceLogps(
        t(chosen).requires_grad_(grad),
        t(rejected),
        torch.tensor(n),
        torch.tensor(n),
        t(ref_chosen),
        t(ref_rejected),
    )


# Chosen log-likelihood per token relative to the reference: fell by 0.03, fell by 0.1, rose by 0.05.
LOGPS = dict(chosen=[-10.3, -11.0, -9.5], ref_chosen=[-10.0, -10.0, -10.0], n=[10, 10, 10])


def test_none_is_identity():
    reg = build_regularizer("none")
    logps = make(**LOGPS)
    assert reg.adjust(logps) is logps
    assert torch.equal(reg.penalty(logps), torch.zeros(3, dtype=torch.float64))


def test_nll_value():
    logps = make(chosen=[-6.0, 0.0, -3.0], ref_chosen=[0.0] * 3, n=[3, 0, 2])
    penalty = build_regularizer("nll", alpha=0.5).penalty(logps)
    torch.testing.assert_close(penalty, torch.tensor([1.0, 0.0, 0.75], dtype=torch.float64))  # 0.5 * 6/3 ...
    assert torch.isfinite(penalty).all()  # n = 0 is clamped


def test_nll_works_without_reference():
    logps = dataclasses.replace(make(**LOGPS), ref_chosen=None, ref_rejected=None)
    torch.testing.assert_close(
        build_regularizer("nll").penalty(logps), torch.tensor([1.03, 1.1, 0.95]).double()
    )


def test_bcr_hinge_per_token_and_zero_region():
    logps = make(**LOGPS, grad=True)
    penalty = build_regularizer("bcr").penalty(logps)  # lam 1, delta 0.05, per_token, hinge
    # fall 0.03 < delta -> 0; fall 0.1 -> 0.1 - 0.05; a rise -> 0
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.05, 0.0], dtype=torch.float64))
    penalty.sum().backward()
    # Zero region: no gradient at all; beyond the budget it pushes the chosen likelihood up (-1/n per pair).
    torch.testing.assert_close(logps.chosen.grad, torch.tensor([0.0, -0.1, 0.0], dtype=torch.float64))


def test_bcr_options():
    logps = make(**LOGPS)
    squared = build_regularizer("bcr", lam=2.0, form="squared_hinge").penalty(logps)
    torch.testing.assert_close(squared, torch.tensor([0.0, 2.0 * 0.05**2, 0.0], dtype=torch.float64))
    per_sequence = build_regularizer("bcr", normalization="per_sequence", delta=0.5).penalty(logps)
    torch.testing.assert_close(per_sequence, torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64))
    assert torch.equal(
        build_regularizer("bcr", delta=0.2).penalty(logps), torch.zeros(3, dtype=torch.float64)
    )


def test_bcr_needs_reference():
    logps = dataclasses.replace(make(**LOGPS), ref_chosen=None, ref_rejected=None)
    with pytest.raises(ValueError, match="reference log-probs"):
        build_regularizer("bcr").penalty(logps)


def test_delta_w():
    delta_w = build_regularizer("none").delta_w(make(**LOGPS, grad=True))
    torch.testing.assert_close(delta_w, torch.tensor([-0.03, -0.1, 0.05], dtype=torch.float64))
    assert not delta_w.requires_grad


def test_dpop_shifts_the_dpo_logit():
    beta, lam = 0.1, 5.0
    logps = make(**LOGPS, rejected=[-12.0, -8.0, -10.0], ref_rejected=[-11.0, -9.0, -10.0])
    dpop = build_regularizer("dpop", lam=lam)
    out = build_loss("dpo", beta=beta)(dpop.adjust(logps))
    expected = []
    for w, rw, lo, rl in zip(
        LOGPS["chosen"], LOGPS["ref_chosen"], [-12.0, -8.0, -10.0], [-11.0, -9.0, -10.0]
    ):
        logit = beta * (((w - rw) - (lo - rl)) - lam * max(0.0, rw - w))
        expected.append(math.log1p(math.exp(-logit)))
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64))
    # Where the chosen likelihood rose (pair 2) the logit is DPO's.
    assert out.losses[2].item() == pytest.approx(build_loss("dpo", beta=beta)(logps).losses[2].item())
    assert torch.equal(dpop.penalty(logps), torch.zeros(3, dtype=torch.float64))


def test_dpop_reads_the_unweighted_scores():
    weighted = make(chosen=[-30.0], ref_chosen=[-25.0], n=[10])  # BMC-weighted: fell by 5
    unweighted = make(chosen=[-10.0], ref_chosen=[-10.5], n=[10])  # unweighted: rose, so no penalty
    dpop = build_regularizer("dpop", lam=50.0)
    assert dpop.adjust(weighted, unweighted).chosen.item() == -30.0
    assert dpop.adjust(weighted).chosen.item() == -30.0 - 50.0 * 5.0


def test_build_regularizer_validation():
    with pytest.raises(ValueError, match=r"unknown regularizer 'l2'.*'bcr'"):
        build_regularizer("l2")
    with pytest.raises(ValueError, match="form"):
        build_regularizer("bcr", form="cubic")
    with pytest.raises(ValueError, match="normalization"):
        build_regularizer("bcr", normalization="per_word")
    with pytest.raises(ValueError, match="lam"):
        build_regularizer("dpop", lam=-1.0)
    with pytest.raises(ValueError, match="delta"):
        build_regularizer("bcr", delta=-0.05)
    with pytest.raises(ValueError, match=r"'nll'.*\['lam'\].*accepted: \['alpha'\]"):
        build_regularizer("nll", lam=1.0)


@pytest.mark.parametrize("path", sorted((CONF / "regularizer").glob("*.yaml")), ids=lambda p: p.name)
def test_regularizer_configs_build(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["name"] == path.stem
    reg = build_regularizer(**cfg)
    logps = make(**LOGPS)
    assert torch.isfinite(reg.penalty(logps)).all() and torch.isfinite(reg.adjust(logps).chosen).all()
