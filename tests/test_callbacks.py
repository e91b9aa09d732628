"""The stopping rule of the training stages: SFT's target accuracy (StopAtAccuracy)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bmc.callbacks import StopAtAccuracy
from bmc.precision import resolve_precision


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


