"""PNG plots of a sweep: training curves, the delta sweep, token-level rewards.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): no global state, no GUI backend, and
``savefig`` renders PNG with Agg whatever backend the caller (a notebook) has selected. Each ``plot_*``
returns ``[(name, figure)]`` and logs why it made nothing when its inputs are absent.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmc.report.records import RunRecord
from bmc.report.round_metrics import plot_rounds
from bmc.report.table import Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("bmc.report")

CURVES = ("train/loss", "train/rewards/margins", "train/delta_w")
DELTA_KEY = "token_weighting.delta"
NamedFigures = list[tuple[str, "Figure"]]


def _figure(**kwargs: Any) -> Figure:
    # imported here so that the tables (and ``--no-plots``) work without matplotlib
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def read_metrics_csv(path: str | Path) -> dict[str, dict[int, float]]:
    """Lightning CSVLogger's ``metrics.csv`` as ``{column: {step: value}}`` (rows are sparse: train and val
    metrics are logged on separate rows, so empty fields are skipped)."""
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                try:
                    series.setdefault(key, {})[step] = float(value)
                except ValueError:
                    continue
    return series


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "plot"


def plot_training_curves(records: list[RunRecord], metrics: tuple[str, ...] = CURVES) -> NamedFigures:
    """Per task, one panel per metric, one line per method: the mean over seeds at each step, with the
    seeds' min-max shaded. Reads ``csv/metrics.csv`` of completed runs (every logger but ``none`` writes it)."""
    with_csv = [(r, read_metrics_csv(p)) for r in records if r.ok and (p := r.csv_path)]
    if not with_csv:
        log.info("skipped training curves: no completed run has csv/metrics.csv (its runs had logger=none)")
        return []
    figures = []
    for task in dict.fromkeys(r.task for r, _ in with_csv):
        runs = [(r, s) for r, s in with_csv if r.task == task]
        present = [m for m in metrics if any(m in s for _, s in runs)]
        if not present:
            log.info("skipped training curves for %s: none of %s in metrics.csv", task, ", ".join(metrics))
            continue
        fig = _figure(figsize=(5 * len(present), 3.6))
        axes = fig.subplots(1, len(present), squeeze=False)[0]
        for ax, metric in zip(axes, present):
            for method in dict.fromkeys(r.method for r, _ in runs):
                seeds = [s[metric] for r, s in runs if r.method == method and metric in s]
                if not seeds:
                    continue
                steps = sorted({step for seed in seeds for step in seed})
                values = [[seed[step] for seed in seeds if step in seed] for step in steps]
                line = ax.plot(steps, [statistics.fmean(v) for v in values], label=f"{method} (n={len(seeds)})")
                if len(seeds) > 1:
                    lows, highs = [min(v) for v in values], [max(v) for v in values]
                    ax.fill_between(steps, lows, highs, color=line[0].get_color(), alpha=0.2, linewidth=0)
            ax.set(title=metric, xlabel="step")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize="small")
        fig.suptitle(f"{task}: training curves (mean over seeds, min-max shaded)")
        figures.append((f"curves_{_slug(task)}", fig))
    return figures


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def plot_delta_sweep(records: list[RunRecord], table: Table, key: str = DELTA_KEY) -> NamedFigures:
    """Each table metric against the BMC weight cap ``delta`` (mean ± std over seeds), per task, one line
    per method setting other than delta. Made only when the sweep varies ``key``."""
    if key not in next((r.method_values for r in records if r.method_values), {}):
        log.info("skipped delta sweep: %s is not one of the swept method keys", key)
        return []
    points: dict[tuple[str, str], dict[float, list[RunRecord]]] = {}
    for r in records:
        delta = _float(r.method_values.get(key))
        if r.ok and delta is not None:
            rest = " ".join(f"{k}={v}" for k, v in r.method_values.items() if k != key) or "all"
            points.setdefault((r.task, rest), {}).setdefault(delta, []).append(r)
    if not points or not table.metrics:
        log.info("skipped delta sweep: no completed run with a numeric %s", key)
        return []
    figures = []
    for task in dict.fromkeys(t for t, _ in points):
        fig = _figure(figsize=(4.5 * len(table.metrics), 3.6))
        axes = fig.subplots(1, len(table.metrics), squeeze=False)[0]
        for ax, metric in zip(axes, table.metrics):
            for (t, rest), by_delta in points.items():
                if t != task:
                    continue
                xs, means, stds = [], [], []
                for delta in sorted(by_delta):
                    values = [r.metrics[metric] for r in by_delta[delta] if metric in r.metrics]
                    if values:
                        xs.append(delta)
                        means.append(statistics.fmean(values))
                        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
                if xs:
                    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=rest)
            ax.set(title=metric, xlabel=key)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize="small")
        fig.suptitle(f"{task}: metrics vs {key} (mean ± std over seeds)")
        figures.append((f"delta_sweep_{_slug(task)}", fig))
    return figures


def _token_label(token: str) -> str:
    """Make whitespace visible and keep tick labels short."""
    return (token.replace(" ", "␣").replace("\n", "⏎") or "∅")[:12]


def plot_token_rewards(records: list[RunRecord], pairs: int = 2, max_tokens: int = 60) -> NamedFigures:
    """The paper's token-level reward picture from ``token_rewards.json`` (``callbacks=default``): for the
    first completed run of each method, a bar per response token of its reward ``beta * log(pi/pi_ref)``,
    the tokens marked by the BMC diff mask in red. Methods are shown side by side (DPO for contrast)."""
    chosen: dict[str, RunRecord] = {}
    for r in records:
        if r.ok and r.token_rewards_path and r.method not in chosen:
            chosen[r.method] = r
    if not chosen:
        log.info("skipped token rewards: no completed run has token_rewards.json (run with callbacks=default)")
        return []
    figures = []
    for method, record in chosen.items():
        data = json.loads(record.token_rewards_path.read_text())  # type: ignore[union-attr]
        examples = [e for e in data.get("examples", []) if e.get("pair", 0) < pairs and e.get("tokens")]
        if not examples:
            log.info("skipped token rewards of %s: no examples in %s", method, record.token_rewards_path)
            continue
        examples.sort(key=lambda e: (e["pair"], e["response"] != "chosen"))
        width = max(6.0, 0.16 * min(max_tokens, max(len(e["tokens"]) for e in examples)))
        fig = _figure(figsize=(width, 2.2 * len(examples)))
        axes = fig.subplots(len(examples), 1, squeeze=False)[:, 0]
        for ax, example in zip(axes, examples):
            tokens = example["tokens"][:max_tokens]
            rewards = example["rewards"][: len(tokens)]
            marked = (example.get("marked") or [0] * len(tokens))[: len(tokens)]
            colors = ["tab:red" if m else "tab:gray" for m in marked]
            ax.bar(range(len(tokens)), rewards, color=colors)
            ax.axhline(0, color="black", linewidth=0.5)
            ax.set_xticks(range(len(tokens)), [_token_label(t) for t in tokens], rotation=90, fontsize=7)
            ax.set_xlim(-0.6, len(tokens) - 0.4)
            ax.set_title(f"pair {example['pair']}, {example['response']}", fontsize=9, loc="left")
            ax.set_ylabel("reward")
        beta = data.get("beta")
        step = data.get("step")
        fig.suptitle(
            f"{method} ({record.task}, seed {record.seed}): token rewards at step {step}, beta={beta}; "
            "red = marked by the diff mask",
            fontsize=9,
        )
        figures.append((f"token_rewards_{_slug(method)}", fig))
    return figures


def save_figures(figures: NamedFigures, out: str | Path, dpi: int = 120) -> list[Path]:
    """Write each figure as ``<out>/<name>.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures:
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def all_plots(records: list[RunRecord], table: Table) -> NamedFigures:
    """Every plot the sweep has inputs for (none, with a log line, without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("skipped plots: matplotlib is not installed")
        return []
    curves = plot_training_curves(records) + plot_delta_sweep(records, table)
    return curves + plot_token_rewards(records) + plot_rounds(records)
