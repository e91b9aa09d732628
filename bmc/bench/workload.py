"""The benchmark's workload: synthetic preference pairs of controlled length and tiny Llama checkpoints.

Pairs look like a pseudo-winning dataset: the rejected response is the chosen one with a few words changed,
so BMC's diff masks mark a realistic fraction of tokens. Lengths follow the issue: a prompt of about 30
tokens, responses of 30-60 tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from bmc.models import TinyLlama

#: model sizes: ``small`` and ``medium`` (about 0.5M and 4M parameters) are measured, ``smoke`` is for the test
SIZES: dict[str, dict[str, int]] = {
    "smoke": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "small": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 512},
    "medium": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024},
}
VOCAB_SIZE = 512


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
