"""``bmc.report`` and ``notebooks/compare_runs.ipynb`` on a fake sweep written to disk (no training)."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bmc.report import (
    Cell,
    comparison_table,
    load_sweep,
    lower_is_better,
)
from tests.doubles.report_runs import md_rows, run_config, write_job

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("math", "qa")
LOSSES = ("dpo", "bmc")
SEEDS = (0, 1)
# eval/accuracy and val/rewards/margins of every completed job: (task, loss, seed) -> values
ACCURACY = {
    ("math", "dpo", 0): 0.50,
    ("math", "dpo", 1): 0.60,
    ("math", "bmc", 0): 0.70,
    ("math", "bmc", 1): 0.74,
    ("qa", "dpo", 0): 0.40,
    ("qa", "dpo", 1): 0.44,
    ("qa", "bmc", 0): 0.30,
    ("qa", "bmc", 1): 0.32,
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 tasks x 2 losses x 2 seeds, plus a failed job (math, bmc) and a job without summary (qa, dpo)."""
    root = tmp_path_factory.mktemp("multirun") / "2025-01-01_00-00-00"
    job = 0
    for task in TASKS:
        for loss in LOSSES:
            for seed in SEEDS:
                overrides = [f"task={task}", f"loss={loss}", f"seed={seed}", "logger=csv"]
                metrics = {"eval/accuracy": ACCURACY[task, loss, seed], "val/rewards/margins": 0.1 * seed + job}
                write_job(root / f"{job}_{','.join(overrides)}", overrides, run_config(task, loss, seed), metrics)
                job += 1
    failed = ["task=math", "loss=bmc", "seed=2", "logger=csv"]
    write_job(root / f"{job}_failed", failed, run_config("math", "bmc", 2), {"eval/sft_accuracy": 0.1}, "failed")
    crashed = ["task=qa", "loss=dpo", "seed=2", "logger=csv"]
    write_job(root / f"{job + 1}_crashed", crashed, run_config("qa", "dpo", 2), status=None)
    return root


def fmt(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def test_load_sweep_finds_every_job_and_names_methods(sweep: Path) -> None:
    records = load_sweep(sweep)
    assert len(records) == 10
    assert [r.status for r in records].count("completed") == 8
    assert {r.status for r in records if not r.ok} == {"failed", "missing"}
    assert {r.method for r in records} == {"DPO", "DPO-MC"}  # loss varies; seed and task do not make rows
    assert all(r.method_values.keys() == {"loss"} for r in records)
    crashed = next(r for r in records if r.status == "missing")
    assert (crashed.task, crashed.seed, crashed.method) == ("qa", "2", "DPO")  # from .hydra/ alone


def test_table_mean_std_counts_and_failures(sweep: Path) -> None:
    records = load_sweep(sweep)
    table = comparison_table(records, ["eval/accuracy", "val/rewards/margins"])
    assert table.methods == ["DPO", "DPO-MC"] and table.tasks == ["math", "qa"]
    dpo_math = table.cell("DPO", "math", "eval/accuracy")
    assert dpo_math.n == 2 and dpo_math.failed == 0
    assert dpo_math.mean == pytest.approx(0.55) and dpo_math.std == pytest.approx(statistics.stdev([0.5, 0.6]))
    mc_math = table.cell("DPO-MC", "math", "eval/accuracy")
    assert (mc_math.n, mc_math.failed) == (2, 1)  # the failed seed is counted, not averaged
    assert mc_math.mean == pytest.approx(0.72)
    assert table.cell("DPO", "qa", "eval/accuracy").failed == 1  # the job without summary.json
    assert table.best("math", "eval/accuracy") == {"DPO-MC"} and table.best("qa", "eval/accuracy") == {"DPO"}
    row = md_rows(table.to_markdown())["DPO-MC"]
    assert row[0] == f"**{fmt([0.70, 0.74])}** (n=2, 1 failed)"
    assert row[2] == f"{fmt([0.30, 0.32])} (n=2)"


def test_single_seed_all_failed_and_lower_is_better(sweep: Path) -> None:
    records = [r for r in load_sweep(sweep) if not (r.method == "DPO-MC" and r.task == "math" and r.ok)]
    records = [r for r in records if not (r.method == "DPO" and r.task == "math" and r.seed == "1")]
    table = comparison_table(records, ["eval/accuracy"])
    assert table.text("DPO-MC", "math", "eval/accuracy") == "failed"
    assert table.text("DPO", "math", "eval/accuracy") == "0.500 (n=1)"  # one seed: no ±
    assert math.isnan(table.cell("DPO", "math", "eval/accuracy").std)
    assert lower_is_better("val/loss") and lower_is_better("eval/truncated") and not lower_is_better("eval/score")
    assert Cell([1.0, 1.0]).note() == "(n=2)" and Cell([], failed=2).note() == "failed"


def test_cli_writes_tables_and_plots(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "bmc.report", str(sweep), "--out", str(out), "--metrics", "eval/accuracy"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MPLBACKEND": "Agg"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 of 10 runs did not complete" in proc.stdout
    rows = md_rows((out / "table.md").read_text())
    assert rows["method"] == ["math: eval/accuracy", "qa: eval/accuracy"]
    assert rows["DPO"] == [f"{fmt([0.5, 0.6])} (n=2)", f"**{fmt([0.40, 0.44])}** (n=2, 1 failed)"]
    assert "Runs that did not complete" in (out / "table.md").read_text()
    tex = (out / "table.tex").read_text()
    assert r"\textbf{0.720 $\pm$ 0.028}" in tex and r"eval/accuracy" in tex and r"\multicolumn{1}{c}{qa}" in tex
    with open(out / "table.csv") as handle:
        table = {(r["method"], r["task"]): r for r in csv.DictReader(handle)}
    assert float(table["DPO-MC", "math"]["mean"]) == pytest.approx(0.72)
    assert float(table["DPO-MC", "math"]["std"]) == pytest.approx(statistics.stdev([0.70, 0.74]))
    assert (table["DPO-MC", "math"]["n"], table["DPO-MC", "math"]["failed"]) == ("2", "1")
    pngs = {p.name: p.stat().st_size for p in (out / "plots").glob("*.png")}
    expected = {"curves_math.png", "curves_qa.png", "token_rewards_DPO.png", "token_rewards_DPO-MC.png"}
    assert expected <= set(pngs) and all(size > 1000 for size in pngs.values())
    assert "skipped delta sweep" in proc.stderr  # delta is not swept: said, not silently missing


def test_notebook_runs_on_the_sweep(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "notebooks" / "compare_runs.ipynb"
    notebook = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "commit it without outputs"
    monkeypatch.setenv("BMC_SWEEP", str(sweep))
    monkeypatch.setenv("BMC_REPORT_OUT", str(tmp_path / "nb"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nbclient.NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(path.parent)}}).execute()
    text = json.dumps([c.get("outputs", []) for c in notebook.cells])
    assert "DPO-MC" in text and "image/png" in text
    assert (tmp_path / "nb" / "table.md").is_file()


