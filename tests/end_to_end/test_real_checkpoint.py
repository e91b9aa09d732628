"""``model=hf`` on a real pretrained checkpoint (SmolLM2-135M-Instruct): its tokenizer, chat template and
architecture, the real-model defaults, export and reload. Kept to a handful of pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bmc.bench.workload import realistic_datamodule
from bmc.generation import generate
from bmc.logprobs import response_token_logps, shared_prompt_token_logps
from bmc.scoring_check import FLOAT32_TOLERANCE, verify_scoring
from tests.conftest import run_cli
from tests.doubles.ignores_packing import IgnoresPacking


def _conversations(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        question = [{"role": "user", "content": f"What is {i + 10} + {i + 3}?"}]
        rows.append({
            "chosen": [*question, {"role": "assistant", "content": f"{i + 10} + {i + 3} = {2 * i + 13}."}],
            "rejected": [*question, {"role": "assistant", "content": f"{i + 10} + {i + 3} = {2 * i + 12}."}],
        })  # fmt: skip
    return rows


def test_train_py_on_the_real_checkpoint_with_its_defaults_exports_a_loadable_model(smollm2: Path, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _conversations(5)))
    run_dir = tmp_path / "run"
    output = run_cli(
        ["model=hf", f"model.path={smollm2}", "task=hf_prefs", f"task.path={data}", "loss=bmc", "logger=none",
         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        timeout=900,
    )  # fmt: skip
    assert "cache write: sft" not in output  # a pretrained checkpoint is its own warm start
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["metrics"]["train/steps"] == 1  # 4 pairs, 1 epoch
    assert summary["metrics"]["data/truncated_pairs"] == 0 and summary["config"]["presets"]["loss"] == "bmc"
    assert summary["config"]["optim"]["lr"] == 5e-7 and summary["config"]["sft"]["enabled"] is False

    folder = run_dir / "model"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and model.config.architectures == ["LlamaForCausalLM"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 17 + 25?"}], tokenize=False, add_generation_prompt=True
    )
    ((text, truncated),) = generate(model, tokenizer, [prompt], max_new_tokens=32, progress=False)
    assert text.strip() and not truncated  # an answer that ends with the chat turn's end token


def test_the_shared_prompt_check_accepts_the_real_model_in_bf16_and_refuses_one_that_ignores_the_packing(smollm2):
    """Under bf16 autocast (trainer=gpu) the real model's two layouts differ by more than float32's tolerance from
    rounding alone; the check computes in float32 (bf16 weights cast for it and back), so bf16 training keeps the
    shared prompt and the chunked head, and the float32 tolerance still refuses a model that ignores the packing."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    datamodule = realistic_datamodule(2, tokenizer, scale=0.25)  # 2 pairs of rows of about 140 tokens
    batch = datamodule.collate(datamodule.datasets["train"].rows())
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        plain, mask = response_token_logps(model, batch)
        shared, _ = shared_prompt_token_logps(model, batch)
        assert float((plain - shared)[mask].abs().max()) > FLOAT32_TOLERANCE
        assert verify_scoring(model, batch, chunk_positions=64, share_prompt=True)
    bf16 = model.to(torch.bfloat16)
    assert verify_scoring(bf16, batch, chunk_positions=64, share_prompt=True)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    for positions, mask_4d in ((True, False), (False, True)):
        with pytest.raises(RuntimeError, match="share_prompt=false"):
            verify_scoring(IgnoresPacking(bf16, positions, mask_4d), batch, share_prompt=True)


def test_the_sequential_kl_of_the_real_model_equals_its_full_vocabulary_computation(smollm2: Path):
    """SeqKL of the real model (49k vocabulary, shared prompt, 64-position chunks) with LoRA adapters against their
    disabled base, against both models' full float64 logits row by row: values and the adapters' gradients."""
    from peft import LoraConfig, get_peft_model

    from bmc.sequence_kl import sequence_kl_token_logps

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    base = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = get_peft_model(base, config)
    datamodule = realistic_datamodule(2, tokenizer, scale=0.25)
    batch = datamodule.collate(datamodule.datasets["train"].rows())
    got = sequence_kl_token_logps(policy, None, batch, share_prompt=True, chunk_positions=64)
    params = [p for p in policy.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(got.kl.sum(), params)

    mask = batch["response_mask"][:, 1:]
    want = torch.zeros(mask.shape, dtype=torch.float64)
    for i, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
        ids = batch["input_ids"][i, :n][None]
        logp = policy(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        with torch.no_grad(), policy.disable_adapter():
            logq = policy(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        want[i, : n - 1] = (logq.exp() * (logq - logp)).sum(-1)
    want = want.masked_fill(~mask, 0.0)
    assert float(want.detach().sum()) > 0.01  # the adapters moved the policy
    torch.testing.assert_close(got.kl.double(), want, atol=1e-4, rtol=1e-3)
    want_grads = torch.autograd.grad(want.sum(), params)
    scale = max(float(g.abs().max()) for g in want_grads)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-3 * scale, rtol=0)


@pytest.mark.parametrize("method", ["tdpo2", "dpo_confpo"])
def test_the_token_rival_presets_train_the_real_checkpoint(smollm2: Path, method: str, tmp_path):
    """``method=tdpo2`` / ``method=dpo_confpo`` on the real model and a built-in chat task, debug-sized (the task's
    generator gives the wrong answers, as debug=default does): two steps, finite metrics."""
    run_dir = tmp_path / "run"
    output = run_cli(
        ["model=hf", f"model.path={smollm2}", "task=math_chat", f"method={method}", "debug=default",
         "eval.enabled=false", "export.enabled=false", "trainer.max_steps=2", f"paths.cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        timeout=900,
    )  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["metrics"]["train/steps"] == 2
    metrics = summary["metrics"]
    if method == "tdpo2":
        assert "reference.precompute=true is not used" in output
        assert metrics["val/kl/chosen"] > 0 and metrics["val/kl/rejected"] > 0
    else:
        assert 0 < metrics["val/bmc/mean_weight"] < 1
