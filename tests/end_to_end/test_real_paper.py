"""experiment=real_paper: built-in tasks posed as chat turns to an instruct model, its own generation budget,
and the preset's rows (docs/results-real.md)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import bmc.generation
from bmc.data.render import render_task
from bmc.data.sources import builtin_task
from bmc.report.methods import paper_name
from bmc.report.records import RunRecord
from bmc.stages.common import verifier_metrics
from bmc.tasks.math import MathTask
from tests.conftest import compose_config


class _ChatML:
    """A tokenizer stand-in with SmolLM2's ChatML chat template (its default system turn included)."""

    chat_template = "chatml"

    def apply_chat_template(self, messages, tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        system = "<|im_start|>system\nYou are SmolLM<|im_end|>\n"
        return (
            system
            + "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            + ("<|im_start|>assistant\n")
        )


def _math(chat_instruction: str | None):
    sizes = {"train": 4, "pref": 3, "eval": 2, "sft_val": 2}
    return builtin_task("math", MathTask(n_steps=1, min_operand=2, max_operand=30), sizes, 0, chat_instruction)


def test_a_builtin_task_posed_as_chat_turns_renders_every_prompt_through_the_chat_template() -> None:
    plain, chat = _math(None), _math("Then say 'The answer is' and the number.")
    question = plain.pairs[0]["prompt"].removesuffix("\nAnswer:")
    assert plain.pairs[0]["prompt"].endswith("\nAnswer:") and plain.pairs[0]["chosen"].startswith(" ")
    assert chat.user_turns and not plain.user_turns
    assert chat.pairs[0]["prompt"] == f"{question}\nThen say 'The answer is' and the number."
    # responses drop the space that continued the plain prompt; the same examples and errors otherwise
    assert [p["chosen"] for p in chat.pairs] == [p["chosen"][1:] for p in plain.pairs]
    assert [p["rejected"] for p in chat.pairs] == [p["rejected"][1:] for p in plain.pairs]
    assert [e.gold for e in chat.eval_examples] == [e.gold[1:] for e in plain.eval_examples]

    rendered = render_task(chat, _ChatML())
    turn = (
        "<|im_start|>system\nYou are SmolLM<|im_end|>\n<|im_start|>user\n"
        f"{question}\nThen say 'The answer is' and the number.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rendered.pairs[0]["prompt"] == turn and not rendered.user_turns
    # sampling (pref_examples), the SFT stop check and evaluation read the text training reads
    assert rendered.pref_examples[0].prompt == turn
    assert rendered.sft_val_examples[0].prompt == rendered.sft_val[0]["prompt"] == turn
    assert rendered.eval_examples[0].prompt.startswith("<|im_start|>system") and rendered.eval_examples[0].meta
    assert rendered.reward_pairs[0]["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
    # without a chat template (the tiny model) a user turn is a plain line; plain tasks are left as they are
    assert render_task(chat, None).pairs[0]["prompt"].startswith("user: ")
    assert render_task(plain, _ChatML()).pairs == plain.pairs


def test_eval_max_new_tokens_replaces_the_gold_length_budget(make_config, monkeypatch) -> None:
    budgets: list[int] = []

    def fake_generate(model, tokenizer, prompts, max_new_tokens, **kwargs):
        budgets.append(max_new_tokens)
        return [(" The answer is 1.", False) for _ in prompts]

    monkeypatch.setattr(bmc.generation, "generate", fake_generate)
    monkeypatch.setattr("bmc.stages.common.generation_budget", lambda tokenizer, examples: 21)
    monkeypatch.setattr("bmc.stages.common.accelerator_device", lambda accelerator: "cpu")
    task = _math(None)
    model = type("Model", (), {"to": lambda self, device: self})()
    assert verifier_metrics(make_config(), task, model, None)["truncated"] == 0.0
    verifier_metrics(make_config("eval.max_new_tokens=64"), task, model, None)
    assert budgets == [21, 64]


@pytest.mark.parametrize(
    ("method", "name"),
    [
        ("sft", "SFT"), ("sft_chosen", "SFT+chosen"), ("dpo", "DPO"), ("dpo_bc", "DPO-BC"), ("dpo_mc", "DPO-MC"),
        ("dpo_bmc", "DPO-BMC"), ("ipo", "IPO"), ("ipo_bmc", "IPO-BMC"), ("simpo", "SimPO"),
        ("simpo_bmc", "SimPO-BMC"), ("dpo_bcr", "DPO+BCR"), ("ipr", "IPR"),
    ],
)  # fmt: skip
def test_real_paper_rows_compose_with_their_paper_names(method: str, name: str, monkeypatch) -> None:
    monkeypatch.setenv("BMC_REAL_CHECKPOINT", "/ckpts/SmolLM2-135M-Instruct")
    cfg = compose_config(["experiment=real_paper", f"method={method}", "task=math_chat"])
    container = OmegaConf.to_container(cfg, resolve=True)
    assert paper_name(RunRecord("r", "completed", container, {})) == name
    assert cfg.model.path == "/ckpts/SmolLM2-135M-Instruct" and cfg.model._target_ == "bmc.models.PretrainedLM"
    assert cfg.sft.enabled is False and cfg.task.chat_instruction and cfg.task.generator.n_steps == 1
    assert (cfg.data.sampler.backend.kind, cfg.data.sampler.n, cfg.eval.max_new_tokens) == ("hf", 4, 64)
    assert cfg.callbacks.model_checkpoint is None and cfg.export.enabled is False
    assert cfg.trainer.max_steps == (0 if method == "sft" else -1)
    if method == "ipr":
        assert cfg.judge.kind == "verifier"


def test_evaluation_writes_every_answer_and_its_score_for_the_report(make_config, monkeypatch, tmp_path) -> None:
    import json

    from bmc.stages.evaluation import evaluate

    task = _math(None)
    right = task.eval_examples[0].gold
    monkeypatch.setattr(bmc.generation, "generate", lambda m, t, prompts, n, **k: [(right, False), ("No.", True)])
    monkeypatch.setattr("bmc.stages.common.generation_budget", lambda tokenizer, examples: 21)
    monkeypatch.setattr("bmc.stages.common.accelerator_device", lambda accelerator: "cpu")
    model = type("Model", (), {"to": lambda self, device: self})()
    metrics = evaluate(make_config(), task, model, None, [], step=3)
    assert metrics == {"eval/accuracy": 0.5, "eval/score": 0.5, "eval/truncated": 0.5, "eval/num_prompts": 2.0}
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval_answers.jsonl").read_text().splitlines()]
    assert rows == [
        {"prompt": task.eval_examples[0].prompt, "response": right, "truncated": False, "score": 1.0},
        {"prompt": task.eval_examples[1].prompt, "response": "No.", "truncated": True, "score": 0.0},
    ]


def test_a_run_without_checkpoint_callbacks_writes_no_checkpoint(make_config, tmp_path) -> None:
    """callbacks without a ModelCheckpoint (real_paper's, callbacks=minimal) must not get Lightning's default
    one, which wrote a full checkpoint (1.6 GB for SmolLM2-135M) into the CSV logger's folder of every job."""
    from bmc.pipeline import run

    metrics = run(make_config("debug=default", "logger=csv", "export.enabled=false"))
    assert metrics["train/steps"] == 6
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()
    assert list((tmp_path / "run").rglob("*.ckpt")) == []
