"""The reward model's LightningModule (bmc/reward_module.py): its Bradley-Terry loss by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bmc.reward_module import RewardModule


def test_reward_module_bradley_terry_loss_by_hand() -> None:
    class FixedScores(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
            # rows: chosen 1, chosen 2, rejected 1, rejected 2 -> margins 1.0 and -1.0
            return SimpleNamespace(logits=torch.tensor([[1.0], [0.5], [0.0], [1.5]]))

    module = RewardModule(FixedScores(), {"lr": 1e-3})
    batch = {"input_ids": torch.zeros(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3)}
    loss = module._step(batch, "val")
    # -log sigmoid(1) = 0.31326169, -log sigmoid(-1) = 1.31326169
    assert loss.item() == pytest.approx((0.31326169 + 1.31326169) / 2, abs=1e-6)
