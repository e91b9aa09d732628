"""The real-size benchmark's parts: FLOP counting against hand-computed numbers and the model's own weights,
UltraFeedback-like pair lengths, named configs, and the GPU check's CPU dry run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from bmc.bench import gpu_check
from bmc.bench.flops import Shapes, matmul_peak, pair_forward_flops, step_flops_per_pair
from bmc.bench.workload import NAMED_CONFIGS, PROMPT_BOUNDS, RESPONSE_BOUNDS, realistic_pairs, write_named_model
from bmc.models import load_tokenizer

TOY = Shapes(hidden=4, layers=1, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)


def test_flops_of_a_pair_match_a_hand_count() -> None:
    # per token: 2 x (q,o: 2*4*2*2=32; k,v: 2*4*1*2=16; mlp: 3*4*8=96) = 288
    assert TOY.layer_flops_per_token() == 288
    assert TOY.attention_flops(1) == 16 and TOY.head_flops_per_token() == 80
    # prompt 2, chosen 1, rejected 3: keys 1+2 (prompt), 3 (chosen), 3+4+5 (rejected) = 18
    assert pair_forward_flops(TOY, 2, 1, 3) == 288 * 6 + 16 * 18 + 80 * 4 == 2336
    assert step_flops_per_pair(TOY, [(2, 1, 3)], reference_in_step=False) == 3 * 2336
    assert step_flops_per_pair(TOY, [(2, 1, 3), (2, 1, 3)], reference_in_step=True) == 4 * 2336


def test_flop_shapes_count_exactly_the_weights_of_the_model() -> None:
    config = LlamaConfig(
        hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, tie_word_embeddings=False,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    shapes = Shapes.from_config(config)
    layer_weights = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert shapes.layer_flops_per_token() == 2 * layer_weights
    assert shapes.head_flops_per_token() == 2 * model.lm_head.weight.numel()
    with pytest.raises(ValueError, match="gpt2"):
        Shapes.from_config(AutoConfig.for_model("gpt2"))


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


def test_matmul_peak_times_every_weight_shape() -> None:
    rates = matmul_peak(TOY, tokens=32, repeats=2)
    assert set(rates) == {"q/o projection", "k/v projection", "mlp up", "mlp down", "lm head", "peak"}
    assert rates["peak"] == max(v for k, v in rates.items() if k != "peak") > 0


def test_gpu_check_dry_run_runs_every_stage_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    report = gpu_check.main(["--dry-run", "--out", str(out), "--workdir", str(tmp_path / "work")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == [
        "train_bf16_smollm2", "train_bf16_llama1b", "bench_smollm2", "bench_llama1b", "bench_smollm2_compiled",
        "fsdp2", "real_paper_dpo_math",
    ]  # fmt: skip
    for name in ("train_bf16_smollm2", "bench_smollm2", "bench_smollm2_compiled", "fsdp2"):
        assert stages[name]["status"] == "passed", stages[name].get("output_tail")
    for name in ("train_bf16_llama1b", "bench_llama1b"):  # the dry run's two models are one config
        assert stages[name]["status"] == "skipped" and "one config" in stages[name]["reason"]
    assert any("loss" in k for k in stages["train_bf16_smollm2"]["summary"])
    config = OmegaConf.load(tmp_path / "work" / "runs" / "train-smollm2" / ".hydra" / "config.yaml")
    assert config.trainer.precision == "bf16-mixed"  # the GPU's precision, on CPU
    bench = json.loads((tmp_path / "work" / "bench-smollm2.json").read_text())
    assert bench["machine"]["precision"] == "bf16-mixed"  # every implementation of the bench in bf16
    assert "compile.enabled=true" in stages["bench_smollm2_compiled"]["command"]
    assert any(
        k.startswith("precomputed ours_dpo") and "MFU" in v for k, v in stages["bench_smollm2"]["summary"].items()
    )
    # FSDP2 as on a GPU, bf16-mixed, on two CPU processes: trained and validated like the one-process run
    assert "trainer=fsdp2 trainer.accelerator=cpu trainer.devices=2" in stages["fsdp2"]["command"]
    assert stages["fsdp2"]["summary"]["train/steps"] == stages["train_bf16_smollm2"]["summary"]["train/steps"] == 3
    fsdp2_config = OmegaConf.load(tmp_path / "work" / "runs" / "fsdp2" / ".hydra" / "config.yaml")
    assert fsdp2_config.trainer.precision == "bf16-mixed"
    assert fsdp2_config.trainer.strategy._target_ == "bmc.sharded_checkpoint.AtomicModelParallelStrategy"
    assert stages["real_paper_dpo_math"]["status"] == "skipped"
    markdown = out.with_suffix(".md").read_text()
    assert markdown.startswith("# GPU check: cpu (dry run") and "| bench_smollm2 | passed |" in markdown
