"""Loss zoo against the METHODS.md formulas, written out independently here in float64 scalar math."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from bmc.losses import (
    LOSSES,
    RankedLogps,
    SequenceLogps,
    build_loss,
    build_weighted_loss,
    is_listwise,
    is_reference_free,
    preference_loss,
)

CONF = Path(__file__).resolve().parents[2] / "conf"

# Three pairs: sequence log-prob sums (policy and reference) and response token counts.
LP_W, LP_L = [-5.0, -12.0, -3.0], [-7.0, -9.0, -4.0]
REF_W, REF_L = [-6.0, -11.0, -3.5], [-6.5, -10.0, -3.0]
N_W, N_L = [4, 10, 2], [5, 8, 3]
# Sequential KL of each response (TDPO reads it; every other loss ignores it).
KL_W, KL_L = [0.5, 2.0, 0.0], [1.5, 0.25, 3.0]


def as_lists(logps: SequenceLogps) -> RankedLogps:
    """Each pair as a ranked list of 2: chosen first, no tie."""
    ref = None if logps.ref_chosen is None else torch.stack([logps.ref_chosen, logps.ref_rejected], 1)
    stacked = torch.stack([logps.chosen, logps.rejected], 1)
    ranks = torch.tensor([[0, 1]]).expand(stacked.shape[0], 2)
    tokens = torch.stack([logps.chosen_tokens, logps.rejected_tokens], 1)
    return RankedLogps(stacked, tokens, ranks, torch.ones_like(ranks, dtype=torch.bool), ref)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def make(grad: bool = False, ref: bool = True, **overrides) -> SequenceLogps:
    values = dict(
        chosen=LP_W,
        rejected=LP_L,
        chosen_tokens=N_W,
        rejected_tokens=N_L,
        ref_chosen=REF_W,
        ref_rejected=REF_L,
        chosen_kl=KL_W,
        rejected_kl=KL_L,
    )
    values.update(overrides)
    tensors = {}
    for key, value in values.items():
        dtype = torch.long if key.endswith("tokens") else torch.float64
        tensors[key] = torch.tensor(value, dtype=dtype, requires_grad=grad and key in ("chosen", "rejected"))
    if not ref:
        tensors["ref_chosen"] = tensors["ref_rejected"] = None
    return SequenceLogps(**tensors)


def grads(logps: SequenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """d loss / d chosen and d loss / d rejected; None (sft ignores y_l) reads as 0."""
    return tuple(torch.zeros_like(t) if t.grad is None else t.grad for t in (logps.chosen, logps.rejected))


def pairs():
    """Per pair: (lp_w, lp_l, ref_w, ref_l, n_w, n_l)."""
    return list(zip(LP_W, LP_L, REF_W, REF_L, N_W, N_L))


# name -> (hparams, per-pair formula f(lp_w, lp_l, ref_w, ref_l, n_w, n_l)), from METHODS.md section 3.
def _dpo(b):
    return lambda w, lo, rw, rl, nw, nl: -logsig(b * ((w - rw) - (lo - rl)))


def _robust(b, e):
    def f(w, lo, rw, rl, nw, nl):
        z = b * ((w - rw) - (lo - rl))
        return (-(1 - e) * logsig(z) + e * logsig(-z)) / (1 - 2 * e)

    return f


def _exo(b, e):
    def f(w, lo, rw, rl, nw, nl):
        z = b * ((w - rw) - (lo - rl))
        return sig(z) * (logsig(z) - math.log(1 - e)) + sig(-z) * (logsig(-z) - math.log(e))

    return f


def _discopop(b, t):
    def f(w, lo, rw, rl, nw, nl):
        z = b * ((w - rw) - (lo - rl))
        m = sig(z / t)
        return (1 - m) * (-logsig(z)) + m * math.exp(-z)

    return f


def _orpo(lam):
    def f(w, lo, rw, rl, nw, nl):
        aw, al = w / nw, lo / nl
        log_odds = (aw - al) - (math.log(1 - math.exp(aw)) - math.log(1 - math.exp(al)))
        return -aw - lam * logsig(log_odds)

    return f


REFERENCE = {
    "dpo": ({"beta": 0.1}, _dpo(0.1)),
    "robust": ({"beta": 0.2, "eps": 0.1}, _robust(0.2, 0.1)),
    # beta = 1: pairs 0 and 2 (Delta = 1.5) sit in the zero region, pair 1 (Delta = -2) does not.
    "hinge": ({"beta": 1.0}, lambda w, lo, rw, rl, nw, nl: max(0.0, 1 - 1.0 * ((w - rw) - (lo - rl)))),
    "ipo": (
        {"tau": 0.1},
        lambda w, lo, rw, rl, nw, nl: ((w - rw) / nw - (lo - rl) / nl - 1 / (2 * 0.1)) ** 2,
    ),
    "sigmoid_norm": (
        {"beta": 2.0},
        lambda w, lo, rw, rl, nw, nl: -logsig(2.0 * ((w - rw) / nw - (lo - rl) / nl)),
    ),
    "exo_pair": ({"beta": 0.1, "eps": 1e-3}, _exo(0.1, 1e-3)),
    "nca_pair": (
        {"beta": 0.3},
        lambda w, lo, rw, rl, nw, nl: (
            -logsig(0.3 * (w - rw)) - 0.5 * logsig(-0.3 * (w - rw)) - 0.5 * logsig(-0.3 * (lo - rl))
        ),
    ),
    "sppo_hard": ({"beta": 0.1}, lambda w, lo, rw, rl, nw, nl: (w - rw - 5.0) ** 2 + (lo - rl + 5.0) ** 2),
    "apo_zero": (
        {"beta": 0.1},
        lambda w, lo, rw, rl, nw, nl: (1 - sig(0.1 * (w - rw))) + sig(0.1 * (lo - rl)),
    ),
    "apo_down": (
        {"beta": 0.1},
        lambda w, lo, rw, rl, nw, nl: sig(0.1 * (w - rw)) + (1 - sig(0.1 * ((w - rw) - (lo - rl)))),
    ),
    "discopop": ({"beta": 0.1, "tau": 0.05}, _discopop(0.1, 0.05)),
    "rdpo": (
        {"beta": 0.1, "alpha": 0.02},
        lambda w, lo, rw, rl, nw, nl: -logsig(0.1 * ((w - rw) - (lo - rl)) - 0.02 * (nw - nl)),
    ),
    "simpo": (
        {"beta": 2.0, "gamma": 0.5},
        lambda w, lo, rw, rl, nw, nl: -logsig(2.0 * (w / nw - lo / nl) - 0.5),
    ),
    "cpo": ({"beta": 0.1, "alpha": 1.0}, lambda w, lo, rw, rl, nw, nl: -logsig(0.1 * (w - lo)) - w / nw),
    "orpo": ({"lam": 0.1}, _orpo(0.1)),
    "sft": ({}, lambda w, lo, rw, rl, nw, nl: -w / nw),
}
PAIRWISE_BATCH = ["aot", "aot_unpaired", "bco_pair", "kto_pair"]  # batch-coupled: tested separately below
REFERENCE_FREE = ["simpo", "cpo", "orpo", "sft"]
SEQUENCE_KL = ["tdpo1", "tdpo2"]  # formulas and gradients in tests/losses/test_tdpo.py
LISTWISE = ["dpo_pl", "infonca", "lipo"]  # on ranked lists: tests/losses/test_listwise.py
PAIRWISE = sorted(set(LOSSES) - set(LISTWISE) - {"mix"})


def test_every_registered_loss_is_covered():
    assert set(LOSSES) == set(REFERENCE) | set(PAIRWISE_BATCH) | set(SEQUENCE_KL) | set(LISTWISE) | {"mix"}
    assert {name for name in LOSSES if is_listwise(name)} == set(LISTWISE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_value_matches_formula(name):
    hparams, formula = REFERENCE[name]
    out = build_loss(name, **hparams)(make())
    expected = torch.tensor([formula(*p) for p in pairs()], dtype=torch.float64)
    torch.testing.assert_close(out.losses, expected, rtol=1e-12, atol=1e-12)


def test_dpo_literal_numbers():
    # pair 0: Delta = (-5 + 6) - (-7 + 6.5) = 1.5 -> -log sigmoid(0.15) = log(1 + e^-0.15)
    out = build_loss("dpo", beta=0.1)(make())
    assert out.losses[0].item() == pytest.approx(0.62095705, abs=1e-8)
    # pair 1: Delta = (-12 + 11) - (-9 + 10) = -2 -> log(1 + e^0.2)
    assert out.losses[1].item() == pytest.approx(0.79813887, abs=1e-8)


def test_ipo_literal_number():
    # pair 0: r_w/n_w - r_l/n_l = 1/4 - (-0.5)/5 = 0.35; (0.35 - 5)^2 = 21.6225
    assert build_loss("ipo", tau=0.1)(make()).losses[0].item() == pytest.approx(21.6225, abs=1e-12)


def test_rdpo_alpha_inside_beta():
    out = build_loss("rdpo", beta=0.1, alpha=0.02, alpha_inside_beta=True)(make())
    expected = [-logsig(0.1 * ((w - rw) - (lo - rl) - 0.02 * (nw - nl))) for w, lo, rw, rl, nw, nl in pairs()]
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64))


def test_aot_sorts_over_the_batch():
    out = build_loss("aot", beta=0.1, eps=0.1)(make())
    policy = sorted(w - lo for w, lo in zip(LP_W, LP_L))  # [-3, 1, 2]
    ref = sorted(w - lo for w, lo in zip(REF_W, REF_L))  # [-1, -0.5, 0.5]
    d = [a - b for a, b in zip(policy, ref)]
    expected = [-(0.9) * logsig(0.1 * x) - 0.1 * logsig(-0.1 * x) for x in d]
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64))


def test_aot_unpaired_sorts_rewards_separately():
    out = build_loss("aot_unpaired", beta=0.1)(make())
    r_w = sorted(w - rw for w, rw in zip(LP_W, REF_W))
    r_l = sorted(lo - rl for lo, rl in zip(LP_L, REF_L))
    expected = [-logsig(0.1 * (a - b)) for a, b in zip(r_w, r_l)]
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64))


def test_kto_pair_batch_reference_points():
    beta = 0.1
    r_w = [w - rw for w, rw in zip(LP_W, REF_W)]  # [1, -1, 0.5]
    r_l = [lo - rl for lo, rl in zip(LP_L, REF_L)]  # [-0.5, 1, -1]
    kl_w, kl_l = max(0.0, sum(r_w) / 3), max(0.0, sum(r_l) / 3)  # 1/6, 0 (clamped)
    expected = [0.5 * ((1 - sig(beta * (a - kl_l))) + (1 - sig(beta * (kl_w - b)))) for a, b in zip(r_w, r_l)]
    out = build_loss("kto_pair", beta=beta)(make())
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64))
    # The batch mean equals TRL's mean over the 2B concatenated terms.
    trl = [1 - sig(beta * (a - kl_l)) for a in r_w] + [1 - sig(beta * (kl_w - b)) for b in r_l]
    assert out.losses.mean().item() == pytest.approx(sum(trl) / 6, abs=1e-12)


def test_bco_pair_running_mean():
    beta = 0.1
    loss = build_loss("bco_pair", beta=beta)
    first, second = make(), make(chosen=[-4.0, -10.0, -2.0])

    def expected(logps_lists, delta):
        w, lo = logps_lists
        return [
            -logsig(beta * (a - rw) - delta) - logsig(-(beta * (b - rl) - delta))
            for a, b, rw, rl in zip(w, lo, REF_W, REF_L)
        ]

    def batch_mean(w):
        return sum(beta * (a - rw) for a, rw in zip(w, REF_W)) + sum(
            beta * (b - rl) for b, rl in zip(LP_L, REF_L)
        )

    mean1 = batch_mean(LP_W) / 6
    torch.testing.assert_close(
        loss(first).losses, torch.tensor(expected((LP_W, LP_L), mean1), dtype=torch.float64)
    )
    mean2 = batch_mean([-4.0, -10.0, -2.0]) / 6
    delta = (mean1 + mean2) / 2  # TRL: plain mean of the batch means seen so far
    torch.testing.assert_close(
        loss(second).losses, torch.tensor(expected(([-4.0, -10.0, -2.0], LP_L), delta), dtype=torch.float64)
    )
    with torch.no_grad():  # evaluation does not move the running mean
        loss(first)
    assert loss.running_mean.item() == pytest.approx(delta, abs=1e-12)
    assert "running_mean" in loss.state_dict()

    ema = build_loss("bco_pair", beta=beta, momentum=0.9)
    ema(first)  # the first batch initialises the average
    ema(second)
    assert ema.running_mean.item() == pytest.approx(0.9 * mean1 + 0.1 * mean2, abs=1e-12)


# --- gradients, rewards, references ---


@pytest.mark.parametrize("name", PAIRWISE)
def test_gradient_signs(name):
    logps = make(grad=True)
    build_loss(name)(logps).losses.mean().backward()
    grad_chosen, grad_rejected = grads(logps)
    # APO-down deliberately lowers the chosen likelihood too, so only its rejected sign is fixed.
    if name != "apo_down":
        assert (grad_chosen <= 0).all(), grad_chosen
    assert (grad_rejected >= 0).all(), grad_rejected
    assert (grad_chosen != 0).any()


@pytest.mark.parametrize("name", PAIRWISE)
def test_rewards_shape_and_detached(name):
    out = build_loss(name)(make(grad=True))
    for rewards in (out.losses, out.chosen_rewards, out.rejected_rewards):
        assert rewards.shape == (3,)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_reference_based_rewards_are_beta_times_logratio():
    out = build_loss("ipo", tau=0.2)(make())  # tau plays beta's role
    torch.testing.assert_close(out.chosen_rewards, 0.2 * torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(
        out.rejected_rewards, 0.2 * torch.tensor([-0.5, 1.0, -1.0], dtype=torch.float64)
    )
    simpo = build_loss("simpo", beta=2.0)(make())
    torch.testing.assert_close(
        simpo.chosen_rewards, 2.0 * torch.tensor([-5 / 4, -12 / 10, -3 / 2], dtype=torch.float64)
    )


@pytest.mark.parametrize("name", REFERENCE_FREE)
def test_reference_free_losses_run_without_reference(name):
    assert is_reference_free(name)
    out = build_loss(name)(make(ref=False))
    assert torch.isfinite(out.losses).all()


@pytest.mark.parametrize("name", sorted(set(PAIRWISE) - set(REFERENCE_FREE)))
def test_reference_based_losses_need_reference(name):
    assert not is_reference_free(name)
    with pytest.raises(ValueError, match="reference log-probs"):
        build_loss(name)(make(ref=False))


# --- edge cases ---


@pytest.mark.parametrize("name", ["ipo", "simpo", "orpo", "sigmoid_norm", "sft", "cpo"])
def test_zero_length_responses_are_finite(name):
    logps = make(
        grad=True,
        chosen=[0.0, -3.0, 0.0],
        rejected=[0.0, 0.0, -2.0],
        chosen_tokens=[0, 3, 0],
        rejected_tokens=[0, 0, 2],
        ref_chosen=[0.0, -2.0, 0.0],
        ref_rejected=[0.0, 0.0, -1.0],
    )
    out = build_loss(name)(logps)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert all(torch.isfinite(g).all() for g in grads(logps))


def test_orpo_is_stable_at_extreme_mean_logps():
    # a = 0 exactly (certain tokens), a tiny (-1e-9), and very negative means: log(1 - e^a) stays finite.
    logps = make(
        grad=True, chosen=[0.0, -1e-9, -2000.0], rejected=[-1e-9, -3000.0, 0.0], chosen_tokens=[3, 1, 2]
    )
    out = build_loss("orpo", lam=0.1)(logps)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(logps.chosen.grad).all()
    # Far from 0 it still matches the exact formula.
    moderate = make(chosen=[-0.3, -20.0, -3.0], rejected=[-30.0, -0.2, -4.0])
    expected = [_orpo(0.1)(*p) for p in zip([-0.3, -20.0, -3.0], [-30.0, -0.2, -4.0], REF_W, REF_L, N_W, N_L)]
    torch.testing.assert_close(
        build_loss("orpo")(moderate).losses, torch.tensor(expected, dtype=torch.float64)
    )


def test_robust_eps_bounds():
    torch.testing.assert_close(build_loss("robust", eps=0.0)(make()).losses, build_loss("dpo")(make()).losses)
    assert torch.isfinite(build_loss("robust", eps=0.499)(make()).losses).all()
    for eps in (0.5, -0.01, 0.7):
        with pytest.raises(ValueError, match="eps"):
            build_loss("robust", eps=eps)


def test_exo_eps_bounds():
    for eps in (1e-12, 0.5, 1 - 1e-9):
        out = build_loss("exo_pair", eps=eps)(make())
        torch.testing.assert_close(
            out.losses, torch.tensor([_exo(0.1, eps)(*p) for p in pairs()], dtype=torch.float64)
        )
    for eps in (0.0, -1e-3, 1.0):
        with pytest.raises(ValueError, match="eps"):
            build_loss("exo_pair", eps=eps)


def test_discopop_no_nan_for_large_margins():
    logps = make(grad=True, chosen=[-1e4, 1e4, -5.0])
    out = build_loss("discopop")(logps)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(logps.chosen.grad).all()


# --- registry ---


def test_build_loss_validation():
    with pytest.raises(ValueError, match=r"unknown loss 'nope'.*'dpo'"):
        build_loss("nope")
    with pytest.raises(ValueError, match=r"'dpo'.*\['gamma'\].*accepted: \['beta'\]"):
        build_loss("dpo", gamma=1.0)
    with pytest.raises(ValueError, match="beta"):
        build_loss("dpo", beta=-0.1)
    with pytest.raises(ValueError, match="beta"):
        build_loss("simpo", beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        build_loss("dpo", beta="0.1")
    with pytest.raises(ValueError, match="tau"):
        build_loss("ipo", tau=0.0)
    with pytest.raises(ValueError, match="alpha"):
        build_loss("rdpo", alpha=-1.0)
    with pytest.raises(ValueError, match="lam"):
        build_loss("orpo", lam=-0.1)
    with pytest.raises(ValueError, match="momentum"):
        build_loss("bco_pair", momentum=1.0)
    build_loss("bco_pair", momentum=None)
    build_loss("simpo", gamma=-0.5)  # any real margin


def test_mix_is_weighted_sum():
    components = [{"name": "dpo", "weight": 1.0, "beta": 0.1}, {"name": "sft", "weight": 0.5}]
    out = build_loss("mix", components=components)(make())
    dpo, sft = build_loss("dpo", beta=0.1)(make()), build_loss("sft")(make())
    torch.testing.assert_close(out.losses, dpo.losses + 0.5 * sft.losses)
    torch.testing.assert_close(out.chosen_rewards, dpo.chosen_rewards)
    torch.testing.assert_close(build_weighted_loss(components)(make()).losses, out.losses)
    assert not is_reference_free("mix", components=components)
    assert is_reference_free("mix", components=[{"name": "simpo"}, {"name": "sft", "weight": 0.1}])
    with pytest.raises(ValueError, match="weight"):
        build_loss("mix", components=[{"name": "dpo", "weight": -1.0}])
    with pytest.raises(ValueError, match="name"):
        build_loss("mix", components=[{"weight": 1.0}])
    with pytest.raises(ValueError, match="beta"):
        build_loss("mix", components=[{"name": "dpo", "beta": -1.0}])


def test_preference_loss_functional():
    t = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    out = preference_loss("dpo", t(LP_W), t(LP_L), t(REF_W), t(REF_L), beta=0.1)
    torch.testing.assert_close(out.losses, build_loss("dpo", beta=0.1)(make()).losses)
    out = preference_loss("simpo", t(LP_W), t(LP_L), chosen_lengths=t(N_W), rejected_lengths=t(N_L))
    torch.testing.assert_close(out.losses, build_loss("simpo")(make(ref=False)).losses)


@pytest.mark.parametrize("path", sorted((CONF / "loss").glob("*.yaml")), ids=lambda p: p.name)
def test_loss_configs_build(path):
    cfg = yaml.safe_load(path.read_text())
    cfg.pop("defaults", None)
    loss = build_loss(**cfg)
    # a listwise loss reads its pairs as lists of 2 (tests/losses/test_listwise.py checks it equals their formula)
    assert torch.isfinite(loss(as_lists(make()) if is_listwise(cfg["name"]) else make()).losses).all()
    if path.stem != "mix":
        assert path.stem == cfg["name"] or path.stem == "bmc"
