"""The export stage: ``<run folder>/model/`` loads with ``from_pretrained`` and generates what the trained policy
generates; LoRA runs export their adapter (or a merged model) and checkpoint only trainable weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama.modeling_llama import LlamaMLP

import bmc.pipeline
from bmc.generation import generate
from bmc.models import TinyLlama
from bmc.pipeline import run

PROMPTS = [" What is 3 plus one?", " What is 11 plus one?", " What is 7 plus one?"]
# a learning rate that moves a tiny model in 6 steps, so the exported weights differ from the starting ones
MOVES = ["debug=default", "optim.lr=1e-2", "optim.warmup_ratio=0", "eval.enabled=false"]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    texts = [f" What is {i} plus one? It is {i + 1}." for i in range(40)]
    model, tokenizer = TinyLlama(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300).build(
        texts
    )
    folder = tmp_path / "start"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _run_and_capture(cfg, monkeypatch) -> torch.nn.Module:
    """Run the job; returns the trained policy as the export stage received it."""
    captured = {}
    export = bmc.pipeline.export_policy

    def keep(cfg, trained, tokenizer):
        captured["model"] = trained.model
        return export(cfg, trained, tokenizer)

    monkeypatch.setattr(bmc.pipeline, "export_policy", keep)
    run(cfg)
    return captured["model"]


def _greedy(model, tokenizer) -> list[tuple[str, bool]]:
    return generate(model, tokenizer, PROMPTS, max_new_tokens=8, progress=False)


def test_exported_policy_loads_with_from_pretrained_and_generates_the_same(make_config, tmp_path, monkeypatch):
    cfg = make_config(*MOVES, "callbacks=default", "checkpoint.keep_optimizer=true")  # last.ckpt stays, to read
    trained = _run_and_capture(cfg, monkeypatch)
    folder = tmp_path / "run" / "model"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["model_dir"] == str(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id and generation["pad_token_id"] == tokenizer.pad_token_id
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert _greedy(model, tokenizer) == _greedy(trained, tokenizer)
    # the Lightning checkpoint holds the policy's weights, and no reference
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state.keys() == {f"policy.{k}" for k in trained.state_dict()}


def test_export_which_best_writes_the_best_checkpoints_weights(make_config, tmp_path, monkeypatch):
    # at completion best.ckpt would go, its weights being model/'s (tests/end_to_end/test_run_folder.py): kept here,
    # to compare
    monkeypatch.setattr("bmc.pipeline.tidy_checkpoints", lambda *args: {})
    run(make_config(*MOVES, "callbacks=default", "export.which=best", "trainer.max_steps=12"))  # 2 validations
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model").state_dict()
    for name, value in exported.items():
        assert torch.equal(best[f"policy.{name}"], value), name
    with pytest.raises(ValueError, match="export.which=best needs a best checkpoint"):
        run(make_config(*MOVES, "callbacks=minimal", "export.which=best"))


@pytest.mark.parametrize("merge", [False, True])
def test_lora_exports_its_adapter_or_a_merged_model_and_checkpoints_only_the_adapter(
    merge: bool, checkpoint: Path, make_config, tmp_path, monkeypatch
) -> None:
    from peft import PeftModel

    cfg = make_config(*MOVES, "model=hf", f"model.path={checkpoint}", "model.lora={r: 4, lora_alpha: 8}",
                      "callbacks=default", f"export.merge={str(merge).lower()}",
                      "checkpoint.keep_optimizer=true")  # fmt: skip
    trained = _run_and_capture(cfg, monkeypatch)
    folder = tmp_path / "run" / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if merge:
        assert not (folder / "adapter_config.json").exists()
        model = AutoModelForCausalLM.from_pretrained(folder)
    else:
        assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(checkpoint), folder)
    assert _greedy(model, tokenizer) == _greedy(trained, tokenizer)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state and all("lora_" in key for key in state)  # the frozen base weights are not checkpointed


def test_gradient_checkpointing_trains_to_the_same_weights(checkpoint: Path, make_config, tmp_path, monkeypatch):
    """Activation checkpointing recomputes the forward in the backward pass: same gradients, same weights. The
    pretrained policy trains in train mode (from_pretrained loads it in eval mode, where checkpointing would
    silently stay off): with checkpointing each training step runs the decoder layer's MLP twice (the layer's own
    forward is wrapped by transformers' checkpointing, so the count sits one module inside it)."""
    trained, layer_calls = {}, {}
    mlp_forward = LlamaMLP.forward
    for flag in ("false", "true"):
        calls = layer_calls.setdefault(flag, {"train": 0, "eval": 0})

        def counted(self, *args, calls=calls, **kwargs):
            calls["train" if self.training else "eval"] += 1
            return mlp_forward(self, *args, **kwargs)

        monkeypatch.setattr(LlamaMLP, "forward", counted)
        cfg = make_config(*MOVES, "model=hf", f"model.path={checkpoint}", f"model.gradient_checkpointing={flag}")
        cfg.paths.output_dir = str(tmp_path / f"run_{flag}")
        trained[flag] = _run_and_capture(cfg, monkeypatch)
    assert trained["true"].is_activation_checkpointing and not trained["false"].is_activation_checkpointing
    steps = cfg.trainer.max_steps
    assert layer_calls["false"]["train"] == steps and layer_calls["true"]["train"] == 2 * steps
    for name, value in trained["false"].state_dict().items():
        assert torch.allclose(trained["true"].state_dict()[name], value, atol=1e-6), name


def test_compiled_decoder_layers_train_to_the_same_weights_and_export_loads(checkpoint: Path, make_config, tmp_path,
                                                                            monkeypatch):  # fmt: skip
    """compile.enabled compiles the policy's decoder layers in place at configure_model (aot_eager here, which
    traces without generating code): the same weights as eager training, and an export that loads as usual."""
    trained = {}
    for flag in ("false", "true"):
        cfg = make_config(*MOVES, "model=hf", f"model.path={checkpoint}", f"compile.enabled={flag}",
                          "compile.backend=aot_eager")  # fmt: skip
        cfg.paths.output_dir = str(tmp_path / f"run_{flag}")
        trained[flag] = _run_and_capture(cfg, monkeypatch)
    layers = {flag: trained[flag].model.layers for flag in trained}
    assert all(layer._compiled_call_impl is not None for layer in layers["true"])
    assert all(layer._compiled_call_impl is None for layer in layers["false"])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "run_true" / "model")
    for name, value in trained["false"].state_dict().items():
        assert torch.allclose(trained["true"].state_dict()[name], value, atol=1e-5), name
        assert torch.allclose(exported.state_dict()[name], trained["true"].state_dict()[name]), name
