"""trainer=fsdp2 with model=hf on two CPU processes (gloo), fully fine-tuned and with LoRA: the chunked LM head
(model=hf's logprob_chunk), which calls the decoder stack and the head apart, runs on the sharded policy, and
the training metrics and the export agree with one process on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bmc.models import TinyLlama
from tests.conftest import run_sharded_and_single


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-layer Llama (two shard units) and its tokenizer, saved as a pretrained checkpoint."""
    texts = [f"What is {i} plus {i + 3}? {i} + {i + 3} = {2 * i + 3}. The answer is {2 * i + 3}." for i in range(40)]
    source = TinyLlama(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=300)
    # the same starting weights in every session: unseeded, the largest weight gap to one process after 6 AdamW
    # steps at lr 1e-2 ranged 4e-6 to 3e-5 over random inits (the two ranks' gradient halves sum in another order,
    # and AdamW's normalisation scales that rounding up), so the test passed or failed by chance; these give 9.0e-6
    torch.manual_seed(0)
    model, tokenizer = source.build(texts)
    folder = tmp_path_factory.mktemp("start")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("lora", [None, "{r: 4, lora_alpha: 8, target_modules: all-linear}"])
def test_model_hf_on_two_sharded_ranks_matches_one_process(lora: str | None, checkpoint: Path, tmp_path: Path) -> None:
    """Batch 2 on each of 2 ranks vs batch 4 in one process, 6 steps, log-probs from the LM head in chunks of 8
    positions: every metric within 1e-5 and the exported weights (the whole model, or the LoRA adapter alone)
    within 1e-5 of one process's."""
    common = ["debug=default", "model=hf", f"model.path={checkpoint}", f"model.lora={lora or 'null'}",
              "trainer.accumulate_grad_batches=1", "trainer.max_steps=6", "trainer.max_epochs=-1", "logprob_chunk=8",
              "optim.lr=1e-2", "optim.warmup_ratio=0", "eval.enabled=false",
              f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    sharded_dir, single_dir = tmp_path / "fsdp2", tmp_path / "single"
    run_sharded_and_single(common, tmp_path)
    assert "2 decoder layers as shard units" in (sharded_dir / "train_ddp_process_1.log").read_text()

    sharded = json.loads((sharded_dir / "summary.json").read_text())["metrics"]
    single = json.loads((single_dir / "summary.json").read_text())["metrics"]
    assert sharded.keys() == single.keys() and sharded["train/steps"] == 6
    assert sharded["val/loss"] != pytest.approx(0.6931, abs=1e-3)  # the policy moved
    for key, value in single.items():
        assert sharded[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key

    if lora:  # the adapter alone, as PEFT writes it
        exported, expected = (load_file(d / "model" / "adapter_model.safetensors") for d in (sharded_dir, single_dir))
        assert expected and all("lora_" in name for name in expected)
    else:
        exported, expected = (AutoModelForCausalLM.from_pretrained(d / "model").state_dict()
                              for d in (sharded_dir, single_dir))  # fmt: skip
    assert exported.keys() == expected.keys()
    start = load_file(checkpoint / "model.safetensors")
    moved = [name for name, weight in expected.items() if name in start and not torch.equal(start[name], weight)]
    assert lora or moved  # a full fine-tune changed the base weights (LoRA's adapters start at B = 0)
    for name, weight in expected.items():
        torch.testing.assert_close(exported[name], weight, rtol=1e-5, atol=1e-5, msg=name)
