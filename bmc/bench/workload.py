"""The benchmark's workload: synthetic preference pairs of controlled length, tiny Llama checkpoints, and
random-weight models of real shapes.

Two kinds of pairs:
- toy pairs (``make_pairs``, for the ``smoke``/``small``/``medium`` sizes) look like a pseudo-winning dataset:
  the rejected response is the chosen one with a few words changed, so BMC's diff masks mark a realistic
  fraction of tokens; a prompt of about 30 tokens, responses of 30-60 tokens;
- real-size pairs (``realistic_pairs``, for ``--model``) have UltraFeedback-like lengths in the model's own
  tokens: the prompt log-normal around 200 tokens (median 180, 64-512, the long right tail of real
  instructions), chosen and rejected independently 200-400 tokens, as two different answers are.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import torch

from bmc.data.datamodule import PreferenceDataModule
from bmc.data.tokenize import Truncation
from bmc.models import TinyLlama

#: model sizes: ``small`` and ``medium`` (about 0.5M and 4M parameters) are measured, ``smoke`` is for the test
SIZES: dict[str, dict[str, int]] = {
    "smoke": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "small": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 512},
    "medium": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024},
}
VOCAB_SIZE = 512

#: random-weight models of real shapes, built from a config (``python -m bmc.bench --model llama-1b``):
#: ``llama-1b`` has Llama-3.2-1B's shapes (1.24B parameters, 128k vocabulary); ``smollm2-135m`` SmolLM2-135M's
#: (for a machine the real checkpoint cannot reach, such as a GPU lent without network); ``llama-smoke`` is a
#: few-MB model with the same structure (grouped-query attention, tied embeddings) for dry runs and tests. Their
#: tokenizer is a small BPE trained on the workload: token ids stay below its size, which does not change any
#: matmul (the LM head is as wide as the config's vocabulary).
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-1b": {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "rope_theta": 500000.0,
    },
    "smollm2-135m": {
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "rope_theta": 100000.0,
    },
    "llama-smoke": {
        "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 4096,
    },
}  # fmt: skip
#: UltraFeedback-like lengths in tokens: prompt log-normal (median, sigma, bounds), responses uniform
PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_BOUNDS = 180, 0.45, (64, 512)
RESPONSE_BOUNDS = (200, 400)
#: TRL's and model=hf's truncation limits, which a scaled workload stays within (nothing is truncated)
MAX_PROMPT_TOKENS, MAX_ROW_TOKENS = 512, 1024


def _words(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghiklmnoprstuvw"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 4))) for _ in range(n)]


def make_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` (prompt, chosen, rejected) text pairs; the rejected response differs from the chosen one in
    about 15% of its words."""
    rng = random.Random(seed)
    vocabulary = _words(rng, 160)
    pairs = []
    for _ in range(n):
        prompt = "Question: " + " ".join(rng.choices(vocabulary, k=rng.randint(15, 21))) + "\nAnswer:"
        chosen = rng.choices(vocabulary, k=rng.randint(21, 42))
        rejected = [rng.choice(vocabulary) if rng.random() < 0.15 else w for w in chosen]
        if rejected == chosen:
            rejected[-1] = rng.choice([w for w in vocabulary if w != chosen[-1]])
        pairs.append(
            {"prompt": prompt, "chosen": " " + " ".join(chosen) + ".", "rejected": " " + " ".join(rejected) + "."}
        )
    return pairs


def write_workload(folder: Path, n_pairs: int, sizes: list[str], seed: int = 0) -> dict[str, Any]:
    """Write ``pairs.jsonl`` and one checkpoint (model + tokenizer) per size under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = make_pairs(n_pairs, seed)
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    texts = [p[k] for p in pairs[:2000] for k in ("prompt", "chosen", "rejected")]
    checkpoints = {}
    for size in sizes:
        torch.manual_seed(seed)
        model, tokenizer = TinyLlama(**SIZES[size], vocab_size=VOCAB_SIZE).build(texts)
        model.save_pretrained(folder / size)
        tokenizer.save_pretrained(folder / size)
        checkpoints[size] = {"path": str(folder / size), "parameters": sum(p.numel() for p in model.parameters())}
    return {"pairs": str(folder / "pairs.jsonl"), "checkpoints": checkpoints}


def _text_of_length(rng: random.Random, vocabulary: list[str], costs: dict[str, int], tokens: int) -> str:
    """Words of ``vocabulary`` until their tokens (``costs``: tokens of " word") reach ``tokens``."""
    words, total = [], 0
    while total < tokens:
        word = rng.choice(vocabulary)
        words.append(word)
        total += costs[word]
    return " " + " ".join(words)


def realistic_pairs(n: int, tokenizer: Any, seed: int = 0, scale: float = 1.0) -> list[dict[str, str]]:
    """``n`` pairs with UltraFeedback-like lengths measured in ``tokenizer``'s tokens (module docstring), every
    length times ``scale`` (``--length-scale``: 2.1 gives rows of about 1024 tokens), within TRL's and
    model=hf's limits: prompts of at most 512 tokens, rows of at most 1024."""
    rng = random.Random(seed)
    vocabulary = _words(rng, 400)
    costs = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in vocabulary}
    low, high = PROMPT_BOUNDS
    pairs = []
    for _ in range(n):
        drawn = rng.lognormvariate(math.log(PROMPT_MEDIAN), PROMPT_SIGMA)
        prompt_tokens = min(MAX_PROMPT_TOKENS, round(scale * min(high, max(low, drawn))))
        longest = MAX_ROW_TOKENS - prompt_tokens - 8  # room for BOS, the terminator and a word's overshoot
        chosen, rejected = (min(longest, round(scale * rng.randint(*RESPONSE_BOUNDS))) for _ in range(2))
        pairs.append(
            {
                "prompt": "Question:" + _text_of_length(rng, vocabulary, costs, prompt_tokens - 4) + "\nAnswer:",
                "chosen": _text_of_length(rng, vocabulary, costs, chosen),
                "rejected": _text_of_length(rng, vocabulary, costs, rejected),
            }
        )
    return pairs


def realistic_datamodule(n: int, tokenizer: Any, scale: float = 1.0, batch_size: int = 4) -> PreferenceDataModule:
    """:func:`realistic_pairs` tokenized and truncated as ``model=hf`` does (1024 / 512), set up for fitting: the
    ``n`` pairs are its ``train`` split, one more pair its validation split (which setup needs)."""
    pairs = realistic_pairs(n + 1, tokenizer, scale=scale)
    datamodule = PreferenceDataModule(
        train=pairs[:-1],
        val=pairs[-1:],
        tokenizer=tokenizer,
        truncation=Truncation(MAX_ROW_TOKENS, MAX_PROMPT_TOKENS),
        batch_size=batch_size,
    )
    datamodule.setup("fit")
    return datamodule


def write_named_model(folder: Path, name: str, seed: int = 0) -> Path:
    """A random-weight ``NAMED_CONFIGS[name]`` model and the workload tokenizer, saved under ``folder / name``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(seed)
    tokenizer = TinyLlama(vocab_size=VOCAB_SIZE).tokenizer([" ".join(_words(rng, 200)) for _ in range(50)])
    config = LlamaConfig(
        **NAMED_CONFIGS[name],
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder / name)
    tokenizer.save_pretrained(folder / name)
    return folder / name
