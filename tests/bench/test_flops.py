"""FLOP counting against hand-computed numbers and the model's own weights, and the matmul peak of every weight
shape."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from bmc.bench.flops import Shapes, matmul_peak, pair_forward_flops, step_flops_per_pair

TOY = Shapes(hidden=4, layers=1, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)


def test_flops_of_a_pair_match_a_hand_count() -> None:
    # per token: 2 x (q,o: 2*4*2*2=32; k,v: 2*4*1*2=16; mlp: 3*4*8=96) = 288
    assert TOY.layer_flops_per_token() == 288
    assert TOY.attention_flops(1) == 16 and TOY.head_flops_per_token() == 80
    # prompt 2, chosen 1, rejected 3: keys 1+2 (prompt), 3 (chosen), 3+4+5 (rejected) = 18
    assert pair_forward_flops(TOY, 2, 1, 3) == 288 * 6 + 16 * 18 + 80 * 4 == 2336
    assert step_flops_per_pair(TOY, [(2, 1, 3)], reference_in_step=False) == 3 * 2336
    assert step_flops_per_pair(TOY, [(2, 1, 3), (2, 1, 3)], reference_in_step=True) == 4 * 2336


def test_flop_shapes_count_exactly_the_weights_of_the_model() -> None:
    config = LlamaConfig(
        hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, tie_word_embeddings=False,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    shapes = Shapes.from_config(config)
    layer_weights = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert shapes.layer_flops_per_token() == 2 * layer_weights
    assert shapes.head_flops_per_token() == 2 * model.lm_head.weight.numel()
    with pytest.raises(ValueError, match="gpt2"):
        Shapes.from_config(AutoConfig.for_model("gpt2"))


def test_matmul_peak_times_every_weight_shape() -> None:
    rates = matmul_peak(TOY, tokens=32, repeats=2)
    assert set(rates) == {"q/o projection", "k/v projection", "mlp up", "mlp down", "lm head", "peak"}
    assert rates["peak"] == max(v for k, v in rates.items() if k != "peak") > 0


