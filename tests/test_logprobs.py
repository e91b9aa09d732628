"""Per-token log-probs: the log-softmax gather, prompt and padding tokens that never contribute, and the shared-prompt
layout that equals the plain one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bmc.data.datamodule import pad_sequences
from bmc.logprobs import response_token_logps, token_logps
from tests.doubles.tiny_pair_batch import tiny_model_and_pair_batch


def test_token_logps_equals_log_softmax_gather() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 11)
    labels = torch.randint(0, 11, (5, 7))
    expected = torch.log_softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logps(logits, labels, chunk_rows=2).double(), expected, atol=1e-5)


def test_token_logps_gradient_and_bf16_match_the_plain_computation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 50, dtype=torch.double)
    labels = torch.randint(0, 50, (4, 6))
    weights = torch.randn(4, 6, dtype=torch.double)
    plain = logits.clone().requires_grad_(True)
    (torch.log_softmax(plain, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1) * weights).sum().backward()
    fast = logits.float().requires_grad_(True)
    out = token_logps(fast, labels)
    assert out.dtype == torch.float32
    (out * weights.float()).sum().backward()
    assert torch.allclose(fast.grad.double(), plain.grad, atol=1e-5)
    low = token_logps(logits.bfloat16(), labels, chunk_rows=3)  # bf16 logits, float32 result
    expected = torch.log_softmax(logits.bfloat16().double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert low.dtype == torch.float32 and torch.allclose(low.double(), expected, atol=1e-5)


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool) -> SimpleNamespace:
        assert use_cache is False  # scoring never fills a KV cache
        return SimpleNamespace(logits=self.logits)


def test_prompt_and_padding_tokens_never_contribute() -> None:
    batch = pad_sequences([[1, 2, 3]], [[4, 5]], pad_id=0)
    batch = {k: torch.cat([v, torch.zeros_like(v[:, :1])], 1) for k, v in batch.items()}  # one padding column
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 8)
    logps, mask = response_token_logps(_FixedLogits(logits), batch)
    # positions 2 and 3 predict the response tokens 4 and 5; nothing else counts
    assert mask.int().tolist() == [[0, 0, 1, 1, 0]]
    log_probs = torch.log_softmax(logits, -1)
    assert torch.allclose(logps[0, 2:4], torch.stack([log_probs[0, 2, 4], log_probs[0, 3, 5]]))
    assert logps[0, [0, 1, 4]].abs().sum() == 0
    changed = logits.clone()
    changed[0, [0, 1, 4, 5]] += 100 * torch.randn(4, 8)  # positions predicting prompt or padding
    again, _ = response_token_logps(_FixedLogits(changed), batch)
    assert torch.equal(again, logps)


def test_shared_prompt_log_probs_and_gradients_equal_the_plain_ones() -> None:
    from bmc.logprobs import shared_prompt_token_logps

    model, batch = tiny_model_and_pair_batch()
    plain, mask = response_token_logps(model, batch)
    shared, shared_mask = shared_prompt_token_logps(model, batch)
    assert torch.equal(mask, shared_mask) and shared[~mask].abs().sum() == 0
    assert torch.allclose(shared, plain, atol=1e-5), (shared - plain).abs().max()
    weights = torch.randn_like(plain)
    params = [p for p in model.parameters() if p.requires_grad]
    plain_grads = torch.autograd.grad((plain * weights).sum(), params)
    shared_grads = torch.autograd.grad((shared_prompt_token_logps(model, batch)[0] * weights).sum(), params)
    for expected, got in zip(plain_grads, shared_grads):
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()

    mixed = {k: v.clone() for k, v in batch.items()}
    mixed["input_ids"][3, 0] = mixed["input_ids"][3, 0] + 1  # the first rejected row's prompt differs
    with pytest.raises(ValueError, match="same non-empty prompt"):
        shared_prompt_token_logps(model, mixed)
