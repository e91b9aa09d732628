"""W&B runs make the same table as run folders, and the report is logged to the given run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bmc.report import (
    comparison_table,
    log_report_to_wandb,
    records_from_wandb,
)
from tests.doubles.report_runs import md_rows, run_config


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
