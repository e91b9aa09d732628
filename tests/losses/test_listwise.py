"""Listwise losses (METHODS.md section 6) against hand-computed numbers and float64 references written out here
response by response (values and gradients), their K = 2 reductions, ties and lists of different K in one batch."""

from __future__ import annotations

import math

import pytest
import torch

from bmc.losses import RankedLogps, SequenceLogps, build_loss, is_listwise
from bmc.losses.listwise import lambda_weights

LN2, LN3 = math.log(2), math.log(3)


def lists(
    logps: list[list[float]],
    ref: list[list[float]] | None = None,
    ranks: list[list[int]] | None = None,
    scores: list[list[float]] | None = None,
    grad: bool = False,
) -> RankedLogps:
    """Lists of different lengths padded into (B, K) float64 tensors (padding filled with junk that must not
    matter)."""
    width = max(map(len, logps))

    def pad(rows: list[list], fill: float) -> list[list]:
        return [row + [fill] * (width - len(row)) for row in rows]

    t = torch.tensor(pad(logps, 123.0), dtype=torch.float64, requires_grad=grad)
    ranks = ranks or [list(range(len(row))) for row in logps]
    return RankedLogps(
        t,
        torch.ones_like(t).detach(),
        torch.tensor(pad(ranks, 0)),
        torch.tensor(pad([[True] * len(row) for row in logps], False)),
        None if ref is None else torch.tensor(pad(ref, -55.0), dtype=torch.float64),
        None if scores is None else torch.tensor(pad(scores, 77.0), dtype=torch.float64),
    )


# --- float64 references, one list at a time, straight from the formulas ---


def pl_reference(r: list, ranks: list[int]) -> torch.Tensor:
    """−Σ over responses outside the last tie block of [r_i − log Σ_{j: rank_j >= rank_i} exp(r_j)]."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(r)):
        if ranks[i] == max(ranks):
            continue
        total = total - (r[i] - torch.log(sum(torch.exp(r[j]) for j in range(len(r)) if ranks[j] >= ranks[i])))
    return total


def grades_reference(ranks: list[int]) -> list[float]:
    return [float(sum(other > mine for other in ranks)) for mine in ranks]


def lipo_reference(r: list, psi: list[float]) -> torch.Tensor:
    k = len(r)
    values = [float(x.detach()) for x in r]
    order = sorted(range(k), key=lambda i: (-values[i], i))  # by current r, ties by list order
    q = {i: order.index(i) + 1 for i in range(k)}
    total = torch.zeros((), dtype=torch.float64)
    for i in range(k):
        for j in range(k):
            if psi[i] > psi[j]:
                delta = abs(2 ** psi[i] - 2 ** psi[j]) * abs(1 / math.log(1 + q[i]) - 1 / math.log(1 + q[j]))
                total = total - delta * torch.nn.functional.logsigmoid(r[i] - r[j])
    return total


def infonca_reference(r: list, psi: list[float], alpha: float) -> torch.Tensor:
    weights = [math.exp(p / alpha) for p in psi]
    log_norm = torch.log(sum(torch.exp(x) for x in r))
    return -sum(w / sum(weights) * (x - log_norm) for w, x in zip(weights, r))


# a batch of 3 lists of K = 4, 2 and 3, one with a tie block
LP = [[-3.0, -5.0, -4.0, -9.0], [-2.0, -2.5], [-7.0, -6.0, -8.0]]
REF = [[-4.0, -4.5, -4.0, -7.0], [-2.5, -2.0], [-6.0, -6.5, -7.0]]
RANKS = [[0, 1, 1, 2], [0, 1], [0, 1, 2]]
BETA = 0.7


def references(name: str, batch: RankedLogps, hparams: dict) -> list[torch.Tensor]:
    out = []
    for b, (k_ranks, row_ref) in enumerate(zip(RANKS, REF)):
        r = [BETA * (batch.logps[b, i] - row_ref[i]) for i in range(len(k_ranks))]
        psi = grades_reference(k_ranks) if batch.scores is None else batch.scores[b, : len(k_ranks)].tolist()
        if name == "dpo_pl":
            out.append(pl_reference(r, k_ranks))
        elif name == "lipo":
            out.append(lipo_reference(r, psi))
        else:
            out.append(infonca_reference(r, psi, hparams["alpha"]))
    return out


CASES = [("dpo_pl", {}), ("lipo", {}), ("infonca", {"alpha": 0.5}), ("infonca", {"alpha": 2.0})]


# Plackett-Luce reads the ranking only; the others with grades from the ranking and with the data's scores
@pytest.mark.parametrize(
    ("name", "hparams", "scored"),
    [(name, hparams, scored) for name, hparams in CASES for scored in (False, True) if name != "dpo_pl" or not scored],
)
def test_values_and_gradients_match_float64_reference(name, hparams, scored):
    scores = [[3.0, 1.5, 1.5, 0.0], [2.0, 1.0], [0.5, 0.25, -1.0]] if scored else None
    batch = lists(LP, REF, RANKS, scores, grad=True)
    out = build_loss(name, beta=BETA, **hparams)(batch)
    assert out.losses.shape == (3,) and out.losses.dtype == torch.float64
    expected = torch.stack(references(name, batch, hparams))
    torch.testing.assert_close(out.losses, expected, rtol=1e-12, atol=1e-12)
    (got,) = torch.autograd.grad(out.losses.sum(), batch.logps)
    (want,) = torch.autograd.grad(expected.sum(), batch.logps)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (got[~batch.valid] == 0).all()  # padding gets no gradient
    # rewards: beta * r of each list's best and worst response
    torch.testing.assert_close(out.chosen_rewards, BETA * torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64))
    torch.testing.assert_close(out.rejected_rewards, BETA * torch.tensor([-2.0, -0.5, -1.0], dtype=torch.float64))


def test_hand_computed_values():
    # r = (1, 0.5, -1), no ties: −[(1 − log(e + e^.5 + e^-1)) + (0.5 − log(e^.5 + e^-1))]
    three = lists([[1.0, 0.5, -1.0]], [[0.0, 0.0, 0.0]])
    assert build_loss("dpo_pl", beta=1.0)(three).losses.item() == pytest.approx(0.7563701976, abs=1e-9)
    # first two tied (Breslow): both use the full risk set: −(1 + 0.5 − 2 log 4.7348825403)
    tied = lists([[1.0, 0.5, -1.0]], [[0.0, 0.0, 0.0]], [[0, 0, 1]])
    assert build_loss("dpo_pl", beta=1.0)(tied).losses.item() == pytest.approx(1.6099138393, abs=1e-9)
    # LiPO at step 0 (all r = 0, q = list order), grades (2, 1, 0): Δ12 = 2(1/ln2 − 1/ln3), Δ13 = 3(1/ln2 − 1/ln4),
    # Δ23 = 1(1/ln3 − 1/ln4); each pair's −log σ(0) = ln 2
    zero = lists([[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]])
    lipo = (2 * (1 / LN2 - 1 / LN3) + 3 * (1 / LN2 - 1 / math.log(4)) + (1 / LN3 - 1 / math.log(4))) * LN2
    assert build_loss("lipo")(zero).losses.item() == pytest.approx(lipo, abs=1e-12)
    # InfoNCA at r = 0: the cross-entropy to a uniform policy is log K whatever the targets
    assert build_loss("infonca")(zero).losses.item() == pytest.approx(math.log(3), abs=1e-12)


def test_one_tie_block_gives_no_pl_loss_and_no_lipo_pair():
    tied = lists([[1.0, -2.0, 0.3]], [[0.0, 0.0, 0.0]], [[0, 0, 0]])
    assert build_loss("dpo_pl")(tied).losses.item() == 0.0
    assert build_loss("lipo")(tied).losses.item() == 0.0
    # equal grades: InfoNCA's target is uniform
    r = 0.1 * torch.tensor([1.0, -2.0, 0.3], dtype=torch.float64)
    expected = -torch.log_softmax(r, 0).mean()
    assert build_loss("infonca")(tied).losses.item() == pytest.approx(expected.item(), abs=1e-12)


def test_varying_k_each_list_as_if_alone():
    batch = lists(LP, REF, RANKS)
    for name, hparams in CASES:
        together = build_loss(name, beta=BETA, **hparams)(batch).losses
        for b in range(3):
            alone = build_loss(name, beta=BETA, **hparams)(lists([LP[b]], [REF[b]], [RANKS[b]])).losses
            torch.testing.assert_close(together[b : b + 1], alone, rtol=1e-12, atol=1e-12)


# --- K = 2: the pairwise forms METHODS.md section 6 states ---

PAIRS_W, PAIRS_L = [-5.0, -12.0, -3.0], [-7.0, -9.0, -4.0]
REF_W, REF_L = [-6.0, -11.0, -3.5], [-6.5, -10.0, -3.0]


def pair_lists(scores: list[list[float]] | None = None) -> tuple[SequenceLogps, RankedLogps]:
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    pairs = SequenceLogps(t(PAIRS_W), t(PAIRS_L), t([1.0] * 3), t([1.0] * 3), t(REF_W), t(REF_L))
    ranked = lists([list(p) for p in zip(PAIRS_W, PAIRS_L)], [list(p) for p in zip(REF_W, REF_L)], scores=scores)
    return pairs, ranked


def test_k2_plackett_luce_is_dpo():
    pairs, ranked = pair_lists()
    torch.testing.assert_close(build_loss("dpo_pl", beta=0.3)(ranked).losses, build_loss("dpo", beta=0.3)(pairs).losses)


def test_k2_lipo_is_dpo_times_delta12():
    pairs, ranked = pair_lists()
    dpo = build_loss("dpo", beta=0.3)(pairs).losses
    torch.testing.assert_close(build_loss("lipo", beta=0.3)(ranked).losses, (1 / LN2 - 1 / LN3) * dpo)
    # with scores: Δ12 = |2^ψ1 − 2^ψ2|·(1/ln 2 − 1/ln 3) whichever response r ranks first
    pairs, ranked = pair_lists([[3.0, 1.0]] * 3)
    torch.testing.assert_close(build_loss("lipo", beta=0.3)(ranked).losses, 6 * (1 / LN2 - 1 / LN3) * dpo)


@pytest.mark.parametrize("alpha", [0.25, 1.0, 3.0])
def test_k2_infonca_is_label_smoothed_dpo(alpha):
    pairs, ranked = pair_lists()
    eps = 1 / (1 + math.exp(1 / alpha))  # σ(−(ψ1 − ψ2)/α), grades (1, 0) from the ranking
    r = torch.tensor(PAIRS_W, dtype=torch.float64) - torch.tensor(REF_W, dtype=torch.float64)
    r = r - (torch.tensor(PAIRS_L, dtype=torch.float64) - torch.tensor(REF_L, dtype=torch.float64))
    logsig = torch.nn.functional.logsigmoid
    expected = -(1 - eps) * logsig(0.3 * r) - eps * logsig(-0.3 * r)
    torch.testing.assert_close(build_loss("infonca", beta=0.3, alpha=alpha)(ranked).losses, expected)
    # α → 0: DPO
    torch.testing.assert_close(
        build_loss("infonca", beta=0.3, alpha=1e-3)(ranked).losses, build_loss("dpo", beta=0.3)(pairs).losses
    )


def test_lambda_weights_follow_current_ranks():
    # r ranks response 2 first: q = (2, 1, 3); grades (2, 1, 0)
    r = torch.tensor([[0.5, 0.9, -1.0]], dtype=torch.float64)
    grades = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    weights = lambda_weights(r, grades, torch.ones(1, 3, dtype=torch.bool))
    d = {1: 1 / LN2, 2: 1 / LN3, 3: 1 / math.log(4)}
    assert weights[0, 0, 1].item() == pytest.approx(2 * abs(d[2] - d[1]), abs=1e-12)
    assert weights[0, 0, 2].item() == pytest.approx(3 * abs(d[2] - d[3]), abs=1e-12)
    assert weights[0, 1, 2].item() == pytest.approx(1 * abs(d[1] - d[3]), abs=1e-12)


def test_registry_and_checks():
    assert all(is_listwise(name) for name in ("dpo_pl", "lipo", "infonca")) and not is_listwise("dpo")
    assert is_listwise("mix", components=[{"name": "dpo_pl"}, {"name": "lipo"}])
    with pytest.raises(ValueError, match="mixes listwise and pairwise"):
        is_listwise("mix", components=[{"name": "dpo_pl"}, {"name": "dpo"}])
    with pytest.raises(ValueError, match="alpha"):
        build_loss("infonca", alpha=0.0)
    with pytest.raises(ValueError, match="needs reference"):
        build_loss("dpo_pl")(lists([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="at least 2 responses"):
        lists([[1.0]], [[0.0]])
