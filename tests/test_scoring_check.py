"""The first-batch check of the shared-prompt layout: it computes in float32 and restores 16-bit weights exactly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.doubles.ignores_packing import IgnoresPacking
from tests.doubles.tiny_pair_batch import tiny_model_and_pair_batch


def test_the_shared_prompt_check_computes_in_float32_and_restores_16_bit_weights_exactly() -> None:
    import copy

    from bmc.scoring_check import verify_scoring

    model, batch = tiny_model_and_pair_batch()
    seen = []

    class RecordsPrecision(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **inputs) -> SimpleNamespace:
            seen.append((torch.is_autocast_enabled("cpu"), next(self.inner.parameters()).dtype))
            return self.inner(**inputs)

    with torch.autocast("cpu", torch.bfloat16):  # as under trainer.precision=bf16-mixed
        assert verify_scoring(RecordsPrecision(model), batch, share_prompt=True)
    assert seen == [(False, torch.float32)] * 2  # the model's own rows, then the shared layout

    bf16 = copy.deepcopy(model).to(torch.bfloat16)  # model.dtype=bfloat16 or bf16-true
    before = {name: p.clone() for name, p in bf16.named_parameters()}
    seen.clear()
    assert verify_scoring(RecordsPrecision(bf16), batch, share_prompt=True)
    assert seen == [(False, torch.float32)] * 2
    assert verify_scoring(bf16, batch, chunk_positions=2, share_prompt=True)
    assert all(p.dtype == torch.bfloat16 and torch.equal(p, before[name]) for name, p in bf16.named_parameters())
    for layer in bf16.model.layers:  # make attention count, as in the test above
        layer.self_attn.v_proj.weight.data *= 10
        layer.self_attn.o_proj.weight.data *= 30
    bf16.lm_head.weight.data *= 20
    with pytest.raises(RuntimeError, match=r"above 0\.0001\).*share_prompt=false"):
        verify_scoring(IgnoresPacking(bf16), batch, share_prompt=True)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())  # restored after a refusal too
