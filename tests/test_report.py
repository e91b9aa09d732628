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
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from bmc.report import (
    Cell,
    RunRecord,
    comparison_table,
    load_sweep,
    log_report_to_wandb,
    lower_is_better,
    mark_extrapolated_lc,
    paper_name,
    records_from_wandb,
    write_report,
)
from bmc.report.length_control import EXTRAPOLATED, MARK_EXTRAPOLATED

ROOT = Path(__file__).resolve().parents[1]
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


def run_config(task: str, loss: str, seed: int, data: str = "original", delta: float = 2.5) -> dict[str, Any]:
    """The essentials of summary.json's config as the pipeline writes them (loss=bmc is DPO + BMC weights)."""
    weighting = {"name": "bmc", "delta": delta, "ref_weights": "own"} if loss == "bmc" else {"name": "uniform"}
    return {
        "task": {"name": task, "seed": 0},
        "data": {"name": data, "pairs": data},
        "loss": {"name": "dpo", "beta": 0.05 if loss == "bmc" else 0.1},
        "token_weighting": weighting,
        "regularizer": {"name": "none"},
        "model": {"hidden_size": 8},
        "optim": {"lr": 1e-4},
        "sft": {"steps": 4},
        "seed": seed,
    }


def write_job(
    folder: Path,
    overrides: list[str],
    config: dict[str, Any],
    metrics: dict[str, float] | None = None,
    status: str | None = "completed",
    curves: bool = True,
) -> None:
    """A Hydra job folder: .hydra/ always; summary.json unless ``status`` is None; csv and token rewards."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "batch_size": 4}))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is None:
        return
    error = "RuntimeError: out of memory" if status == "failed" else None
    summary = {"status": status, "metrics": metrics or {}, "config": config, "error": error, "data_report": {}}
    (folder / "summary.json").write_text(json.dumps(summary))
    if curves:
        (folder / "csv").mkdir()
        with open(folder / "csv" / "metrics.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "step", "train/delta_w", "train/loss", "train/rewards/margins", "val/loss"])
            for step in range(4):
                writer.writerow([0, step, -0.01 * step, 0.69 - 0.01 * step, 0.02 * step, ""])
            writer.writerow([0, 3, "", "", "", 0.66])
        tokens = [" 1", "2", " +", " 3"]
        examples = [
            {"pair": p, "response": r, "tokens": tokens, "rewards": [0.01, -0.02, 0.0, 0.03], "marked": [0, 1, 0, 1]}
            for r in ("chosen", "rejected")
            for p in range(2)
        ]
        (folder / "token_rewards.json").write_text(json.dumps({"step": 3, "beta": 0.1, "examples": examples}))


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


def md_rows(text: str) -> dict[str, list[str]]:
    """Rows of the first markdown table in ``text``, by their first cell (the header row under "method")."""
    rows = {}
    for line in text.split("\n\n")[0].splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


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


def test_delta_sweep_plot_and_paper_names(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for job, (data, delta, seed) in enumerate((d, x, s) for d in ("pseudo_winning",) for x in (1, 3) for s in (0, 1)):
        overrides = ["loss=bmc", f"data={data}", f"token_weighting.delta={delta}", f"seed={seed}"]
        config = run_config("math", "bmc", seed, data=data, delta=float(delta))
        write_job(root / f"{job}", overrides, config, {"eval/accuracy": 0.1 * delta + 0.01 * seed}, curves=False)
    records = load_sweep(root)
    assert {r.method for r in records} == {"DPO-BMC (token_weighting.delta=1)", "DPO-BMC (token_weighting.delta=3)"}
    report = write_report(records, tmp_path / "out")
    assert [p.name for p in report.plots] == ["delta_sweep_math.png"]  # no csv, no token rewards: skipped
    names = {
        ("original", "dpo", "uniform"): "DPO",
        ("pseudo_winning", "dpo", "uniform"): "DPO-BC",
        ("sampled", "dpo", "bmc"): "DPO-MC",
        ("pseudo_winning", "dpo", "bmc"): "DPO-BMC",
        ("original", "sft", "uniform"): "SFT",
        ("sampled", "ipo", "uniform"): "IPO",
        ("pseudo_winning", "simpo", "bmc"): "SimPO-BMC",
        ("pseudo_winning", "ipo", "uniform"): None,  # half of BMC on another loss has no paper name
        ("original", "hinge", "uniform"): None,
        ("ipr", "dpo", "uniform"): "IPR",
        ("ipr", "dpo", "bmc"): None,
    }
    for (data, loss, weighting), name in names.items():
        config = {"data": {"name": data}, "loss": {"name": loss}, "token_weighting": {"name": weighting}}
        assert paper_name(RunRecord("r", "completed", config, {})) == name
    dpo_bcr = {"data": {"name": "sampled"}, "loss": {"name": "dpo"}, "regularizer": {"name": "bcr"}}
    assert paper_name(RunRecord("r", "completed", dpo_bcr, {})) == "DPO+BCR"
    hinge_bcr = {"data": {"name": "sampled"}, "loss": {"name": "hinge"}, "regularizer": {"name": "bcr"}}
    assert paper_name(RunRecord("r", "completed", hinge_bcr, {})) is None
    # method=sft evaluates the warm start (max_steps 0); method=sft_chosen trains it on the chosen responses
    sft = {"data": {"name": "sampled"}, "loss": {"name": "sft"}, "token_weighting": {"name": "uniform"}}
    assert paper_name(RunRecord("r", "completed", {**sft, "trainer": {"max_steps": 0}}, {})) == "SFT"
    assert paper_name(RunRecord("r", "completed", {**sft, "trainer": {"max_steps": -1}}, {})) == "SFT+chosen"


def test_an_extrapolated_length_controlled_win_rate_is_marked(tmp_path: Path) -> None:
    # the brief's case: every policy answer shorter than the baseline's, raw 0.05 beside LC 0.70
    def run(name: str, method: str, lc: float, extrapolated: float) -> RunRecord:
        metrics = {"eval/winrate": 0.05, "eval/winrate_lc": lc, "eval/winrate_lc_phi": 2.5}
        record = RunRecord(name, "completed", {"task": {"name": "chat"}}, {**metrics, EXTRAPOLATED: extrapolated})
        record.method = method
        return record

    records = [run("a0", "DPO", 0.70, 1.0), run("a1", "DPO", 0.60, 0.0), run("b0", "IPO", 0.10, 0.0)]
    report = write_report(records, tmp_path / "out", plots=False)
    table = report.table
    assert table.metrics == ["eval/winrate", "eval/winrate_lc", "eval/winrate_lc_phi"]  # φ is a default column
    assert table.marks == {("DPO", "chat", "eval/winrate_lc"): MARK_EXTRAPOLATED}  # any seed extrapolated: marked
    row = md_rows(table.to_markdown())["DPO"]
    assert row[1] == "**0.650 ± 0.071** † (n=2)" and row[0] == "0.050 ± 0.000 (n=2)" and row[2] == "2.500 ± 0.000 (n=2)"
    note = (
        "†: length-controlled win rate extrapolated in at least one seed (1 of 3 runs): every policy answer was as "
        "long as the baseline's or longer, or every one as short or shorter"
    )
    assert note in (tmp_path / "out" / "table.md").read_text()
    assert r"\textbf{0.650 $\pm$ 0.071} $\dagger$ (n=2)" in table.to_latex()
    with open(tmp_path / "out" / "table.csv") as handle:
        marks = {(r["method"], r["metric"]): r["mark"] for r in csv.DictReader(handle) if r["mark"]}
    assert marks == {("DPO", "eval/winrate_lc"): MARK_EXTRAPOLATED}
    # no run extrapolated: no mark, no note
    clean = comparison_table([run("c0", "DPO", 0.6, 0.0)])
    mark_extrapolated_lc(clean, [run("c0", "DPO", 0.6, 0.0)])
    assert not clean.marks and not clean.notes


def fake_wandb_runs() -> list[SimpleNamespace]:
    """What ``wandb.Api().runs`` returns, reduced to the attributes the report reads."""
    runs = []
    for loss, seed, state, accuracy in (
        ("dpo", 0, "finished", 0.5),
        ("dpo", 1, "finished", 0.7),
        ("bmc", 0, "finished", 0.8),
        ("bmc", 1, "crashed", 0.0),
    ):
        config = {**run_config("math", loss, seed), "paths": {"output_dir": f"/runs/{loss}{seed}"}}
        summary = {"eval/accuracy": accuracy, "_step": 6, "_runtime": 3.0, "note": "text"}
        runs.append(SimpleNamespace(name=f"{loss}-{seed}", state=state, config=config, summary=summary))
    return runs


def test_wandb_runs_make_the_same_table() -> None:
    records = records_from_wandb(fake_wandb_runs())
    assert [r.status for r in records] == ["completed", "completed", "completed", "failed"]
    assert {r.method for r in records} == {"DPO", "DPO-MC"}  # the output dir differs per run: not a method key
    table = comparison_table(records, ["eval/accuracy"])
    dpo, mc = table.cell("DPO", "math", "eval/accuracy"), table.cell("DPO-MC", "math", "eval/accuracy")
    assert (dpo.n, dpo.mean, mc.n, mc.failed) == (2, pytest.approx(0.6), 1, 1)
    assert md_rows(table.to_markdown())["DPO-MC"] == ["**0.800** (n=1, 1 failed)"]


def test_log_report_to_wandb_uses_the_given_run(tmp_path: Path) -> None:
    logged: list[Any] = []
    run = SimpleNamespace(log=logged.append, log_artifact=logged.append)
    table = comparison_table(records_from_wandb(fake_wandb_runs()), ["eval/accuracy"])
    (path := tmp_path / "table.md").write_text(table.to_markdown())
    assert log_report_to_wandb(table, [path], run=run)
    wandb_table, artifact = logged
    assert wandb_table["report/table"].columns[:3] == ["method", "task", "metric"]
    assert len(wandb_table["report/table"].data) == 2 and artifact.type == "report"


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


def test_data_reports_table_has_one_row_per_task_and_data_setting() -> None:
    from bmc.report.data_reports import data_reports_markdown

    sampled = {"data": {"name": "sampled", "pairs": "sampled"}, "task": {"name": "math"}}
    bridged = {"data": {"name": "pseudo_winning", "pairs": "sampled", "bridge": {"fraction": 1.0}},
               "task": {"name": "math"}}  # fmt: skip
    ipr = {"data": {"name": "ipr", "pairs": "ipr"}, "judge": {"kind": "verifier"}, "task": {"name": "math"}}
    report = {"prompts_in": 64, "pairs_out": 58, "edit_distance_before": 36.156, "dropped": {"no wrong sample": 6}}
    mixed = {"data": {"name": "original", "pairs": "original"}, "task": {"name": "hf_prefs"}}
    mixture = {"prompts_in": 10, "pairs_out": 10, "sources": {"a.jsonl": 7, "b.jsonl": 3},
               "extra_columns": ["prompt_id", "task_source"], "dropped": {"read a.jsonl: empty chosen": 1}}  # fmt: skip
    edits = {**report, "pairs_out": 24, "edit_distance_after": 7.5, "edits_accepted": 0.375,
             "editor_failure_share": 0.0625, "dropped": {"edit no fix": 34, "edit truncated": 4,
                                                         "no wrong sample": 6}}  # fmt: skip
    records = [
        RunRecord("a", "completed", sampled, {}, data_report=report),
        RunRecord("b", "completed", sampled, {}, data_report={**report, "pairs_out": 1}),  # same data: not repeated
        RunRecord("c", "completed", bridged, {}, data_report=edits),
        RunRecord("d", "completed", ipr, {}, data_report={"prompts_in": 64, "pairs_out": 40, "judge_unparseable": 3,
                  "judge_truncated": 1, "judge_failure_share": 0.25, "dropped": {"truncated chosen": 2},
                  "judge_calls": 458, "comparisons_per_prompt": 7.0}),
        RunRecord("f", "completed", mixed, {}, data_report=mixture),
        RunRecord("g", "completed", ipr, {}, data_report={"prompts_in": 64, "pairs_out": 60, "ranking": "full",
                  "judge_calls": 404, "comparisons_per_prompt": 3.15625, "list_sizes": {"3": 12, "4": 20, "5": 28},
                  "dropped": {"all tied after ranking": 4}}),
        RunRecord("e", "failed", ipr, {}, data_report={"prompts_in": 1}),
    ]
    lines = data_reports_markdown(records).splitlines()
    assert len(lines) == 7
    assert "| judge replies without verdict | judge replies cut off | judge failure share |" in lines[0]
    assert "| edits accepted | editor failure share |" in lines[0]
    assert lines[2] == (
        "| math | sampled | 64 | - | - | 58 | 36.16 | - | - | - | - | - | - | - | - | - | - | - | - "
        "| no wrong sample: 6 |"
    )
    # the share of the editor's replies without an edit; the edits its token budget cut off
    assert lines[3] == (
        "| math | pseudo_winning (sampled) | 64 | - | - | 24 | 36.16 | 7.50 | 0.38 | 0.06 | - | - | - | - | - | - "
        "| - | - | - | edit no fix: 34; edit truncated: 4; no wrong sample: 6 |"
    )
    # an LLM judge's replies without a verdict (ties), those cut off, their share; prompts without a complete sample
    assert lines[4] == (
        "| math | ipr (judge verifier) | 64 | - | - | 40 | - | - | - | - | - | 3 | 1 | 0.25 | - | - | 458 | 7 | - "
        "| truncated chosen: 2 |"
    )
    # a mixture of files: pairs per source and the extra columns its rows carried
    assert lines[5] == (
        "| hf_prefs | original | 10 | - | - | 10 | - | - | - | - | - | - | - | - | a.jsonl: 7; b.jsonl: 3 "
        "| prompt_id, task_source | - | - | - | read a.jsonl: empty chosen: 1 |"
    )
    # IPR's full ranking: its own row, with the judge's calls, comparisons per prompt and the lists' sizes
    assert lines[6] == (
        "| math | ipr, full ranking (judge verifier) | 64 | - | - | 60 | - | - | - | - | - | - | - | - | - | - | 404 "
        "| 3.16 | 3: 12; 4: 20; 5: 28 | all tied after ranking: 4 |"
    )
    assert data_reports_markdown([RunRecord("x", "completed", sampled, {})]) == ""
