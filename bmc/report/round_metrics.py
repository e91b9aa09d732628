"""Online iterative rounds across a sweep (``rounds > 1``, :mod:`bmc.stages.rounds`): each method's metrics
round by round, mean ± std over seeds, as ``rounds.md`` and ``plots/rounds_<task>.png``.

A run of R rounds has its round ``t``'s metrics as ``round/<t>/<metric>`` in ``summary.json``; a run of one
round (the single run, e.g. the same-prompts baseline of ``experiment=iterative``) has one column, round 1,
from its final metrics, and is drawn as a dashed level across the rounds."""

from __future__ import annotations

import logging
import re
import statistics
from typing import TYPE_CHECKING

from bmc.report.records import RunRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("bmc.report")

#: what the table and plots show of each round: the final evaluation, then the round's data
METRICS = ("eval/accuracy", "data/pairs_out", "data/edit_distance_before")
_ROUND_KEY = re.compile(r"^round/(\d+)/(.+)$")
#: the warm start's measure of a metric: round 0
START = {"eval/accuracy": "eval/sft_accuracy", "eval/score": "eval/sft_score"}


def per_round(record: RunRecord, metric: str) -> dict[int, float]:
    """``{round: value}`` of ``metric`` for one run (round 1 alone, from its final metrics, for a single run;
    round 0 the warm start's value where the run has it)."""
    rounds = {int(m[1]): v for k, v in record.metrics.items() if (m := _ROUND_KEY.match(k)) and m[2] == metric}
    if not rounds and metric in record.metrics:
        rounds = {1: record.metrics[metric]}
    start = record.metrics.get(START.get(metric, ""))
    return rounds if start is None or not rounds else {0: start, **rounds}


def has_rounds(records: list[RunRecord]) -> bool:
    return any(_ROUND_KEY.match(k) for r in records for k in r.metrics)


def round_values(records: list[RunRecord], metric: str) -> dict[tuple[str, str], dict[int, list[float]]]:
    """``{(task, method): {round: [value per seed]}}`` over the completed runs."""
    values: dict[tuple[str, str], dict[int, list[float]]] = {}
    for record in records:
        if record.ok:
            for t, value in per_round(record, metric).items():
                values.setdefault((record.task, record.method), {}).setdefault(t, []).append(value)
    return values


def _cell(values: list[float], decimals: int) -> str:
    if not values:
        return "-"
    sd = f" ± {statistics.stdev(values):.{decimals}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.{decimals}f}{sd} (n={len(values)})"


def rounds_markdown(records: list[RunRecord], metrics: tuple[str, ...] = METRICS, decimals: int = 3) -> str:
    """One markdown table per metric: a row per task and method, a column per round; empty when no run has
    rounds."""
    if not has_rounds(records):
        return ""
    sections = [
        "Each cell: mean ± std over seeds (n = seeds). Round 0: the warm start (π_0). A one-round run fills "
        "round 1 only.\n"
    ]
    for metric in metrics:
        values = round_values(records, metric)
        if not values:
            continue
        shown = sorted({t for by_round in values.values() for t in by_round})
        shown = list(range(shown[0], shown[-1] + 1))
        header = ["task", "method", *(f"round {t}" for t in shown)]
        lines = [f"### {metric}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (task, method), by_round in values.items():
            cells = [_cell(by_round.get(t, []), decimals) for t in shown]
            lines.append("| " + " | ".join([task, method, *cells]) + " |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def plot_rounds(records: list[RunRecord], metrics: tuple[str, ...] = METRICS) -> list[tuple[str, Figure]]:
    """Per task, each metric against the round (mean ± std over seeds), a line per method; a one-round
    method is a dashed level. None when no run has rounds."""
    if not has_rounds(records):
        log.info("skipped rounds plot: no run of several rounds")
        return []
    from matplotlib.figure import Figure

    by_metric = {metric: round_values(records, metric) for metric in metrics}
    shown = [m for m in metrics if by_metric[m]]
    figures = []
    for task in dict.fromkeys(r.task for r in records if r.ok):
        fig = Figure(layout="constrained", figsize=(4.5 * len(shown), 3.6))
        axes = fig.subplots(1, len(shown), squeeze=False)[0]
        methods = list(dict.fromkeys(r.method for r in records if r.ok and r.task == task))
        colors = {method: f"C{i}" for i, method in enumerate(methods)}  # one colour per method in every panel
        for ax, metric in zip(axes, shown):
            last = max(t for by_round in by_metric[metric].values() for t in by_round)
            for (t_name, method), by_round in by_metric[metric].items():
                if t_name != task:
                    continue
                xs = sorted(by_round)
                means = [statistics.fmean(by_round[x]) for x in xs]
                stds = [statistics.stdev(by_round[x]) if len(by_round[x]) > 1 else 0.0 for x in xs]
                if xs[-1] == 1:  # one round (with its start, round 0): its final value as a level
                    ax.axhline(means[-1], linestyle="--", linewidth=1, label=method, color=colors[method])
                else:
                    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method, color=colors[method])
            ax.set(title=metric, xlabel="round (0: the warm start)", xticks=range(0, last + 1))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize="small")
        fig.suptitle(f"{task}: metrics by round (mean ± std over seeds)")
        figures.append((f"rounds_{re.sub(r'[^A-Za-z0-9_.-]+', '_', task)}", fig))
    return figures
