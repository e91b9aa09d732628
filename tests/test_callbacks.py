"""The training stages' schedule and stopping rule: the learning-rate schedule and SFT's target accuracy."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bmc.callbacks import StopAtAccuracy
from bmc.precision import resolve_precision
from bmc.schedule import cosine_with_warmup


@pytest.mark.parametrize("warmup,total", [(0, 10), (3, 20), (10, 10), (5, 7)])
def test_cosine_with_warmup_matches_transformers(warmup: int, total: int) -> None:
    from transformers import get_cosine_schedule_with_warmup

    def factors(make) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = make(optimizer, warmup, total)
        values = []
        for _ in range(total + 2):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return values

    ours = factors(cosine_with_warmup)
    assert ours == pytest.approx(factors(get_cosine_schedule_with_warmup), abs=1e-12)
    if warmup:
        assert ours[0] == 0.0 and ours[warmup] == pytest.approx(1.0)
    if warmup < total:
        assert ours[total] == pytest.approx(0.0, abs=1e-12)


def _stopper(
    monkeypatch: pytest.MonkeyPatch, accuracies: list[float], target: float = 0.75, asked: list | None = None
) -> StopAtAccuracy:
    """A stopper whose checks score ``accuracies`` in turn; each check's keyword arguments go to ``asked``."""
    scripted = iter(accuracies)

    def answer_and_score(*args, **kwargs):
        if asked is not None:
            asked.append(kwargs)
        return next(scripted)

    monkeypatch.setattr("bmc.callbacks.answer_and_score", answer_and_score)
    monkeypatch.setattr("bmc.callbacks.score_summary", lambda accuracy: {"accuracy": accuracy})
    return StopAtAccuracy(task=None, examples=[object()], tokenizer=None, target=target, check_every=10)


def test_stop_at_accuracy_checks_every_n_steps_and_stops_at_the_first_check_that_reaches_the_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[dict] = []
    stopper = _stopper(monkeypatch, [0.1, 0.6, 0.8, 0.9], asked=asked)
    trainer = SimpleNamespace(global_step=0, should_stop=False, precision="bf16-mixed")
    module = SimpleNamespace(policy=None)
    for step in range(1, 41):
        trainer.global_step = step
        for _ in range(2):  # gradient accumulation: two batches end at each optimizer step
            stopper.on_train_batch_end(trainer, module, None, None, 0)
        if trainer.should_stop:
            break
    assert stopper.history == [(10, 0.1), (20, 0.6), (30, 0.8)]
    assert trainer.global_step == 30 and stopper.reached
    # the check runs outside Lightning's forward context, so it is told the training's precision
    assert [k["precision"] for k in asked] == [resolve_precision("bf16-mixed")] * 3


def test_stop_at_accuracy_rejects_a_target_it_cannot_reach() -> None:
    with pytest.raises(ValueError, match="target"):
        StopAtAccuracy(task=None, examples=[object()], tokenizer=None, target=1.5, check_every=10)
    with pytest.raises(ValueError, match="examples"):
        StopAtAccuracy(task=None, examples=[], tokenizer=None, target=0.5, check_every=10)


class _ConstantVerifier:
    """Scores every response the same, so the stopping check's outcome is known in advance."""

    def __init__(self, score: float) -> None:
        self.value = score

    def score(self, example, response: str) -> float:
        return self.value


@pytest.mark.parametrize("score,expected_steps", [(1.0, 10), (0.0, 30)])
def test_sft_stops_at_the_target_accuracy_and_records_its_steps(
    score: float, expected_steps: int, make_config, caplog: pytest.LogCaptureFixture
) -> None:
    from hydra.utils import instantiate

    from bmc.stages.warm_start import warm_start

    cfg = make_config(
        "debug=default", "stage_max_steps=null", "sft.steps=30", "sft.target_accuracy=0.5", "sft.check_every=10"
    )
    task_data, source = instantiate(cfg.task), instantiate(cfg.model)
    task_data.verifier = _ConstantVerifier(score)
    with caplog.at_level(logging.WARNING, logger="bmc.stages.warm_start"):
        folder = warm_start(cfg, task_data, source).checkpoint
    stage = json.loads((Path(folder) / "sft_eval.json").read_text())
    assert stage["steps"] == expected_steps and stage["stop_accuracy"] == score
    assert ("without reaching sft.target_accuracy=0.5" in caplog.text) == (score < 0.5)


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
