"""Runs grouped into methods, the rows of a table: the paper's name of a setting where it has one
(:func:`paper_name`), else a label of the keys that vary across the sweep (:func:`assign_methods`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bmc.report.records import (
    ESSENTIALS,
    GROUPS,
    SEED_KEY,
    TASK_KEY,
    RunRecord,
    find_run_dirs,
    load_run,
    text_of,
)


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



_LOSS_NAMES = {"dpo": "DPO", "ipo": "IPO", "simpo": "SimPO", "rdpo": "R-DPO", "orpo": "ORPO"}
#: the rivals of METHODS.md section 6, by (loss, data, token weighting): token-level on sampled pairs, listwise on
#: IPR's full rankings
_RIVAL_NAMES = {
    ("tdpo1", "sampled", "uniform"): "TDPO1",
    ("tdpo2", "sampled", "uniform"): "TDPO2",
    ("dpo", "sampled", "confpo"): "DPO-ConfPO",
    ("dpo_pl", "ipr", "uniform"): "IPR-PL",
    ("dpo_pl", "ipr", "bmc"): "IPR-PL-BMC",
    ("lipo", "ipr", "uniform"): "IPR-LiPO",
    ("infonca", "ipr", "uniform"): "IPR-InfoNCA",
}


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

    for the DPO loss (``loss=bmc`` is DPO with ``token_weighting=bmc``). IPO, SimPO, R-DPO and ORPO get their
    name on original/sampled data with uniform weighting and ``<name>-BMC`` with both BMC phases. DPO on pairs
    from iterative pairwise ranking (``data=ipr``) is IPR. The rivals of METHODS.md section 6: TDPO1, TDPO2 and
    DPO-ConfPO on sampled pairs; IPR-PL (Plackett-Luce DPO), IPR-PL-BMC, IPR-LiPO and IPR-InfoNCA on IPR's full
    rankings. A regularizer appends its name: DPO+BCR.
    ``loss=sft`` with no preference steps (``method=sft``) is SFT, the warm start as is; trained
    (``method=sft_chosen``) it is SFT+chosen, the control that continues SFT on the chosen responses.
    Any other setting has no paper name.
    """
    loss = record.get("loss.name")
    if loss == "sft":
        return "SFT" if record.get("trainer.max_steps", 0) == 0 else "SFT+chosen"
    name = _unregularized_name(loss, record.get("data.name"), record.get("token_weighting.name", "uniform"))
    regularizer = record.get("regularizer.name", "none")
    return name if name is None or regularizer == "none" else f"{name}+{regularizer.upper()}"


def _unregularized_name(loss: str | None, data: str | None, weighting: str) -> str | None:
    if (loss, data, weighting) in _RIVAL_NAMES:
        return _RIVAL_NAMES[loss, data, weighting]
    if loss not in _LOSS_NAMES or weighting not in ("uniform", "bmc"):
        return None
    if data == "ipr":
        return "IPR" if (loss, weighting) == ("dpo", "uniform") else None
    if data not in ("original", "sampled", "pseudo_winning"):
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
            out[dotted] = text_of(value)
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
