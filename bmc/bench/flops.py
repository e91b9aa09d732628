"""Model FLOPs of a preference-training step, counted from the model's config, and the peak the same machine
reaches on a dense matmul of the model's shapes: the two halves of model FLOPs utilisation (MFU).

The counting rule (docs/performance.md, "MFU"), the same for every implementation so that MFU ratios are
throughput ratios:
- one pair is computed once: its prompt once, each response attending to the prompt and to itself;
- a multiply-add is 2 FLOPs; per token and layer the q/k/v/o projections and the gated MLP (3 matrices) count
  ``2 x`` their weights; attention counts ``4 x heads x head_dim`` per query per key it attends to (QK^T and
  AV, causal: a token attends to itself and the tokens before it);
- the LM head counts ``2 x hidden x vocabulary`` at each position whose next-token log-prob enters the loss
  (the response tokens);
- a training step is 3 forward passes of the policy (the backward costs two) plus, with the reference in the
  step, one forward pass of the reference; recomputation (gradient checkpointing, a chunked LM head's
  backward) and padding are not counted, as in PaLM's definition of MFU.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

#: architectures whose layers are q/k/v/o projections and a gated (3-matrix) MLP
GATED_LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2")


@dataclass(frozen=True)
class Shapes:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> Shapes:
        if config.model_type not in GATED_LLAMA_LIKE:
            raise ValueError(
                f"FLOP counting knows the layers of {GATED_LLAMA_LIKE}, not model_type={config.model_type!r}"
            )
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
        )

    def layer_flops_per_token(self) -> int:
        """The projections and the MLP of every layer, for one token."""
        q_and_o = 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = 3 * self.hidden * self.intermediate
        return 2 * self.layers * (q_and_o + k_and_v + mlp)

    def attention_flops(self, keys: int) -> int:
        """QK^T and AV of every layer, summed over queries that attend to ``keys`` keys in total."""
        return 4 * self.layers * self.heads * self.head_dim * keys

    def head_flops_per_token(self) -> int:
        return 2 * self.hidden * self.vocab

    def matmul_shapes(self, tokens: int) -> dict[str, tuple[int, int, int]]:
        """(M, K, N) of each distinct weight matmul of a forward over ``tokens`` positions."""
        return {
            "q/o projection": (tokens, self.hidden, self.heads * self.head_dim),
            "k/v projection": (tokens, self.hidden, self.kv_heads * self.head_dim),
            "mlp up": (tokens, self.hidden, self.intermediate),
            "mlp down": (tokens, self.intermediate, self.hidden),
            "lm head": (tokens, self.hidden, self.vocab),
        }


def _causal_keys(start: int, length: int) -> int:
    """Keys attended by ``length`` consecutive queries that follow ``start`` earlier positions."""
    return length * start + length * (length + 1) // 2


def pair_forward_flops(shapes: Shapes, prompt: int, chosen: int, rejected: int) -> int:
    """One forward pass over a pair computed once (module docstring)."""
    keys = _causal_keys(0, prompt) + _causal_keys(prompt, chosen) + _causal_keys(prompt, rejected)
    return (
        shapes.layer_flops_per_token() * (prompt + chosen + rejected)
        + shapes.attention_flops(keys)
        + shapes.head_flops_per_token() * (chosen + rejected)
    )


def step_flops_per_pair(shapes: Shapes, lengths: list[tuple[int, int, int]], reference_in_step: bool) -> float:
    """Mean model FLOPs of a training step per pair of ``lengths`` ((prompt, chosen, rejected) tokens)."""
    forward = sum(pair_forward_flops(shapes, *pair) for pair in lengths) / len(lengths)
    return (3 + int(reference_in_step)) * forward


def _seconds(a: torch.Tensor, b: torch.Tensor, calls: int) -> float:
    """Wall time of ``calls`` back-to-back ``a @ b`` on ``a``'s device."""
    on_gpu = a.device.type != "cpu"
    if on_gpu:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        a @ b
    if on_gpu:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def matmul_peak(
    shapes: Shapes,
    tokens: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
    min_seconds: float = 0.05,
) -> dict[str, float]:
    """FLOP/s of dense matmuls of each of the model's weight shapes at ``tokens`` positions, on this device and
    dtype and the current torch threads, the median of ``repeats`` timings; ``peak`` is the highest shape's.

    Each timing runs enough back-to-back matmuls to last ``min_seconds``, and the median (not the best) is
    kept: on this 2-core CPU single bf16 calls of one shape read 490 to 2400 GFLOP/s, so the best of a few was
    an outlier. The machine itself still moves between runs, from about 800 to 2400 GFLOP/s in bf16
    (docs/performance.md, "bf16 on this CPU")."""
    rates = {}
    for name, (m, k, n) in shapes.matmul_shapes(tokens).items():
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        calls = max(1, math.ceil(min_seconds / _seconds(a, b, 1)))  # the first call also warms up
        rates[name] = statistics.median(calls * 2 * m * k * n / _seconds(a, b, calls) for _ in range(repeats))
    return {**rates, "peak": max(rates.values())}
