"""A run folder as a finished training job writes it (config, summary, metrics), and the rows of a markdown table: the
report's tests read such sweeps."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml


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


def md_rows(text: str) -> dict[str, list[str]]:
    """Rows of the first markdown table in ``text``, by their first cell (the header row under "method")."""
    rows = {}
    for line in text.split("\n\n")[0].splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows
