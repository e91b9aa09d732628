"""Runs of a sweep as :class:`RunRecord` objects, and their grouping into methods (table rows).

Grouping runs into methods (table rows) and loading a whole sweep is :mod:`bmc.report.methods`.

A run is a folder holding ``summary.json`` or ``.hydra/`` (Hydra writes ``.hydra/`` when a job starts, the
pipeline writes ``summary.json`` when it ends). A job folder without a summary, or with status ``failed``,
is kept as a record that did not complete, so that tables can say so instead of averaging it away.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("bmc.report")

SEED_KEY = "seed"  # the replicate axis: averaged over
TASK_KEY = "task"  # the column axis
# config groups whose preset (or `name`) identifies a choice, and the essentials `summary.json` keeps
# (bmc/stages/summary.py)
GROUPS = ("task", "data", "loss", "token_weighting", "regularizer")
ESSENTIALS = ("task", "data", "loss", "token_weighting", "regularizer", "model", "optim", "sft", "seed")
_SKIP_DIRS = {"wandb", "checkpoints", "csv", "plots"}  # never hold a run of their own (wandb/ holds a copy
# of summary.json, which must not count as a second run)


@dataclass
class RunRecord:
    """One run: its status, resolved config, final metrics, and where its files are (local runs only).

    ``status`` is ``completed``, ``failed`` (summary says so, or W&B state failed/crashed/killed), ``missing``
    (a job folder without ``summary.json``: crashed hard or still running) or ``running`` (W&B).
    ``overrides`` are the job's command-line overrides (``.hydra/overrides.yaml``), ``None`` when unknown.
    ``method`` and ``method_values`` are set by :func:`assign_methods`.
    """

    name: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, float]
    overrides: dict[str, str] | None = None
    path: Path | None = None
    error: str | None = None
    data_report: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    method_values: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def get(self, key: str, default: Any = None) -> Any:
        """A dotted key of the config (``token_weighting.delta``)."""
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def setting(self, key: str) -> str | None:
        """The value of a swept key as text: the override if the job had one, else the config's value."""
        if self.overrides is not None and key in self.overrides:
            return self.overrides[key]
        value = self.get(key)
        if isinstance(value, dict):  # a config group: the preset chosen (loss=bmc), else the group's name
            value = self.get(f"presets.{key}") or value.get("name")
        return None if value is None else text_of(value)

    @property
    def error_line(self) -> str:
        """The first line of the error (tracebacks and Hydra messages run over several)."""
        return (self.error or "").strip().split("\n", 1)[0]

    @property
    def task(self) -> str:
        return str(self.get("task.name") or (self.overrides or {}).get(TASK_KEY) or "-")

    @property
    def seed(self) -> str | None:
        return self.setting(SEED_KEY)

    @property
    def csv_path(self) -> Path | None:
        """Lightning CSVLogger's file (every logger but ``none`` writes it), if the run has one."""
        path = self.path / "csv" / "metrics.csv" if self.path else None
        return path if path and path.is_file() else None

    @property
    def token_rewards_path(self) -> Path | None:
        """``token_rewards.json`` of the TokenRewardLogger callback (``callbacks=default``), if present."""
        path = self.path / "token_rewards.json" if self.path else None
        return path if path and path.is_file() else None


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_overrides(items: list[Any]) -> dict[str, str]:
    """``["loss=bmc", "+foo=1", "~bar"]`` -> ``{"loss": "bmc", "foo": "1", "bar": "~"}``."""
    out: dict[str, str] = {}
    for item in items:
        text = str(item)
        if text.startswith("~"):
            out[text[1:].split("=", 1)[0]] = "~"
            continue
        key, _, value = text.lstrip("+").partition("=")
        out[key] = value
    return out


def _natural_key(text: str) -> list[Any]:
    """Sort job folders as Hydra numbered them (2_... before 10_...)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as error:
        log.warning("cannot read %s: %s", path, error)
        return None


def load_run(folder: str | Path, name: str | None = None) -> RunRecord:
    """Read one run folder (``summary.json`` and/or ``.hydra/``)."""
    folder = Path(folder)
    hydra_cfg = _read_yaml(folder / ".hydra" / "config.yaml")
    overrides = _read_yaml(folder / ".hydra" / "overrides.yaml")
    config: dict[str, Any] = dict(hydra_cfg) if isinstance(hydra_cfg, dict) else {}
    summary_path = folder / "summary.json"
    summary: dict[str, Any] = {}
    status, error = "missing", "no summary.json (the job crashed before writing it, or is still running)"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
            status, error = str(summary.get("status", "failed")), summary.get("error")
        except json.JSONDecodeError as exc:
            status, error = "failed", f"unreadable summary.json: {exc}"
    # the summary's config is resolved (Hydra's config.yaml keeps interpolations): it wins where both exist
    config.update(summary.get("config") or {})
    metrics = {k: float(v) for k, v in (summary.get("metrics") or {}).items() if _is_number(v)}
    return RunRecord(
        name=name or folder.name,
        status=status,
        config=config,
        metrics=metrics,
        overrides=parse_overrides(overrides) if isinstance(overrides, list) else None,
        path=folder,
        error=error,
        data_report=summary.get("data_report") or {},
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every folder under ``root`` (any depth, ``root`` included) that is a run, in Hydra's job order."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if "summary.json" in filenames or (here / ".hydra" / "config.yaml").is_file():
            found.append(here)
            dirnames.clear()  # a run's subfolders are its own files, not more runs
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS]
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def latest_sweep(parent: str | Path = "multirun_outputs") -> Path:
    """The most recently modified sweep folder under ``parent`` (sweep names are timestamps)."""
    sweeps = [p for p in Path(parent).iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not sweeps:
        raise FileNotFoundError(f"no sweep folders under {parent}")
    return max(sweeps, key=lambda p: (p.stat().st_mtime, p.name))
