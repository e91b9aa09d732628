"""What the conformance matrix (test_conformance.py) does not cover: the chunked LM head's memory, and compiled
decoder layers."""

from __future__ import annotations

import pytest
import torch

from bmc.logprobs import shared_prompt_token_logps
from tests.conformance import FAMILIES, pair_batch, tiny_model

_PEAK_SCRIPT = """
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from bmc.logprobs import response_token_logps
vocab, rows, width = 49152, 4, 256
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=4))
batch = {"input_ids": torch.randint(0, vocab, (rows, width)),
         "attention_mask": torch.ones(rows, width, dtype=torch.long),
         "response_mask": torch.ones(rows, width, dtype=torch.bool)}
chunk = None if sys.argv[1] == "none" else int(sys.argv[1])
def status_mb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith(field + ":"))
try:  # the high-water mark restarts from the current resident size
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
except OSError:  # not allowed here: VmHWM is still this process's own (exec starts it afresh), imports included
    pass
before = status_mb("VmRSS")
logps, _ = response_token_logps(model, batch, chunk_positions=chunk)
logps.sum().backward()
print(status_mb("VmHWM") - before)
"""

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a large pytest
# process starts at the parent's peak and its own growth reads as 0.
# glibc raises its mmap threshold after large frees, and then keeps freed chunks in the heap: a fixed threshold
# returns every large buffer to the system when freed, so the peak resident size is the peak of live tensors
_ENV = {"OMP_NUM_THREADS": "1", "PATH": "", "MALLOC_MMAP_THRESHOLD_": "65536"}


def test_chunked_head_never_builds_the_full_logits() -> None:
    """Peak memory of the log-probs and their backward at a 49k vocabulary (4 x 256 tokens), each in a fresh
    process: the plain path holds full float32 logits (192 MB a copy), the chunked head 128 positions of them."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    def growth_mb(chunk: str) -> float:
        out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, chunk], capture_output=True, text=True, cwd=ROOT,
                             env=_ENV, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return float(out.stdout.split()[-1])

    full_logits_mb = 4 * 256 * 49152 * 4 / 2**20
    full, chunked = growth_mb("none"), growth_mb("128")
    assert full > 2 * full_logits_mb, full  # logits, their log-softmax and its gradient
    assert chunked < full_logits_mb, (chunked, full)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_compiled_decoder_layers_give_the_eager_log_probs_and_gradients(kind: str) -> None:
    """Regional compilation (aot_eager: Dynamo and AOT autograd, without generating code) of every decoder layer,
    in place: the shared-prompt log-probs and gradients equal the eager ones, and the state-dict keys stay."""
    from bmc.models import compile_decoder_layers

    eager, compiled, batch = tiny_model(kind), tiny_model(kind), pair_batch()
    keys = list(compiled.state_dict())
    assert compile_decoder_layers(compiled, backend="aot_eager") == FAMILIES[kind][0]["num_hidden_layers"]
    assert list(compiled.state_dict()) == keys
    weights = torch.randn(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    results = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        logps, _ = shared_prompt_token_logps(model, batch, chunk_positions=3)
        results[name] = (logps, torch.autograd.grad((logps * weights).sum(), list(model.parameters())))
    assert torch.allclose(results["compiled"][0], results["eager"][0], atol=1e-5)
    for want, got in zip(results["eager"][1], results["compiled"][1]):
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_compiling_a_model_without_named_decoder_layers_is_refused() -> None:
    from bmc.models import compile_decoder_layers

    model = tiny_model("llama")
    model._no_split_modules = None
    with pytest.raises(ValueError, match="no decoder layer class.*compile.enabled=false"):
        compile_decoder_layers(model)
