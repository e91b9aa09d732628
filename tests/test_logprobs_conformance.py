"""The conformance matrix (tests/conformance.py, docs/architectures.md): every family x attention x precision x
layout scores each response token as the model's own plain forward does, in log-probs and gradients, or falls
back to separate rows with one log line where no attention mask can describe the shared prompt."""

from __future__ import annotations

import logging

import pytest
import torch

from bmc.logprobs import response_token_logps, shared_prompt_token_logps
from bmc.scoring_check import verify_scoring
from tests import conformance
from tests.conformance import (
    ATTENTION,
    BATCHES,
    CHUNK,
    FAMILIES,
    LAYOUTS,
    LIST_TOLERANCE,
    PRECISIONS,
    TOLERANCE,
    WIDTH,
    WINDOW,
    own_forward_logps,
    pair_batch,
    tiny_model,
)


def _with_lora(model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    # init_lora_weights=False: random B as well as A, so the adapters change every forward; PEFT refuses adapters
    # on Mamba layers' out_proj (Falcon-H1)
    torch.manual_seed(1)
    mamba = ["out_proj"] if model.config.model_type == "falcon_h1" else None
    config = LoraConfig(r=4, target_modules="all-linear", exclude_modules=mamba, init_lora_weights=False)
    return get_peft_model(model, config).eval()


def _gap(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).detach().abs().max())


CELLS = [
    pytest.param(family, attention, precision, id=f"{family}-{attention}-{precision.replace(' ', '_')}")
    for family in FAMILIES
    for attention in ATTENTION[family]
    for precision in PRECISIONS
]


@pytest.mark.parametrize("family,attention,precision", CELLS)
def test_every_layout_scores_as_the_models_own_forward(
    family: str, attention: str, precision: str, caplog: pytest.LogCaptureFixture
) -> None:
    autocast = torch.autocast("cpu", PRECISIONS[precision] or torch.bfloat16, enabled=PRECISIONS[precision] is not None)
    models = {False: tiny_model(family, attention), True: _with_lora(tiny_model(family, attention))}
    expected = {}  # (LoRA, batch kind) -> the model's own log-probs, their gradients, the parameters

    def own(lora: bool, kind: str, batch: dict, weights: torch.Tensor) -> tuple:
        if (lora, kind) not in expected:
            params = [p for p in models[lora].parameters() if p.requires_grad]
            with autocast:
                logps = own_forward_logps(models[lora], batch)
            expected[lora, kind] = (logps, torch.autograd.grad((logps * weights).sum(), params), params)
        return expected[lora, kind]

    for layout, (share, chunked, lora, kind) in LAYOUTS.items():
        model, chunk, batch = models[lora], CHUNK if chunked else None, BATCHES[kind]()
        tolerance = (LIST_TOLERANCE if kind == "lists" else TOLERANCE)[precision]
        weights = torch.randn(batch["input_ids"].shape[0], WIDTH - 1, generator=torch.Generator().manual_seed(2))
        want, want_grads, params = own(lora, kind, batch, weights)
        status = conformance.expected(family, layout)
        if share:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="bmc.scoring_check"):
                assert verify_scoring(model, batch, chunk, share_prompt=True) == (status == "equal"), layout
            assert ("scored as separate rows" in caplog.text) == (status == "fallback"), layout
        score = shared_prompt_token_logps if share and status == "equal" else response_token_logps
        with autocast:
            logps, mask = score(model, batch, chunk)
        assert torch.equal(mask, batch["response_mask"][:, 1:])
        assert _gap(logps, want) <= tolerance, (layout, _gap(logps, want))
        grads = torch.autograd.grad((logps * weights).sum(), params)
        scale = max(float(g.abs().max()) for g in want_grads)
        worst = max(_gap(got, ref) for got, ref in zip(grads, want_grads))
        assert worst <= tolerance * max(scale, 1.0), (layout, worst, scale)


def test_docs_architectures_is_what_the_script_writes() -> None:
    from tests.conftest import ROOT

    assert (ROOT / "docs" / "architectures.md").read_text() == conformance.render(), (
        "docs/architectures.md is stale: run python -m tests.conformance"
    )


def _ignores_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect of b51deb9: the shared-prompt mask gives every layer full causal attention."""
    import bmc.attention

    monkeypatch.setattr(bmc.attention, "attention_windows", lambda model: {bmc.attention.FULL: None})


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_the_bf16_tolerance_catches_a_window_ignored_at_default_init(family: str, monkeypatch) -> None:
    """At transformers' own init scale (0.02) attention barely shapes log-probs, and a shared prompt that ignores
    the window is off by only about 0.05 nats on the tokens past the window: still above the bf16 tolerance."""
    model, batch = tiny_model(family, initializer_range=0.02), pair_batch()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        want = own_forward_logps(model, batch)
        assert _gap(shared_prompt_token_logps(model, batch)[0], want) <= TOLERANCE["bf16 autocast"]
        _ignores_windows(monkeypatch)
        assert _gap(shared_prompt_token_logps(model, batch)[0], want) >= 0.05 > TOLERANCE["bf16 autocast"]


def test_the_first_batch_check_refuses_an_ignored_window_on_a_batch_inside_the_window(monkeypatch) -> None:
    """A first batch whose rows all fit the window cannot show a window ignored: the check adds a pair longer than
    the window, built from the batch's tokens, and refuses the defect there."""
    model = tiny_model("mistral")
    ids = torch.tensor([[1, 9, 4, 5], [1, 9, 6, 0]])  # prompt [1, 9]; responses of 2 and 1 tokens
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(), "response_mask": torch.arange(4) >= 2}
    batch["response_mask"] = batch["response_mask"] & (ids > 0)
    assert int(batch["attention_mask"].sum(-1).max()) <= WINDOW
    assert verify_scoring(model, batch, share_prompt=True)
    _ignores_windows(monkeypatch)
    with pytest.raises(RuntimeError, match="share_prompt=true: MistralForCausalLM.*Run with share_prompt=false"):
        verify_scoring(model, batch, share_prompt=True)


def test_the_first_batch_check_refuses_a_chunked_head_that_misses_a_logit_scaling() -> None:
    """A family that rescales its logits in a way the chunked head does not know (here: times 3 after the head)
    stops the run with the setting that turns the chunked head off; the shared prompt alone still passes."""
    from transformers import LlamaForCausalLM

    class ScalesLogits(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3
            return out

    model, batch = tiny_model("llama"), pair_batch()
    scaled = ScalesLogits(model.config).eval()
    scaled.load_state_dict(model.state_dict())
    assert verify_scoring(scaled, batch, share_prompt=True)
    with pytest.raises(RuntimeError, match=r"logprob_chunk=3: the chunked LM head of ScalesLogits.*logprob_chunk=null"):
        verify_scoring(scaled, batch, chunk_positions=3, share_prompt=True)


def test_layer_kinds_and_windows_are_read_from_each_familys_config() -> None:
    """Released defaults: Qwen2 keeps its window off unless use_sliding_window; Mistral windows every layer;
    Gemma-2 alternates; Qwen2-MoE's window 0 is none; hybrids and flash-attention cannot share a prompt."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from bmc.attention import attention_windows, why_prompts_cannot_be_shared

    def of(model_type: str, **options: object) -> SimpleNamespace:
        return SimpleNamespace(config=AutoConfig.for_model(model_type, **options))

    assert attention_windows(of("qwen2", sliding_window=4096)) == {"full_attention": None}
    assert attention_windows(of("qwen2_moe")) == {"full_attention": None}
    assert attention_windows(of("mistral")) == {"sliding_attention": 4096}
    assert attention_windows(of("gemma2")) == {"full_attention": None, "sliding_attention": 4096}
    assert attention_windows(SimpleNamespace()) == {"full_attention": None}  # a double without a config
    assert all(why_prompts_cannot_be_shared(of(options["model_type"])) is None
               for family, (options, _) in FAMILIES.items() if family not in conformance.FALLBACKS)  # fmt: skip
    assert "no attention mask restricts" in why_prompts_cannot_be_shared(of("falcon_h1"))
    flash = of("llama")
    flash.config._attn_implementation = "flash_attention_2"
    assert "takes no 4D attention mask" in why_prompts_cannot_be_shared(flash)


def test_the_first_batch_check_scores_two_pairs_of_a_large_batch() -> None:
    """The check's reference is the model's full float32 logits: it scores the first two pairs of a batch, cut to
    their widest row, not the whole batch."""
    from bmc.scoring_check import CHECKED_PAIRS, _first_pairs

    batch = pair_batch()  # 3 pairs; the rows of the first two are 8, 7 (chosen) and 10, 8 (rejected) wide
    first = _first_pairs(batch, CHECKED_PAIRS)
    assert CHECKED_PAIRS == 2 and first["input_ids"].shape == (4, 10)
    assert torch.equal(first["input_ids"], batch["input_ids"][[0, 1, 3, 4]])
    assert _first_pairs(batch, 5)["input_ids"].shape == (6, 10)
    seen = []
    model = tiny_model("llama")
    model.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].shape[0]),
                                with_kwargs=True)  # fmt: skip
    assert verify_scoring(model, batch, share_prompt=True)
    assert seen == [4, 2]  # the model's own rows of two pairs, then their two packed rows
    # a windowed model: the pair longer than the window as well, though the batch has such rows (every rank of a
    # sharded run must run as many forwards)
    seen.clear()
    windowed = tiny_model("mistral")
    windowed.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].shape),
                                   with_kwargs=True)  # fmt: skip
    assert verify_scoring(windowed, batch, share_prompt=True)
    assert [shape[0] for shape in seen] == [4, 2, 2, 1] and seen[2][1] > WINDOW


def test_sharded_16_bit_weights_are_checked_in_their_dtype_with_the_16_bit_bound() -> None:
    """Parameters that are views into a flat buffer (FSDP1) or DTensors (FSDP2) belong to the sharding, so the check
    leaves them in bf16 and applies the bound measured for bf16 rounding; plain bf16 weights are cast to float32."""
    from bmc.scoring_check import FLOAT32_TOLERANCE, SIXTEEN_BIT_TOLERANCE, _float32

    model = tiny_model("llama").to(torch.bfloat16)
    with _float32(model) as tolerance:
        assert tolerance == FLOAT32_TOLERANCE and next(model.parameters()).dtype == torch.float32
    weight, flat = model.lm_head.weight, torch.zeros(model.lm_head.weight.numel() + 8, dtype=torch.bfloat16)
    flat[: weight.numel()] = weight.detach().flatten()
    weight.data = flat[: weight.numel()].view(weight.shape)  # a view into a larger buffer, as FSDP1 leaves them
    with _float32(model) as tolerance:
        assert tolerance == SIXTEEN_BIT_TOLERANCE and next(model.parameters()).dtype == torch.bfloat16
