"""Cache keys of checkpoints: a checkpoint or pretrained base rewritten in place gets a new key, and a Hub id is keyed
by the commit its revision resolves to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bmc.cache import checkpoint_fingerprint
from bmc.models import PretrainedLM, TinyLlama
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


def test_a_pretrained_base_rewritten_in_place_is_fine_tuned_anew(make_config, tmp_path: Path) -> None:
    checkpoint = tmp_path / "base"
    _save_checkpoint(checkpoint, seed=0)
    overrides = ["debug=default", "model=hf", f"model.path={checkpoint}", "sft.enabled=true", "data=sampled",
                 "data.sampler.backend=hf", "data.sampler.max_new_tokens=6"]  # fmt: skip

    def sft_entries() -> int:
        return len(list((tmp_path / "cache" / "sft").glob("*/_COMPLETE")))

    prepare_data(make_config(*overrides))
    prepare_data(make_config(*overrides))
    assert sft_entries() == 1  # a cache hit
    _save_checkpoint(checkpoint, seed=1)  # the same path, other weights
    prepare_data(make_config(*overrides))
    assert sft_entries() == 2  # the new base is fine-tuned, not the SFT of the old one reused
    assert PretrainedLM(str(checkpoint)).spec()["weights"] == checkpoint_fingerprint(checkpoint)


def test_a_hub_id_is_keyed_by_the_commit_its_revision_resolves_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, a hub id resolves through the local Hugging Face cache (refs/<branch> -> snapshots/<commit>): the
    key names that commit, moves when the branch does, and a pinned commit keys by itself. A hub id that resolves
    nowhere is an error naming it, not a key made of the name alone."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--policy"
    old, new = "a" * 40, "b" * 40
    for commit in (old, new):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(old)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    assert checkpoint_fingerprint("org/policy") == {"hub": "org/policy", "commit": old}
    (repo / "refs" / "main").write_text(new)  # the branch moved: a pushed repo is a new key
    assert checkpoint_fingerprint("org/policy") == {"hub": "org/policy", "commit": new}
    assert checkpoint_fingerprint("org/policy", revision=old)["commit"] == old
    with pytest.raises(ValueError, match=r"'org/absent' \(revision main\) is not a local folder"):
        checkpoint_fingerprint("org/absent")
    # neither a folder nor a hub id (a path on another machine): nothing to read; whatever loads it reports it
    assert checkpoint_fingerprint("/ckpts/missing") == {"path": "/ckpts/missing"}
