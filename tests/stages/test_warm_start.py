"""The SFT warm start: it stops at the target accuracy and records its steps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest


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
