"""The Lightning modules: the preference module with shared prompts gives the plain loss, refuses a model that ignores
the packing and falls back to plain rows on flash attention."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.doubles.ignores_packing import IgnoresPacking
from tests.doubles.tiny_pair_batch import tiny_model_and_pair_batch


def test_module_with_shared_prompts_gives_the_plain_loss_and_refuses_a_model_that_ignores_them() -> None:
    import copy

    from bmc.module import PreferenceModule

    model, batch = tiny_model_and_pair_batch()
    objective = {"loss": {"name": "dpo", "beta": 0.1}, "token_weighting": {"name": "bmc", "delta": 2.5},
                 "regularizer": {"name": "none"}, "optim": {}}  # fmt: skip
    reference = copy.deepcopy(model)
    losses = {}
    for share in (False, True):
        module = PreferenceModule(model, reference, share_prompt=share, **objective)
        module.log_dict = lambda *args, **kwargs: None
        losses[share] = module._step(batch, "train")
    assert torch.allclose(losses[True], losses[False], atol=1e-6)

    sharp = copy.deepcopy(model)  # a random tiny model barely looks at its context: make attention count
    for layer in sharp.model.layers:
        layer.self_attn.v_proj.weight.data *= 10
        layer.self_attn.o_proj.weight.data *= 30
    sharp.lm_head.weight.data *= 20

    batch["ref_token_logps"] = torch.zeros(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    sharp_module = PreferenceModule(sharp, None, share_prompt=True, **objective)
    sharp_module.log_dict = lambda *args, **kwargs: None
    sharp_module._step(batch, "train")  # the same weights, packed properly: the check passes
    module = PreferenceModule(IgnoresPacking(sharp), None, share_prompt=True, **objective)
    with pytest.raises(RuntimeError, match="share_prompt=false"):
        module._step(batch, "train")


def test_a_flash_attention_model_with_shared_prompts_falls_back_to_plain_rows_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """flash-attention kernels take no 4D mask: the module scores such a model's pairs as separate rows (the
    same loss as share_prompt=false), says so once, and never calls the packed path or its first-batch check."""
    import logging

    import bmc.logprobs
    import bmc.module
    from bmc.module import PreferenceModule

    model, batch = tiny_model_and_pair_batch()
    objective = {"loss": {"name": "dpo", "beta": 0.1}, "token_weighting": {"name": "uniform"},
                 "regularizer": {"name": "none"}, "optim": {}}  # fmt: skip
    batch["ref_token_logps"] = torch.zeros(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    plain = PreferenceModule(model, None, share_prompt=False, **objective)
    plain.log_dict = lambda *args, **kwargs: None
    expected = plain._step(batch, "train")

    def packed(*args, **kwargs):
        raise AssertionError("the packed path needs a 4D mask")

    class OnFlashAttention(torch.nn.Module):  # the same weights; its config names the kernel (absent on CPU)
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.config = SimpleNamespace(_attn_implementation="flash_attention_2")

        def forward(self, **inputs) -> SimpleNamespace:
            return self.inner(**inputs)

    for owner in (bmc.module, bmc.logprobs):
        monkeypatch.setattr(owner, "shared_prompt_token_logps", packed)
    module = PreferenceModule(OnFlashAttention(), None, share_prompt=True, **objective)
    module.log_dict = lambda *args, **kwargs: None
    with caplog.at_level(logging.INFO, logger="bmc.scoring_check"):
        losses = [module._step(batch, "train") for _ in range(2)]
    assert all(torch.allclose(loss, expected) for loss in losses)
    notes = [r.getMessage() for r in caplog.records if "share_prompt" in r.getMessage()]
    assert len(notes) == 1 and "flash_attention_2" in notes[0] and "separate rows" in notes[0]
