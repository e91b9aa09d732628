"""`python train.py method=tdpo2` and `method=dpo_confpo` end to end on a built-in task (debug-sized): the token-level
rivals to BMC train, log what they regulate, and TDPO says once that its reference runs in the step."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.conftest import run_cli


def _run(tmp_path: Path, shared_cache: Path, *overrides: str) -> tuple[dict, str]:
    run_dir = tmp_path / "run"
    output = run_cli(
        ["debug=default", *overrides, "eval.enabled=false", f"paths.cache_dir={shared_cache}",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["metrics"]["train/steps"] == 6
    return summary, output


def test_tdpo2_trains_with_the_reference_in_the_step(tmp_path: Path, shared_cache: Path) -> None:
    summary, output = _run(tmp_path, shared_cache, "method=tdpo2", "reference.precompute=true")
    assert summary["config"]["loss"] == {"name": "tdpo2", "beta": 0.1, "alpha": 0.5}
    assert output.count("reference.precompute=true is not used") == 1 and "ref_logps" not in output
    metrics = summary["metrics"]
    # six steps at lr 2e-3 move the policy away from its reference: a positive, finite SeqKL on both responses
    assert 0 < metrics["val/kl/chosen"] < math.inf and 0 < metrics["val/kl/rejected"] < math.inf
    assert math.isfinite(metrics["val/loss"])


def test_dpo_confpo_trains_on_the_tokens_the_policy_is_least_sure_of(tmp_path: Path, shared_cache: Path) -> None:
    summary, _ = _run(tmp_path, shared_cache, "method=dpo_confpo")
    assert summary["config"]["token_weighting"] == {"name": "confpo", "ref_weights": "policy"}
    kept = summary["metrics"]["val/bmc/mean_weight"]  # the fraction of response tokens ConfPO keeps
    assert 0 < kept < 1 and math.isfinite(summary["metrics"]["val/loss"])
