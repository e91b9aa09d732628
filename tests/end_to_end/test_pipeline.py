"""End to end on tiny presets: the CLI, the SFT cache, a multirun, W&B offline, real-data loaders."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from bmc.pipeline import run
from tests.conftest import run_cli

FAST = ["debug=default"]


def _read_csv_metric(path: Path, key: str) -> list[float]:
    with path.open() as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_train_cli_end_to_end_writes_summary_and_learns(tmp_path: Path, shared_cache: Path) -> None:
    run_dir = tmp_path / "run"
    args = [
        *FAST,
        "logger=csv",
        "trainer.max_steps=24",
        "optim.lr=2e-3",
        "optim.warmup_ratio=0",
        f"paths.cache_dir={shared_cache}",
        f"hydra.run.dir={run_dir}",
    ]
    output = run_cli(args, cwd=tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["config"]["loss"]["name"] == "dpo" and summary["config"]["seed"] == 0
    metrics = summary["metrics"]
    for key in (
        "val/loss",
        "val/rewards/accuracies",
        "val/rewards/margins",
        "val/loss_best",
        "eval/accuracy",
        "eval/sft_accuracy",
        "eval/truncated",
    ):
        assert key in metrics, key
    assert 0.0 <= metrics["eval/accuracy"] <= 1.0 and metrics["eval/num_prompts"] == 8
    assert metrics["train/steps"] == 24
    assert summary["versions"]["torch"] and summary["wall_time_s"] > 0
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert "eval/accuracy" in output  # the printed results table

    assert _read_csv_metric(run_dir / "csv" / "metrics.csv", "train/lr")  # the learning rate is logged
    losses = _read_csv_metric(run_dir / "csv" / "metrics.csv", "train/loss")
    assert len(losses) == 24
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6 - 0.05, losses  # DPO loss went down

    again = run_cli(args[:-1] + [f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path)
    assert "cache hit: sft" in again  # the SFT warm start is reused, not retrained


def test_multirun_writes_one_run_per_seed_under_multirun_outputs(tmp_path: Path, shared_cache: Path) -> None:
    run_cli(["-m", *FAST, "loss=dpo", "seed=0,1", f"paths.cache_dir={shared_cache}"], cwd=tmp_path)
    summaries = sorted((tmp_path / "multirun_outputs").glob("*/*/summary.json"))
    assert len(summaries) == 2
    seeds = sorted(json.loads(p.read_text())["config"]["seed"] for p in summaries)
    assert seeds == [0, 1]


def test_wandb_logger_runs_offline_with_config_and_group(tmp_path: Path, shared_cache: Path) -> None:
    run_dir = tmp_path / "run"
    run_cli(
        [*FAST, "logger=wandb", f"paths.cache_dir={shared_cache}", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env={"WANDB_MODE": ""},
    )
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    files = offline_runs[0] / "files"
    assert json.loads((files / "summary.json").read_text())["status"] == "completed"
    records = next(offline_runs[0].glob("run-*.wandb")).read_bytes()  # config, tags, metrics (protobuf)
    assert b'{"name":"dpo","beta":0.1}' in records and b"task:math" in records and b"val/loss" in records


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _standard_rows(n: int) -> list[dict]:
    return [
        {"question": f"What is {i} plus one?", "good": f" It is {i + 1}.", "bad": f" It is {i + 2}."} for i in range(n)
    ]


def test_hf_prefs_trains_on_a_local_jsonl_with_column_mapping(tmp_path: Path, make_config) -> None:
    path = _write_jsonl(tmp_path / "prefs.jsonl", _standard_rows(30))
    cfg = make_config(
        *FAST,
        "task=hf_prefs",
        f"task.path={path}",
        "task.columns.prompt=question",
        "task.columns.chosen=good",
        "task.columns.rejected=bad",
        "task.sizes.sft_val=4",
        "task.sizes.pref=null",
    )
    metrics = run(cfg)
    assert metrics["data/train_pairs"] == 27  # 30 rows, 10% held out for validation
    assert "val/rewards/accuracies" in metrics and "eval/accuracy" not in metrics  # no verifier


def test_model_hf_loads_a_saved_checkpoint_with_and_without_lora(tmp_path: Path, make_config) -> None:
    from bmc.models import TinyLlama

    model, tokenizer = TinyLlama(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300).build(
        [r["question"] + r["good"] for r in _standard_rows(30)]
    )
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    for lora in ("null", "{r: 4, lora_alpha: 8}"):
        cfg = make_config(*FAST, "model=hf", f"model.path={checkpoint}", f"model.lora={lora}", "sft.enabled=false")
        metrics = run(cfg)
        assert 0.0 <= metrics["eval/accuracy"] <= 1.0
        assert "eval/sft_accuracy" not in metrics  # no SFT stage: the checkpoint is used as is


@pytest.mark.parametrize("task", ["qa", "instruct"])
def test_other_builtin_tasks_run(task: str, make_config) -> None:
    metrics = run(make_config(*FAST, f"task={task}"))
    assert metrics["eval/num_prompts"] == 8 and 0.0 <= metrics["eval/score"] <= 1.0


def test_real_sweep_feeds_the_report(tmp_path: Path, shared_cache: Path) -> None:
    import statistics

    from bmc.report import comparison_table, load_sweep, write_report

    run_cli(
        [
            "-m",
            *FAST,
            "loss=dpo,bmc",
            "seed=0,1",
            "logger=csv",
            "callbacks=default",
            f"paths.cache_dir={shared_cache}",
            "hydra.sweep.dir=multirun_outputs/sweep",
        ],
        cwd=tmp_path,
    )
    sweep = tmp_path / "multirun_outputs" / "sweep"
    records = load_sweep(sweep)
    assert len(records) == 4
    table = comparison_table(records, ["val/rewards/margins"])
    assert len(table.methods) == 2  # one row per loss; seeds are averaged
    for row in table.methods:
        margins = [
            json.loads((r.path / "summary.json").read_text())["metrics"]["val/rewards/margins"]
            for r in records
            if r.method == row
        ]
        cell = table.cell(row, "math", "val/rewards/margins")
        assert cell.n == 2 and sorted(cell.values) == pytest.approx(sorted(margins))
        assert f"{statistics.mean(margins):.3f} ± {statistics.stdev(margins):.3f}" in table.text(
            row, "math", "val/rewards/margins"
        )
    report = write_report(records, sweep, ["val/rewards/margins"])
    assert (sweep / "table.md").exists() and (sweep / "table.tex").exists() and (sweep / "table.csv").exists()
    assert any(p.suffix == ".png" and p.stat().st_size > 0 for p in (sweep / "plots").iterdir())
    assert report.table is not None


def test_a_failing_multirun_job_does_not_stop_the_others(tmp_path: Path, shared_cache: Path) -> None:
    from bmc.report import comparison_table, load_sweep

    output = run_cli(["-m", *FAST, "loss.beta=-1,0.1", f"paths.cache_dir={shared_cache}",
                      "hydra.sweep.dir=multirun_outputs/sweep"], cwd=tmp_path)  # fmt: skip
    assert "the sweep goes on" in output
    summaries = {
        p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "multirun_outputs/sweep").glob("*/summary.json")
    }
    assert sorted(s["status"] for s in summaries.values()) == ["completed", "failed"]
    failed = next(s for s in summaries.values() if s["status"] == "failed")
    assert "beta" in failed["error"]
    table = comparison_table(load_sweep(tmp_path / "multirun_outputs/sweep"), ["val/loss"])
    assert sum(table.cell(m, "math", "val/loss").failed for m in table.methods) == 1  # shown, not averaged


def test_a_failing_single_run_exits_non_zero(tmp_path: Path, shared_cache: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(Path(__file__).parents[2] / "train.py"), *FAST, "loss.beta=-1",
                           f"paths.cache_dir={shared_cache}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "beta" in proc.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_sft_cache_is_shared_across_run_seeds_and_keyed_on_what_changes_sft(make_config) -> None:
    from hydra.utils import instantiate

    from bmc.stages.warm_start import warm_start

    cfg = make_config(*FAST)
    task_data, source = instantiate(cfg.task), instantiate(cfg.model)
    first = warm_start(cfg, task_data, source).checkpoint
    assert warm_start(make_config(*FAST, "seed=3", "optim.lr=1e-3"), task_data, source).checkpoint == first
    for change in ("trainer.gradient_clip_val=0.5", "sft.steps=3", "model.hidden_size=64"):
        assert warm_start(make_config(*FAST, change), task_data, source if "model" not in change else
                          instantiate(make_config(*FAST, change).model)).checkpoint != first, change  # fmt: skip


def test_a_training_run_never_imports_datasets(tmp_path: Path) -> None:
    """``datasets`` (with pyarrow and pandas, about 80 MB resident) is for loading hub datasets and non-JSON files
    only: the DataModules, the JSON reader and the sampling and reference-log-prob caches do without it."""
    import subprocess

    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from tests.conftest import compose_config; "
        "from bmc.pipeline import run; "
        f"cfg = compose_config({FAST!r} + sys.argv[4:], sys.argv[2], sys.argv[3]); run(cfg); "
        "print('heavy:', sorted({'datasets', 'pyarrow', 'pandas'} & set(sys.modules)))"
    )

    def heavy_imports(name: str, *overrides: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", script, str(Path(__file__).parents[2]), str(tmp_path / name),
             str(tmp_path / "cache"), *overrides],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.rsplit("heavy:", 1)[-1].strip()

    for cache in ("miss", "hit"):
        assert heavy_imports(cache, "data=sampled", "loss=bmc") == "[]", cache
    jsonl = _write_jsonl(tmp_path / "prefs.jsonl", _standard_rows(30))
    columns = ["task.columns.prompt=question", "task.columns.chosen=good", "task.columns.rejected=bad"]
    assert heavy_imports("jsonl", "task=hf_prefs", f"task.path={jsonl}", *columns, "task.sizes.sft_val=4") == "[]"
