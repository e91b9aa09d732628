"""Helpers shared by the stages: the verifier evaluation generates in the trainer's precision."""

from __future__ import annotations

import torch


def test_the_verifier_evaluation_generates_in_the_trainers_precision(make_config, monkeypatch) -> None:
    from hydra.utils import instantiate

    from bmc.stages.common import verifier_answers

    asked: list[str] = []
    monkeypatch.setattr(
        "bmc.stages.common.answer_and_score", lambda *args, **kwargs: asked.append(kwargs["precision"].name) or []
    )
    for precision in ("bf16", "16-true", 32):
        cfg = make_config("debug=default", f"trainer.precision={precision}", "eval.max_new_tokens=8")
        verifier_answers(cfg, instantiate(cfg.task), torch.nn.Linear(1, 1), tokenizer=None)
    assert asked == ["bf16-mixed", "16-true", "32-true"]
