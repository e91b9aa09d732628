"""Per-token log-probs on tiny random configs of the architectures users train (Llama, Qwen2, Mistral, Gemma-2,
GPT-2), under eager and sdpa attention: the shared-prompt packing and the chunked LM head give the plain
full-logits log-probs and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from bmc.logprobs import response_token_logps, shared_prompt_token_logps

VOCAB = 96
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
         "num_hidden_layers": 2, "max_position_embeddings": 64}  # fmt: skip
CONFIGS = {
    "llama": {"model_type": "llama", **SMALL, "num_key_value_heads": 2},
    "qwen2": {"model_type": "qwen2", **SMALL, "num_key_value_heads": 2},
    "mistral": {"model_type": "mistral", **SMALL, "num_key_value_heads": 2, "sliding_window": None},
    "gemma2": {
        "model_type": "gemma2",
        **SMALL,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "sliding_window": 64,
        "final_logit_softcapping": 30.0,
    },  # fmt: skip
    "gpt2": {"model_type": "gpt2", "vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
}


def _model(kind: str, attention: str) -> torch.nn.Module:
    from transformers import AutoConfig

    options = dict(CONFIGS[kind])
    config = AutoConfig.for_model(options.pop("model_type"), **options)
    torch.manual_seed(0)
    # eval mode: GPT-2 has dropout, which would make any two forwards differ (gradients flow all the same)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention).float().eval()


def _batch() -> dict[str, torch.Tensor]:
    """Two pairs: prompts of 3 and 5 tokens, responses of different lengths, right-padded with id 0."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, VOCAB, (3,), generator=g).tolist(), torch.randint(1, VOCAB, (5,), generator=g).tolist()]
    responses = [[4, 7, 9, 2], [5, 6], [8, 3], [11, 12, 13, 14, 15]]  # chosen 1, chosen 2, rejected 1, rejected 2
    rows = [prompts[i % 2] + r for i, r in enumerate(responses)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(4, width, dtype=torch.long)
    attention, response = torch.zeros(4, width, dtype=torch.bool), torch.zeros(4, width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = True
        response[i, len(prompts[i % 2]) : len(row)] = True
    return {"input_ids": ids, "attention_mask": attention.long(), "response_mask": response}


# Gemma-2 offers eager attention only (transformers refuses sdpa for it)
CASES = [(kind, attention) for kind in sorted(CONFIGS) for attention in ("eager", "sdpa")]
CASES.remove(("gemma2", "sdpa"))


@pytest.mark.parametrize("kind,attention", CASES)
def test_shared_prompt_and_chunked_head_equal_the_plain_log_probs_and_gradients(kind: str, attention: str) -> None:
    model, batch = _model(kind, attention), _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    plain, mask = response_token_logps(model, batch)
    weights = torch.randn(plain.shape, generator=torch.Generator().manual_seed(2))
    expected = torch.autograd.grad((plain * weights).sum(), params)
    for name, compute in (
        ("shared prompt", lambda: shared_prompt_token_logps(model, batch)),
        ("chunked head", lambda: response_token_logps(model, batch, chunk_positions=3)),
        ("both", lambda: shared_prompt_token_logps(model, batch, chunk_positions=3)),
    ):
        logps, got_mask = compute()
        assert torch.equal(got_mask, mask), name
        assert torch.allclose(logps, plain, atol=1e-5), (name, (logps - plain).abs().max())
        grads = torch.autograd.grad((logps * weights).sum(), params)
        for want, got in zip(expected, grads):
            assert torch.allclose(got, want, atol=1e-5), (name, (got - want).abs().max())


_PEAK_SCRIPT = """
import resource, sys, torch
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
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
logps, _ = response_token_logps(model, batch, chunk_positions=chunk)
logps.sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


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

    eager, compiled, batch = _model(kind, "sdpa"), _model(kind, "sdpa"), _batch()
    keys = list(compiled.state_dict())
    assert compile_decoder_layers(compiled, backend="aot_eager") == SMALL["num_hidden_layers"]
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

    model = _model("llama", "sdpa")
    model._no_split_modules = None
    with pytest.raises(ValueError, match="no decoder layer class.*compile.enabled=false"):
        compile_decoder_layers(model)
