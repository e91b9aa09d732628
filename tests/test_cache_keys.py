"""Stage caches are keyed by what a checkpoint holds, not by its path: a checkpoint rewritten in place (the next
round of an iterative experiment) gets new samples."""

from __future__ import annotations

from pathlib import Path

import torch

from bmc.models import TinyLlama
from bmc.synthesize import prepare_data


def _save_checkpoint(folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    texts = [f" What is {i} plus {i + 3}? The answer is {2 * i + 3}." for i in range(40)]
    model, tokenizer = TinyLlama(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300).build(
        texts
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_a_checkpoint_rewritten_in_place_invalidates_the_sample_cache(make_config, tmp_path: Path) -> None:
    checkpoint = tmp_path / "policy"
    _save_checkpoint(checkpoint, seed=0)
    overrides = ["debug=default", "model=hf", f"model.path={checkpoint}", "data=sampled", "data.sampler.backend=hf",
                 "data.sampler.max_new_tokens=6"]  # fmt: skip

    def sample_entries() -> int:
        return len([p for p in (tmp_path / "cache" / "samples").iterdir() if p.is_dir()])

    first = prepare_data(make_config(*overrides))
    assert sample_entries() == 1 and first.report["completions"] == 24 * 5
    assert prepare_data(make_config(*overrides)).pairs == first.pairs and sample_entries() == 1  # a cache hit
    _save_checkpoint(checkpoint, seed=1)  # the same path, other weights
    prepare_data(make_config(*overrides))
    assert sample_entries() == 2  # new samples from the new weights, not the old ones under the old path
