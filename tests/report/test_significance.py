"""Beyond-noise marks in the report: the paired bootstrap test over held-out prompts and seeds, its p-value,
Holm–Bonferroni across a table's cells and the seeds a mark needs (bmc.report.significance, bmc.report.holm)."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest

from bmc.report import load_sweep, write_report
from bmc.report.__main__ import parse_args
from bmc.report.holm import holm_adjusted
from bmc.report.significance import (
    MARK_BETTER,
    MARK_PROMPT_NOISE,
    differences,
    paired_bootstrap,
    resamples_for,
)
from bmc.summary_file import EVAL_ANSWERS
from tests.doubles.report_runs import run_config, write_job


def test_paired_bootstrap_on_hand_made_scores() -> None:
    zeros, ones = np.zeros((3, 40)), np.ones((2, 40))
    # every resample differs by exactly 1: on one side of 0 every time, so p is the smallest there is, 2/(B + 1)
    assert paired_bootstrap(zeros, ones) == (1.0, 1.0, 1.0, 2 / 2001)
    same = np.array([[1, 0, 1, 1, 0, 0, 1, 0]] * 3, dtype=float)
    # paired: the same prompts for both rows, so every resampled difference is 0 and p = 1
    assert paired_bootstrap(same, same.copy()) == (0.0, 0.0, 0.0, 1.0)
    # one row better on 2 of 8 prompts: mean difference 0.25; a resample without either prompt gives 0, which
    # happens with probability (6/8)^8 = 0.1001 and is the only way to reach 0: p = 2 · 0.1001 = 0.200
    better = same.copy()
    better[:, [1, 4]] = 1.0
    delta, low, high, p_value = paired_bootstrap(same, better, resamples=4000)
    assert delta == 0.25 and low == 0.0 and 0.5 <= high <= 0.625
    assert p_value == pytest.approx(2 * 0.75**8, abs=0.03)  # Monte Carlo sd at B = 4000: 0.0095
    # seed noise counts: a row whose seeds disagree (0.0 and 1.0 on every prompt) has a wide interval; its resampled
    # mean is 0, 0.5 or 1 (1/4, 1/2, 1/4) against 0.5, so either side of 0 holds 3/4 of the resamples: p = 1
    split = np.array([[0.0] * 8, [1.0] * 8])
    assert paired_bootstrap(np.full((2, 8), 0.5), split) == (0.0, -0.5, 0.5, 1.0)


def test_holm_on_hand_computed_p_values() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 against α/4, α/3, α/2, α/1 = 0.0125, 0.0167, 0.025, 0.05: the first two
    # pass, 0.03 fails and stops the procedure, so 0.04 is not rejected though it is below its own α/1.
    # Adjusted: 4·0.005 = 0.02, 3·0.01 = 0.03, 2·0.03 = 0.06, max(0.06, 1·0.04) = 0.06.
    adjusted = holm_adjusted([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p <= 0.05 for p in adjusted] == [True, False, False, True]
    # Holm rejects all four where Bonferroni (4p: 0.04, 0.06, 0.12, 0.02) rejects two: 0.02, 0.03, 0.03, 0.03
    assert holm_adjusted([0.01, 0.015, 0.03, 0.005]) == pytest.approx([0.03, 0.03, 0.03, 0.02])
    assert holm_adjusted([0.6, 0.9]) == [1.0, 1.0] and holm_adjusted([0.2]) == [0.2] and holm_adjusted([]) == []


def test_resamples_resolve_the_smallest_holm_threshold() -> None:
    # B = 20 m / α: the smallest p, 2/(B + 1), is a tenth of α/m; at least 2000, at most 100 000
    assert resamples_for(22, 0.05) == 8800 and 2 / (8800 + 1) < 0.05 / 22 / 9.9
    assert resamples_for(2, 0.05) == 2000 and resamples_for(0, 0.05) == 2000
    assert resamples_for(10_000, 0.05) == 100_000
    assert parse_args(["sweep", "--alpha", "0.01"]).alpha == 0.01
    with pytest.raises(SystemExit):
        parse_args(["sweep", "--alpha", "5"])


def _write_sweep(
    root: Path, accuracy: dict[str, float], seeds: dict[str, int] | None = None, prompts: int = 120
) -> None:
    """Runs of the methods in ``accuracy`` (3 seeds unless ``seeds`` says otherwise), each prompt answered right
    with that probability."""
    rng = random.Random(0)
    configs = {
        "sft_chosen": {**run_config("math", "dpo", 0, data="sampled"), "loss": {"name": "sft"}},
        "dpo": run_config("math", "dpo", 0, data="sampled"),
        "dpo_bmc": run_config("math", "bmc", 0, data="pseudo_winning"),
        "dpo_bc": run_config("math", "dpo", 0, data="pseudo_winning"),
    }
    job = 0
    for method, share in accuracy.items():
        for seed in range((seeds or {}).get(method, 3)):
            folder = root / str(job)
            scores = [float(rng.random() < share) for _ in range(prompts)]
            config = {**configs[method], "seed": seed, "trainer": {"max_steps": -1}}
            write_job(folder, [f"method={method}", f"seed={seed}"], config, {"eval/accuracy": sum(scores) / prompts})
            rows = [{"prompt": f"q{i}", "response": "", "truncated": False, "score": s} for i, s in enumerate(scores)]
            (folder / EVAL_ANSWERS).write_text("".join(json.dumps(r) + "\n" for r in rows))
            job += 1


def _line(text: str, method: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {method} |"))


def test_report_marks_a_known_difference_and_not_a_null_one(tmp_path: Path) -> None:
    _write_sweep(tmp_path / "sweep", {"sft_chosen": 0.3, "dpo": 0.7, "dpo_bmc": 0.3})
    records = load_sweep(tmp_path / "sweep")
    assert sorted({r.method for r in records}) == ["DPO", "DPO-BMC", "SFT+chosen"]
    measured = differences(records, "SFT+chosen", ["eval/accuracy"])
    diffs = {d.method: d for d in measured}
    assert diffs["DPO"].beyond_noise and diffs["DPO"].low > 0.25 and diffs["DPO"].mark == MARK_BETTER
    assert not diffs["DPO-BMC"].beyond_noise and diffs["DPO-BMC"].low < 0 < diffs["DPO-BMC"].high
    assert (diffs["DPO"].prompts, diffs["DPO"].seeds, diffs["DPO"].baseline_seeds) == (120, 3, 3)
    # both cells are one Holm family of m = 2, B = max(2000, 20 · 2 / 0.05)
    assert (measured.tests, measured.resamples) == (2, 2000)
    assert [d.p_holm for d in measured] == holm_adjusted([d.p_value for d in measured])
    assert diffs["DPO"].p_value == 2 / 2001 and diffs["DPO-BMC"].p_value > 0.05

    report = write_report(records, tmp_path / "out", ["eval/accuracy"], plots=False)
    table = (tmp_path / "out" / "table.md").read_text()
    assert MARK_BETTER in _line(table, "DPO") and MARK_BETTER not in _line(table, "DPO-BMC")
    assert "▼" not in _line(table, "DPO-BMC")
    assert (
        "▲/▼: better/worse than SFT+chosen beyond noise, by a two-sided paired bootstrap test of the difference in "
        "means (2000 resamples of the held-out prompts and the seeds), Holm–Bonferroni-corrected across the m = 2 "
        "(method, task, metric) cells tested, at α = 0.05 (smallest threshold α/m = 0.025; smallest attainable "
        "p = 2/(B + 1) = 0.001)."
    ) in table
    assert "prompt noise only" not in table  # every cell has 3 seeds
    differences_md = (tmp_path / "out" / "differences.md").read_text()
    assert _line(differences_md, "DPO").startswith("| DPO | math | eval/accuracy | +0.")
    assert _line(differences_md, "DPO").endswith("| 0.001 | 0.002 | 120 | 3 vs 3 |")  # p = 2/2001, Holm 2p
    latex = report.table.to_latex()
    assert r"$\blacktriangle$" in latex and r"Holm--Bonferroni" in latex and r"$\alpha$ = 0.05" in latex
    # no baseline row in the sweep (or --baseline none): no marks, no differences file
    plain = write_report(records, tmp_path / "plain", ["eval/accuracy"], plots=False, baseline=None)
    assert not plain.table.marks and not plain.table.notes and not (tmp_path / "plain" / "differences.md").exists()


def test_cells_with_fewer_than_three_seeds_get_the_prompt_noise_label_and_no_mark(tmp_path: Path) -> None:
    # DPO (3 seeds), DPO-BMC (2) and DPO-BC (1) are all far above SFT+chosen (3 seeds): only DPO is tested
    accuracy = {"sft_chosen": 0.3, "dpo": 0.7, "dpo_bmc": 0.7, "dpo_bc": 0.7}
    _write_sweep(tmp_path / "sweep", accuracy, seeds={"dpo_bmc": 2, "dpo_bc": 1})
    records = load_sweep(tmp_path / "sweep")
    measured = differences(records, "SFT+chosen", ["eval/accuracy"])
    diffs = {d.method: d for d in measured}
    assert (measured.tests, measured.resamples) == (1, 2000)
    assert diffs["DPO"].mark == MARK_BETTER and diffs["DPO"].p_holm == diffs["DPO"].p_value  # m = 1: Holm is p
    for method, seeds in (("DPO-BMC", 2), ("DPO-BC", 1)):
        d = diffs[method]
        assert (d.seeds, d.baseline_seeds, d.tested, d.p_holm, d.mark) == (seeds, 3, False, None, MARK_PROMPT_NOISE)
        assert d.low > 0.1 and d.p_value < 0.05 and not d.beyond_noise  # apart on prompt noise, still no ▲

    report = write_report(records, tmp_path / "out", ["eval/accuracy"], plots=False)
    table = (tmp_path / "out" / "table.md").read_text()
    assert MARK_BETTER in _line(table, "DPO")
    for method in ("DPO-BMC", "DPO-BC"):
        assert MARK_PROMPT_NOISE in _line(table, method) and MARK_BETTER not in _line(table, method)
    assert "the m = 1 (method, task, metric) cells tested" in table
    assert (
        "◦: fewer than 3 seeds in the row or in SFT+chosen (2 cells): their bootstrap covers prompt noise only, "
        "not what a rerun of training adds, so they get no beyond-noise mark and are not among the tests."
    ) in table
    assert _line((tmp_path / "out" / "differences.md").read_text(), "DPO-BC").endswith("| - | 120 | 1 vs 3 |")
    assert r"$\circ$" in report.table.to_latex()
    marks = {row["method"]: row["mark"] for row in csv.DictReader(io.StringIO(report.table.to_csv()))}
    assert marks == {"SFT+chosen": "", "DPO": MARK_BETTER, "DPO-BMC": MARK_PROMPT_NOISE, "DPO-BC": MARK_PROMPT_NOISE}
