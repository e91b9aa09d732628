"""The listwise LightningModule: at K = 2 it is the pairwise module (with BMC token weighting too), regularizers
act on each list's best and worst response, and a module refuses a loss of the other kind."""

from __future__ import annotations

import copy

import pytest
import torch

from bmc.data.datamodule import PreferenceDataModule
from bmc.data.lists import ListDataModule
from bmc.data.tokenize import Truncation
from bmc.listwise_module import ListwisePreferenceModule
from bmc.losses import build_loss
from bmc.losses.ranked_logps import RankedLogps
from bmc.models import TinyLlama
from bmc.module import PreferenceModule
from bmc.row_scores import RowScores

TEXTS = ["Q: what is 12 plus 30?\nAnswer: The answer is 42, I think.", "It is 7. The answer is 41."] * 10
LISTS = [
    {"prompt": "Q: what is 12 plus 30?\nAnswer:", "responses": [" The answer is 42.", " The answer is 41, I think."],
     "ranks": [0, 1]},
    {"prompt": "Q: 1 plus 6?\nAnswer:", "responses": [" It is 7.", " It is 41.", " The answer is 12."],
     "ranks": [0, 1, 1]},
]  # fmt: skip


def model_and_tokenizer():
    torch.manual_seed(0)
    return TinyLlama(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=300).build(TEXTS)


def objective(loss: dict, weighting: str = "bmc", regularizer: dict | None = None) -> dict:
    weights = {"name": "bmc", "delta": 2.5} if weighting == "bmc" else {"name": weighting}
    return {"loss": loss, "token_weighting": weights,
            "regularizer": regularizer or {"name": "none"}, "optim": {}}  # fmt: skip


def quiet(module):
    module.log_dict = lambda *args, **kwargs: None
    return module


def batch_of(dm_class, rows, tokenizer):
    dm = dm_class(train=rows, val=rows, tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=len(rows))
    dm.setup()
    return dm.collate([dm.datasets["train"][i] for i in range(len(rows))])


@pytest.mark.parametrize("regularizer", [{"name": "none"}, {"name": "nll", "alpha": 0.5}, {"name": "dpop", "lam": 3.0}])
def test_at_k2_the_listwise_module_is_the_pairwise_one_with_bmc_weights(regularizer) -> None:
    model, tokenizer = model_and_tokenizer()
    reference = copy.deepcopy(model)
    for p in reference.parameters():  # a reference that differs, so that r != 0
        p.data += 0.05 * torch.randn_like(p)
    pairs = [{"prompt": r["prompt"], "chosen": r["responses"][0], "rejected": r["responses"][-1]} for r in LISTS]
    two = [dict(r, responses=[r["responses"][0], r["responses"][-1]], ranks=[0, 1]) for r in LISTS]
    pair_objective = objective({"name": "dpo", "beta": 0.5}, regularizer=regularizer)
    list_objective = objective({"name": "dpo_pl", "beta": 0.5}, regularizer=regularizer)
    pair_module = quiet(PreferenceModule(model, reference, **pair_objective))
    list_module = quiet(ListwisePreferenceModule(model, reference, **list_objective))
    expected = pair_module._step(batch_of(PreferenceDataModule, pairs, tokenizer), "train")
    got = list_module._step(batch_of(ListDataModule, two, tokenizer), "train")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert got.item() != pytest.approx(0.6931, abs=1e-3)  # not the step-0 value: the reference differs


def test_regularizers_act_on_each_lists_best_and_worst() -> None:
    model, _ = model_and_tokenizer()
    batch = {"list_index": torch.tensor([0, 0, 1, 1, 1]), "ranks": torch.tensor([0, 1, 0, 1, 1])}
    lp = torch.tensor([-4.0, -6.0, -3.0, -5.0, -7.0])
    ref = torch.tensor([-3.0, -6.5, -3.5, -5.0, -6.0])
    lengths = torch.tensor([2.0, 3.0, 1.0, 4.0, 5.0])
    rows = RowScores(lp, lp, lengths, torch.ones(5, 1), torch.zeros(5, 1), torch.ones(5, 1), ref, ref)

    module = ListwisePreferenceModule(model, None, **objective({"name": "dpo_pl", "beta": 1.0}, "uniform",
                                                               {"name": "dpop", "lam": 2.0}))  # fmt: skip
    out, unweighted = module._loss(batch, rows)
    # dpop lowers the best response's score by lam * max(0, ref - lp): list 0 by 2 * 1 = 2, list 1 by 0
    lowered = torch.tensor([[-6.0, -6.0, 0.0], [-3.0, -5.0, -7.0]])
    lists = RankedLogps(lowered, torch.ones(2, 3), torch.tensor([[0, 1, 0], [0, 1, 1]]),
                        torch.tensor([[True, True, False], [True, True, True]]),
                        torch.tensor([[-3.0, -6.5, 0.0], [-3.5, -5.0, -6.0]]))  # fmt: skip
    torch.testing.assert_close(out.losses, build_loss("dpo_pl", beta=1.0)(lists).losses)
    assert unweighted.chosen.tolist() == [-4.0, -3.0] and unweighted.rejected.tolist() == [-6.0, -7.0]
    assert unweighted.chosen_tokens.tolist() == [2.0, 1.0] and unweighted.rejected_tokens.tolist() == [3.0, 5.0]
    # nll: alpha * (-lp_best / n_best) per list
    nll_objective = objective({"name": "dpo_pl"}, "uniform", {"name": "nll", "alpha": 1.0})
    nll = ListwisePreferenceModule(model, None, **nll_objective)
    assert nll.regularizer.penalty(nll._loss(batch, rows)[1]).tolist() == [2.0, 3.0]


def test_a_module_refuses_a_loss_of_the_other_kind() -> None:
    model, _ = model_and_tokenizer()
    with pytest.raises(ValueError, match="PreferenceModule trains on pairs: it cannot train loss 'lipo'"):
        PreferenceModule(model, None, **objective({"name": "lipo"}))
    with pytest.raises(ValueError, match="trains on ranked lists: it cannot train loss 'dpo'"):
        ListwisePreferenceModule(model, None, **objective({"name": "dpo"}))
