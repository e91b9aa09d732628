"""The benchmark's workload: deterministic pairs, the named configs' parameter counts, and realistic token lengths."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from bmc.bench.workload import (
    NAMED_CONFIGS,
    PROMPT_BOUNDS,
    RESPONSE_BOUNDS,
    make_pairs,
    realistic_pairs,
    write_named_model,
)
from bmc.models import load_tokenizer


def test_workload_pairs_are_deterministic_and_differ_in_a_few_words() -> None:
    pairs = make_pairs(50, seed=1)
    assert pairs == make_pairs(50, seed=1) and pairs != make_pairs(50, seed=2)
    for pair in pairs:
        chosen, rejected = pair["chosen"].split(), pair["rejected"].split()
        assert pair["prompt"].endswith("\nAnswer:") and len(chosen) == len(rejected)
        assert 0 < sum(a != b for a, b in zip(chosen, rejected)) < len(chosen)


def test_named_configs_have_the_published_parameter_counts(tmp_path: Path) -> None:
    for name, billions in (("llama-1b", 1.236), ("smollm2-135m", 0.1348)):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**NAMED_CONFIGS[name], tie_word_embeddings=True))
        assert math.isclose(sum(p.numel() for p in model.parameters()) / 1e9, billions, rel_tol=0.005)
    folder = write_named_model(tmp_path, "llama-smoke")
    assert AutoConfig.from_pretrained(folder).num_key_value_heads == 2 and load_tokenizer(folder).pad_token


def test_realistic_pairs_have_ultrafeedback_like_token_lengths(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(write_named_model(tmp_path, "llama-smoke"))
    pairs = realistic_pairs(200, tokenizer, seed=3)
    assert pairs == realistic_pairs(200, tokenizer, seed=3)

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompts = [tokens(p["prompt"]) for p in pairs]
    responses = [tokens(p[k]) for p in pairs for k in ("chosen", "rejected")]
    # a word's tokens are counted alone, so a text overshoots its drawn length by less than one word
    assert PROMPT_BOUNDS[0] - 2 <= min(prompts) and max(prompts) <= PROMPT_BOUNDS[1] + 12
    assert 170 < sum(prompts) / len(prompts) < 230 and max(prompts) > 350  # a long right tail
    assert RESPONSE_BOUNDS[0] <= min(responses) and max(responses) <= RESPONSE_BOUNDS[1] + 8
    assert 280 < sum(responses) / len(responses) < 320
    assert all(p["chosen"] != p["rejected"] for p in pairs)
