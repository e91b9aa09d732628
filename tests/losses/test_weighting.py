"""BMC token weighting: exact weights on hand-made confidences and masks, detachment, and the delta limits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from bmc.losses import SequenceLogps, build_loss, build_token_weighting, weighted_score, weighting_stats

CONF = Path(__file__).resolve().parents[2] / "conf"

PROBS = torch.tensor([[0.5, 0.1, 0.9, 0.2], [0.5, 0.4, 1.0, 0.01]], dtype=torch.float64)
MASK = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])


def test_bmc_weights_exact():
    weights = build_token_weighting("bmc", delta=2.5).weights(PROBS.log(), MASK)
    expected = torch.tensor(
        [
            [1.0, 3.5, 1 + 1 / 0.9, 3.5],  # unmarked; 1/p = 10 capped at 2.5; 1/p = 1.11; 1/p = 5 capped
            [3.0, 3.5, 2.0, 1.0],  # 1/p = 2; 1/p = 2.5 = delta; p = 1 gives the floor 2; unmarked (p = 0.01)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=1e-12)


def test_bmc_accepts_bool_masks_and_inf_logps():
    logps = torch.tensor([[-math.inf, -math.inf, -0.5]])
    weights = build_token_weighting("bmc", delta=3.0).weights(logps, torch.tensor([[True, False, True]]))
    torch.testing.assert_close(weights, torch.tensor([[4.0, 1.0, 1 + math.exp(0.5)]]))


def test_weights_are_detached():
    logps = PROBS.log().requires_grad_(True)
    response = torch.ones_like(MASK)
    for name in ("uniform", "bmc", "fixed"):
        weights = build_token_weighting(name).weights(logps, MASK)
        assert not weights.requires_grad
        # No gradient through the weights: d S / d log p_t is exactly w_t.
        (grad,) = torch.autograd.grad(weighted_score(logps, weights, response).sum(), logps)
        torch.testing.assert_close(grad, weights)


def test_delta_below_one_is_fixed_weight():
    for delta in (0.3, 0.99):
        bmc = build_token_weighting("bmc", delta=delta).weights(PROBS.log(), MASK)
        fixed = build_token_weighting("fixed", delta=delta).weights(PROBS.log(), MASK)
        torch.testing.assert_close(bmc, 1 + delta * MASK.double())
        torch.testing.assert_close(bmc, fixed)


def test_fixed_and_uniform_weights():
    torch.testing.assert_close(
        build_token_weighting("fixed", delta=2.5).weights(PROBS.log(), MASK),
        torch.tensor([[1.0, 3.5, 3.5, 3.5], [3.5, 3.5, 3.5, 1.0]], dtype=torch.float64),
    )
    torch.testing.assert_close(
        build_token_weighting("uniform").weights(PROBS.log(), MASK), torch.ones(2, 4).double()
    )


def _bmc_dpo(weighting_name: str, **opts):
    """DPO on weighted scores of a 2-pair batch; returns the loss and the policy token-logp gradients."""
    gen = torch.Generator().manual_seed(0)
    # rows: chosen 0, chosen 1, rejected 0, rejected 1
    policy = (-3 * torch.rand(4, 5, generator=gen, dtype=torch.float64)).requires_grad_(True)
    ref = -torch.rand(4, 5, generator=gen, dtype=torch.float64) * 3
    masks = (torch.rand(4, 5, generator=gen) < 0.5).long()
    response = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    weighting = build_token_weighting(weighting_name, **opts)
    scores = weighted_score(policy, weighting.weights(policy, masks), response)
    ref_scores = weighted_score(ref, weighting.weights(ref, masks), response)  # ref_weights = "own"
    n = response.sum(-1)
    logps = SequenceLogps(scores[:2], scores[2:], n[:2], n[2:], ref_scores[:2], ref_scores[2:])
    loss = build_loss("dpo", beta=0.05)(logps).losses.mean()
    (grad,) = torch.autograd.grad(loss, policy)
    return loss, grad


def test_delta_zero_is_exactly_uniform_dpo():
    loss_bmc, grad_bmc = _bmc_dpo("bmc", delta=0.0)
    loss_uniform, grad_uniform = _bmc_dpo("uniform")
    assert torch.equal(loss_bmc, loss_uniform)
    assert torch.equal(grad_bmc, grad_uniform)
    loss_bmc, _ = _bmc_dpo("bmc", delta=2.5)
    assert not torch.equal(loss_bmc, loss_uniform)


def test_weighted_score_ignores_padding():
    logps = torch.tensor([[-1.0, -2.0, -math.inf], [-0.5, 0.0, 0.0]])
    weights = torch.tensor([[2.0, 1.0, 3.0], [1.0, 1.0, 1.0]])
    response = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(weighted_score(logps, weights, response), torch.tensor([-4.0, -0.5]))


def test_weighting_stats():
    weights = torch.tensor([[1.0, 3.0, 2.0, 9.0], [2.5, 1.0, 1.0, 1.0]])
    diff = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 0]])
    response = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # the weight-9 token is padding
    stats = weighting_stats(weights, diff, response)
    assert stats["mean_weight_marked"].item() == pytest.approx((3.0 + 2.0 + 2.5) / 3)
    assert stats["marked_fraction"].item() == pytest.approx(3 / 5)
    assert stats["mean_weight"].item() == pytest.approx((1.0 + 3.0 + 2.0 + 2.5 + 1.0) / 5)
    empty = weighting_stats(weights, torch.zeros_like(diff), response)
    assert empty["mean_weight_marked"].item() == 0.0 and empty["marked_fraction"].item() == 0.0


def test_confpo_keeps_the_tokens_below_their_response_mean_probability():
    response = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])
    weights = build_token_weighting("confpo").weights(PROBS.log(), torch.zeros_like(MASK), response)
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],  # prompt (p 0.5) never; response mean (0.1 + 0.9 + 0.2) / 3 = 0.4: keep 0.1, 0.2
            [1.0, 1.0, 0.0, 0.0],  # mean (0.5 + 0.4 + 1.0) / 3 = 0.633: keep 0.5, 0.4; padding (p 0.01) never
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(weights, expected, rtol=0, atol=0)
    # one token, or all tokens equally likely: none is below the mean, the response keeps nothing
    flat = torch.tensor([[0.3, 0.3, 0.3], [0.7, 1.0, 1.0]]).log()
    kept = build_token_weighting("confpo").weights(flat, torch.zeros(2, 3), torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert kept.sum() == 0
    assert build_token_weighting("confpo").ref_weights == "policy"
    with pytest.raises(ValueError, match="response mask"):
        build_token_weighting("confpo").weights(flat, torch.zeros(2, 3))


def test_dpo_with_confpo_scores_the_policy_selected_tokens_in_both_terms():
    """The step's DPO loss against -log sigma(beta (Delta over the tokens the policy keeps)), by hand: the
    reference term sums the reference's log-probs on the policy's selection (ref_weights=policy)."""
    from bmc.logprobs import response_token_logps
    from bmc.module import PreferenceModule
    from tests.conformance import pair_batch, tiny_model

    policy, batch = tiny_model("llama"), pair_batch()
    batch["diff_mask"] = torch.zeros_like(batch["response_mask"])
    shape = (batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    ref = -torch.rand(shape, generator=torch.Generator().manual_seed(0))
    batch["ref_token_logps"] = ref.masked_fill(~batch["response_mask"][:, 1:], 0.0)
    module = PreferenceModule(
        policy, None, loss={"name": "dpo", "beta": 0.5}, token_weighting={"name": "confpo"},
        regularizer={"name": "none"}, optim={},
    )  # fmt: skip
    logged = {}
    module.log_dict = lambda metrics, **kwargs: logged.update(metrics)
    loss = module._step(batch, "train")

    with torch.no_grad():
        logps, mask = response_token_logps(policy, batch)
    scores = []
    for row in range(6):
        tokens = mask[row].nonzero()[:, 0]
        p = logps[row, tokens].exp()
        kept = tokens[p < p.mean()]
        scores.append(float(logps[row, kept].sum() - batch["ref_token_logps"][row, kept].sum()))
    margins = [0.5 * (scores[i] - scores[i + 3]) for i in range(3)]
    want = sum(math.log1p(math.exp(-m)) for m in margins) / 3
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert 0 < logged["train/bmc/mean_weight"].item() < 1  # the fraction of response tokens kept


def test_ref_weights_option():
    assert build_token_weighting("bmc").ref_weights == "own"
    assert build_token_weighting("bmc", ref_weights="policy").ref_weights == "policy"
    assert build_token_weighting("uniform").ref_weights == "own"


def test_build_token_weighting_validation():
    with pytest.raises(ValueError, match=r"unknown token weighting 'nope'.*'bmc'"):
        build_token_weighting("nope")
    with pytest.raises(ValueError, match="ref_weights"):
        build_token_weighting("bmc", ref_weights="both")
    with pytest.raises(ValueError, match="delta"):
        build_token_weighting("bmc", delta=-1.0)
    with pytest.raises(ValueError, match=r"'fixed'.*\['ref_weights'\].*accepted: \['delta'\]"):
        build_token_weighting("fixed", ref_weights="own")
    with pytest.raises(ValueError, match="accepted: \\[\\]"):
        build_token_weighting("uniform", delta=1.0)


@pytest.mark.parametrize("path", sorted((CONF / "token_weighting").glob("*.yaml")), ids=lambda p: p.name)
def test_token_weighting_configs_build(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["name"] == path.stem
    build_token_weighting(**cfg)
