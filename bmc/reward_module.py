"""The LightningModule of the scalar reward model (stage 2, ``judge=tiny_rm``)."""

from __future__ import annotations

import torch

from bmc.module import CausalLMModule


class RewardModule(CausalLMModule):
    """A scalar reward model trained with the Bradley-Terry loss ``-log sigmoid(r(x, y_w) - r(x, y_l))``
    (Ouyang et al., 2022) on preference batches (chosen rows, then rejected rows); logs pairwise accuracy."""

    best_metrics = {"val/loss": "min", "val/accuracy": "max"}

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        rewards = self.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        n_pairs = rewards.shape[0] // 2
        margins = rewards[:n_pairs] - rewards[n_pairs:]
        loss = -torch.nn.functional.logsigmoid(margins).mean()
        metrics = {"loss": loss, "accuracy": (margins > 0).float().mean(), "margin": margins.mean()}
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, batch_size=n_pairs, prog_bar=stage == "val")
        return loss
