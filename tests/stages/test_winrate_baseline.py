"""eval=winrate's baselines: the held-out prompts of a dataset, the settings each baseline cannot work with, and the
reference answers generated and cached in the trainer's precision."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from bmc.data.sources import TaskData
from bmc.generation import Completion
from bmc.stages.products import JudgeSetup, PreferencePairs
from bmc.stages.winrate import pairwise_judge
from bmc.stages.winrate_baseline import Baseline, HeldOut, baseline_answers, held_out_prompts
from tests.conftest import compose_config


def _setup(baseline: str, task_data: TaskData, judge: dict | None = None, pairs: list | None = None) -> SimpleNamespace:
    cfg = OmegaConf.create({"eval": {"baseline": baseline}, "data": {"val_fraction": 0.5}, "task": {"seed": 0},
                            "trainer": {"accelerator": "cpu", "precision": "32-true"}})  # fmt: skip
    return SimpleNamespace(
        cfg=cfg, task_data=task_data, judge=JudgeSetup(judge or {}), pairs=PreferencePairs(pairs or [], {})
    )


PAIRS = [{"prompt": f"Q{i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(6)]


DATASET = TaskData(name="prefs", sft_train=[], sft_val=[], pairs=PAIRS)


def test_a_dataset_holds_out_its_validation_prompts_with_their_chosen_responses() -> None:
    held_out = held_out_prompts(_setup("chosen", DATASET, pairs=PAIRS))
    assert len(held_out) == 3 and all(h.chosen == f" good {h.prompt[1]}" for h in held_out)


def test_baselines_and_the_settings_they_cannot_work_with(tmp_path: Path) -> None:
    held_out = [HeldOut("Q0?", " good 0"), HeldOut("Q1?", None)]
    with pytest.raises(ValueError, match=r"eval.baseline=chosen needs .* 1 of 2 have none"):
        baseline_answers(_setup("chosen", DATASET), held_out, budget=8)
    answers = tmp_path / "gpt4.jsonl"
    answers.write_text(json.dumps({"prompt": "Q0?", "answer": " theirs"}) + "\n")
    with pytest.raises(ValueError, match=r"gpt4.jsonl has no answer text for 1 of 2 held-out prompts"):
        baseline_answers(_setup(str(answers), DATASET), held_out, budget=8)
    assert baseline_answers(_setup(str(answers), DATASET), held_out[:1], budget=8).answers == {"Q0?": " theirs"}
    with pytest.raises(ValueError, match=r"eval.baseline must be reference, chosen or a JSONL file"):
        baseline_answers(_setup("refrence", DATASET), held_out, budget=8)
    # no verifier to judge by, and an LLM judge without its served model
    with pytest.raises(ValueError, match=r"eval=winrate .* judge=verifier .* needs a built-in task"):
        pairwise_judge(_setup("chosen", DATASET, judge={"kind": "verifier"}))
    llm = OmegaConf.to_container(compose_config(["judge=llm"]).judge)
    with pytest.raises(ValueError, match=r"eval=winrate .* judge=llm .* needs `model`"):
        pairwise_judge(_setup("chosen", DATASET, judge=llm))


def test_the_reference_answers_are_generated_and_cached_in_the_trainers_precision(tmp_path: Path, monkeypatch) -> None:
    asked: list[str] = []

    def generate(model, tokenizer, prompts, budget, **kwargs) -> list[Completion]:
        asked.append(kwargs["precision"].name)
        return [Completion(f" in {kwargs['precision'].name}", truncated=p == "Q1?") for p in prompts]

    monkeypatch.setattr("bmc.stages.winrate_baseline.generate", generate)

    def answers(precision: str) -> Baseline:
        setup = _setup("reference", DATASET)
        setup.cfg.trainer.precision, setup.cfg.eval.batch_size = precision, 4
        setup.cfg.paths = {"cache_dir": str(tmp_path)}
        setup.policy = SimpleNamespace(fingerprint=lambda: {"checkpoint": "sft"}, model=None, tokenizer=None)
        return baseline_answers(setup, [HeldOut("Q0?", None), HeldOut("Q1?", None)], budget=8)

    bf16 = answers("bf16")
    assert bf16 == answers("bf16-mixed")
    assert bf16.answers == {"Q0?": " in bf16-mixed", "Q1?": " in bf16-mixed"}
    assert bf16.truncated == {"Q1?"}  # the answer the budget cut off, also when read from the cache
    assert answers("32-true").answers == {"Q0?": " in 32-true", "Q1?": " in 32-true"}
    assert asked == ["bf16-mixed", "32-true"]  # bf16 and bf16-mixed: one cache entry
