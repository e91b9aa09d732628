"""The W&B side of the report: runs read from the W&B API instead of local folders, and the report logged
to an active W&B run. ``wandb`` is imported only here, lazily (it is slow to import and needs no network
until called)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bmc.report.methods import assign_methods
from bmc.report.records import RunRecord
from bmc.report.table import CSV_COLUMNS, Table

log = logging.getLogger("bmc.report")

# W&B run states -> summary.json statuses (a crashed or killed run did not complete either)
_STATES = {"finished": "completed", "failed": "failed", "crashed": "failed", "killed": "failed"}


def fetch_wandb_runs(path: str, group: str | None = None, api: Any = None) -> list[Any]:
    """Runs of ``entity/project`` (optionally one group: a sweep's runs share the group named after its
    ``multirun_outputs/`` folder). Needs network and, for private projects, ``WANDB_API_KEY``."""
    if api is None:
        import wandb

        api = wandb.Api()
    return list(api.runs(path, filters={"group": group} if group else None))


def _mapping(obj: Any) -> dict[str, Any]:
    """A plain dict from W&B's dict-like summary/config objects (or a dict, for fakes)."""
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(getattr(obj, "_json_dict", None), dict):
        return dict(obj._json_dict)
    return {k: obj[k] for k in obj.keys()}


def records_from_wandb(runs: Iterable[Any], method_keys: list[str] | None = None) -> list[RunRecord]:
    """Records from W&B API runs (anything with ``name``, ``state``, ``config``, ``summary``). The config is
    the run's resolved Hydra config, so methods are told apart by config, not overrides."""
    records = []
    for run in runs:
        state = str(getattr(run, "state", "finished"))
        status = _STATES.get(state, state)  # running, pending, ... are kept as they are: not completed
        metrics = {
            k: float(v)
            for k, v in _mapping(getattr(run, "summary", None)).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("_")
        }
        records.append(
            RunRecord(
                name=str(getattr(run, "name", None) or getattr(run, "id", "run")),
                status=status,
                config=_mapping(getattr(run, "config", None)),
                metrics=metrics,
                error=None if status == "completed" else f"W&B state: {state}",
            )
        )
    if records:
        assign_methods(records, method_keys)
    return records


def log_report_to_wandb(table: Table, files: list[Path], run: Any = None, name: str = "report") -> bool:
    """Log the table as a W&B Table (``report/table``) and the report files (tables, PNGs) as an artifact of
    type ``report``, to ``run`` or the active W&B run. Returns whether anything was logged."""
    import wandb

    run = run or wandb.run
    if run is None:
        log.info("not logged to W&B: no active run")
        return False
    data = [[row[c] for c in CSV_COLUMNS] for row in table.rows()]
    run.log({"report/table": wandb.Table(columns=list(CSV_COLUMNS), data=data)})
    artifact = wandb.Artifact(name, type="report")
    for path in files:
        artifact.add_file(str(path), name=Path(path).name if Path(path).suffix != ".png" else f"plots/{path.name}")
    run.log_artifact(artifact)
    return True
