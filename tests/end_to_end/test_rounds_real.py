"""Two short online rounds (``rounds=2``) with ``model=hf`` on the real SmolLM2-135M-Instruct checkpoint, on a
tiny slice of ``task=math_chat``: round 2 samples from round 1's export. Slow (minutes on 2 cores): opt in with
``BMC_REAL_ROUNDS=1``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from bmc.cache import weights_fingerprint
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(not os.environ.get("BMC_REAL_ROUNDS"), reason="slow: set BMC_REAL_ROUNDS=1")


def test_two_rounds_on_the_real_checkpoint_sample_from_the_previous_rounds_export(smollm2: Path, tmp_path) -> None:
    run_dir = tmp_path / "run"
    output = run_cli(
        ["model=hf", f"model.path={smollm2}", "task=math_chat", "task.sizes.train=4", "task.sizes.pref=8",
         "task.sizes.eval=4",
         "method=dpo", "rounds=2", "data.sampler.n=2", "data.sampler.max_new_tokens=64", "eval.max_new_tokens=64",
         "trainer.max_steps=1", "trainer.accumulate_grad_batches=1", "batch_size=2", "optim.lr=1e-5", "logger=none",
         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        timeout=1800,
    )  # fmt: skip
    assert "cache write: sft" not in output  # the checkpoint is its own warm start, π_0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    first, second = summary["rounds"]
    assert first["policy"] == str(smollm2) and second["policy"] == first["model_dir"] == second["reference"]
    assert [r["metrics"]["train/steps"] for r in (first, second)] == [1, 1]  # each round its own schedule
    assert [r["prompts"] for r in (first, second)] == [4, 4]  # disjoint halves of the 8 prompts
    start = weights_fingerprint(AutoModelForCausalLM.from_pretrained(smollm2))
    after_one = weights_fingerprint(AutoModelForCausalLM.from_pretrained(first["model_dir"]))
    assert start != after_one  # round 2's policy (and reference) is round 1's trained export, not the start
    assert summary["model_dir"] == second["model_dir"] and "eval/accuracy" in second["metrics"]
