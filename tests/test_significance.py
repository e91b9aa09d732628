"""Beyond-noise marks in the report: the paired bootstrap over held-out prompts and seeds (bmc.report.significance)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from bmc.report import load_sweep, write_report
from bmc.report.significance import MARK_BETTER, differences, paired_bootstrap
from bmc.summary import EVAL_ANSWERS
from tests.test_report import run_config, write_job


def test_paired_bootstrap_on_hand_made_scores() -> None:
    zeros, ones = np.zeros((3, 40)), np.ones((2, 40))
    assert paired_bootstrap(zeros, ones) == (1.0, 1.0, 1.0)  # every resample differs by exactly 1
    same = np.array([[1, 0, 1, 1, 0, 0, 1, 0]] * 3, dtype=float)
    assert paired_bootstrap(same, same.copy()) == (0.0, 0.0, 0.0)  # paired: the same prompts for both rows
    # one row better on 2 of 8 prompts: mean difference 0.25; a resample without either prompt gives 0
    better = same.copy()
    better[:, [1, 4]] = 1.0
    delta, low, high = paired_bootstrap(same, better, resamples=4000)
    assert delta == 0.25 and low == 0.0 and 0.5 <= high <= 0.625
    # seed noise counts: a row whose seeds disagree (0.0 and 1.0 on every prompt) has a wide interval
    split = np.array([[0.0] * 8, [1.0] * 8])
    delta, low, high = paired_bootstrap(np.full((2, 8), 0.5), split)
    assert delta == 0.0 and low == -0.5 and high == 0.5


def _write_sweep(root: Path, accuracy: dict[str, float], prompts: int = 120) -> None:
    rng = random.Random(0)
    configs = {
        "sft_chosen": {**run_config("math", "dpo", 0, data="sampled"), "loss": {"name": "sft"}},
        "dpo": run_config("math", "dpo", 0, data="sampled"),
        "dpo_bmc": run_config("math", "bmc", 0, data="pseudo_winning"),
    }
    job = 0
    for method, config in configs.items():
        for seed in range(3):
            folder = root / str(job)
            scores = [float(rng.random() < accuracy[method]) for _ in range(prompts)]
            config = {**config, "seed": seed, "trainer": {"max_steps": -1}}
            write_job(folder, [f"method={method}", f"seed={seed}"], config, {"eval/accuracy": sum(scores) / prompts})
            rows = [{"prompt": f"q{i}", "response": "", "truncated": False, "score": s} for i, s in enumerate(scores)]
            (folder / EVAL_ANSWERS).write_text("".join(json.dumps(r) + "\n" for r in rows))
            job += 1


def test_report_marks_a_known_difference_and_not_a_null_one(tmp_path: Path) -> None:
    _write_sweep(tmp_path / "sweep", {"sft_chosen": 0.3, "dpo": 0.7, "dpo_bmc": 0.3})
    records = load_sweep(tmp_path / "sweep")
    assert sorted({r.method for r in records}) == ["DPO", "DPO-BMC", "SFT+chosen"]
    diffs = {d.method: d for d in differences(records, "SFT+chosen", ["eval/accuracy"])}
    assert diffs["DPO"].beyond_noise and diffs["DPO"].low > 0.25 and diffs["DPO"].mark == MARK_BETTER
    assert not diffs["DPO-BMC"].beyond_noise and diffs["DPO-BMC"].low < 0 < diffs["DPO-BMC"].high
    assert (diffs["DPO"].prompts, diffs["DPO"].seeds, diffs["DPO"].baseline_seeds) == (120, 3, 3)

    report = write_report(records, tmp_path / "out", ["eval/accuracy"], plots=False)
    table = (tmp_path / "out" / "table.md").read_text()
    dpo_line = next(line for line in table.splitlines() if line.startswith("| DPO |"))
    bmc_line = next(line for line in table.splitlines() if line.startswith("| DPO-BMC |"))
    assert MARK_BETTER in dpo_line and MARK_BETTER not in bmc_line and "▼" not in bmc_line
    assert "beyond noise" in table and "paired bootstrap" in table
    assert "| DPO | math | eval/accuracy | +0." in (tmp_path / "out" / "differences.md").read_text()
    assert r"$\blacktriangle$" in report.table.to_latex()
    # no baseline row in the sweep (or --baseline none): no marks, no differences file
    plain = write_report(records, tmp_path / "plain", ["eval/accuracy"], plots=False, baseline=None)
    assert not plain.table.marks and not (tmp_path / "plain" / "differences.md").exists()
