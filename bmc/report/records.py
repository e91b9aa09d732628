"""Runs of a sweep as :class:`RunRecord` objects, and their grouping into methods (table rows).

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
# config groups whose `name` identifies a choice, and the essentials `summary.json` keeps (bmc/pipeline.py)
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
        if isinstance(value, dict):  # a config group: its name is what was chosen
            value = value.get("name")
        return None if value is None else _text(value)

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
        """Lightning CSVLogger's file (``logger=csv``), if the run has one."""
        path = self.path / "csv" / "metrics.csv" if self.path else None
        return path if path and path.is_file() else None

    @property
    def token_rewards_path(self) -> Path | None:
        """``token_rewards.json`` of the TokenRewardLogger callback (``callbacks=default``), if present."""
        path = self.path / "token_rewards.json" if self.path else None
        return path if path and path.is_file() else None


def _text(value: Any) -> str:
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


def load_sweep(path: str | Path, method_keys: list[str] | None = None) -> list[RunRecord]:
    """All runs under a sweep folder (``multirun_outputs/<sweep>``), grouped into methods.

    Records are named by their path relative to the sweep. Raises ``FileNotFoundError`` when there is none.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such sweep folder: {root}")
    records = [load_run(d, name=d.relative_to(root).as_posix() or d.name) for d in find_run_dirs(root)]
    if not records:
        raise FileNotFoundError(f"no runs (summary.json or .hydra/config.yaml) under {root}")
    assign_methods(records, method_keys)
    return records


def latest_sweep(parent: str | Path = "multirun_outputs") -> Path:
    """The most recently modified sweep folder under ``parent`` (sweep names are timestamps)."""
    sweeps = [p for p in Path(parent).iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not sweeps:
        raise FileNotFoundError(f"no sweep folders under {parent}")
    return max(sweeps, key=lambda p: (p.stat().st_mtime, p.name))


# ---------------------------------------------------------------- methods (table rows)


_LOSS_NAMES = {"dpo": "DPO", "ipo": "IPO", "simpo": "SimPO", "rdpo": "R-DPO", "orpo": "ORPO"}


def paper_name(record: RunRecord) -> str | None:
    """The BMC paper's name for a run's setting, or ``None`` when it has none.

    ================================  =====================  =========
    data                              token weighting        name
    ================================  =====================  =========
    original / sampled                uniform                DPO
    pseudo_winning                    uniform                DPO-BC
    original / sampled                bmc                    DPO-MC
    pseudo_winning                    bmc                    DPO-BMC
    ================================  =====================  =========

    for the DPO loss (``loss=bmc`` is DPO with ``token_weighting=bmc``) and no regularizer. IPO, SimPO,
    R-DPO and ORPO get their name on original/sampled data with uniform weighting and ``<name>-BMC`` with
    both BMC phases. ``loss=sft`` with no preference steps (``method=sft``) is SFT, the warm start as is;
    trained (``method=sft_chosen``) it is SFT+chosen, the control that continues SFT on the chosen responses.
    Any other setting has no paper name.
    """
    loss = record.get("loss.name")
    if loss == "sft":
        return "SFT" if record.get("trainer.max_steps", 0) == 0 else "SFT+chosen"
    data = record.get("data.name")
    weighting = record.get("token_weighting.name", "uniform")
    if loss not in _LOSS_NAMES or record.get("regularizer.name", "none") != "none":
        return None
    if data not in ("original", "sampled", "pseudo_winning") or weighting not in ("uniform", "bmc"):
        return None
    bridged, weighted = data == "pseudo_winning", weighting == "bmc"
    if loss == "dpo":
        return {(False, False): "DPO", (True, False): "DPO-BC", (False, True): "DPO-MC", (True, True): "DPO-BMC"}[
            (bridged, weighted)
        ]
    if bridged == weighted:
        return _LOSS_NAMES[loss] + ("-BMC" if weighted else "")
    return None


def config_choices(records: list[RunRecord]) -> list[dict[str, str]]:
    """What distinguishes runs when their overrides are unknown (W&B runs): each config group's name, the
    seed, and every hyper-parameter that differs between runs of the same group names (``loss.beta``)."""
    flat = [_flatten({k: r.config[k] for k in ESSENTIALS if k in r.config}) for r in records]
    names = [{g: r.setting(g) or "-" for g in GROUPS} | {SEED_KEY: r.seed or "-"} for r in records]
    by_names: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for n, f in zip(names, flat):
        by_names.setdefault(tuple(v for k, v in n.items() if k != SEED_KEY), []).append(f)
    leaves = dict.fromkeys(k for f in flat for k in f)  # ordered set
    varying = [
        key
        for key in leaves
        if key != SEED_KEY and any(len({f.get(key) for f in group}) > 1 for group in by_names.values())
    ]
    return [n | {k: f.get(k, "-") for k in varying} for n, f in zip(names, flat)]


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{dotted}."))
        elif key not in ("name", "_target_"):  # names are the groups' choices; targets follow from them
            out[dotted] = _text(value)
    return out


def varying_keys(choices: list[dict[str, str]]) -> list[str]:
    """Keys whose value differs between runs (absent counts as a value), in first-seen order."""
    keys = dict.fromkeys(k for c in choices for k in c)
    return [k for k in keys if len({c.get(k) for c in choices}) > 1]


def assign_methods(records: list[RunRecord], method_keys: list[str] | None = None) -> list[str]:
    """Set each record's ``method`` (row name) and return the method names in sweep order.

    The method is defined by ``method_keys`` or, by default, by the keys that vary across the sweep's jobs
    (their overrides; the config when some job has none), leaving out ``seed`` (replicates) and ``task``
    (columns). Its name is the paper's (:func:`paper_name`) when that is unambiguous, else a label such as
    ``loss=bmc data=pseudo_winning``, or both: ``DPO-BMC (token_weighting.delta=2.0)``.
    """
    if any(r.overrides is None for r in records):
        choices = config_choices(records)
    else:
        choices = [dict(r.overrides or {}) for r in records]
    if method_keys is None:
        method_keys = [k for k in varying_keys(choices) if k not in (SEED_KEY, TASK_KEY)]
    labels: dict[str, set[str | None]] = {}
    for record, choice in zip(records, choices):
        record.method_values = {k: choice[k] if k in choice else (record.setting(k) or "-") for k in method_keys}
        label = " ".join(f"{k}={v}" for k, v in record.method_values.items())
        record.method = label
        names = labels.setdefault(label, set())
        if record.config:  # a job folder with no config at all says nothing about the paper's name
            names.add(paper_name(record))
    # a paper name alone is used only when it names exactly one row; otherwise it prefixes the label
    paper_of = {label: names.pop() if len(names) == 1 else None for label, names in labels.items()}
    counts: dict[str | None, int] = {}
    for paper in paper_of.values():
        counts[paper] = counts.get(paper, 0) + 1
    display = {}
    for label, paper in paper_of.items():
        if paper and (counts[paper] == 1 or not label):
            display[label] = paper
        elif paper:
            display[label] = f"{paper} ({label})"
        else:
            display[label] = label or "run"
    for record in records:
        record.method = display[record.method]
    return list(dict.fromkeys(r.method for r in records))
