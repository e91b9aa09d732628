"""The comparison table: one row per method, one column per (task, metric), ``mean ± std (n=k)`` over seeds."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmc.report.data_reports import data_reports_markdown
from bmc.report.records import RunRecord
from bmc.report.round_metrics import rounds_markdown

# shown when the caller names none (those that no run has are dropped)
DEFAULT_METRICS = (
    "eval/accuracy",
    "eval/score",
    "eval/winrate",
    "eval/winrate_lc",
    "eval/winrate_lc_phi",
    "val/rewards/accuracies",
    "val/rewards/margins",
    "val/delta_w",
)
CSV_COLUMNS = ("method", "task", "metric", "mean", "std", "n", "failed", "missing", "mark")


def lower_is_better(metric: str) -> bool:
    """Which way "best" points: losses, NLLs and truncation rates are better low, everything else high."""
    leaf = metric.rsplit("/", 1)[-1]
    return "loss" in leaf or leaf.startswith(("nll", "truncated"))


@dataclass
class Cell:
    """The seeds of one (method, task, metric).

    ``failed`` counts the method's runs on this task that did not complete (failed, no summary, still
    running): they are reported, never averaged. ``missing`` counts completed runs without this metric.
    """

    values: list[float] = field(default_factory=list)
    failed: int = 0
    missing: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1); NaN with fewer than two seeds."""
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def value_text(self, decimals: int) -> str:
        """``0.612 ± 0.011`` (no ± for one seed); empty when no run has the metric."""
        if not self.values:
            return ""
        if self.n == 1:
            return f"{self.mean:.{decimals}f}"
        return f"{self.mean:.{decimals}f} ± {self.std:.{decimals}f}"

    def note(self) -> str:
        """``(n=2, 1 failed)``, or ``failed`` when no run succeeded, or ``-`` when there is nothing."""
        if not self.values:
            return "failed" if self.failed else "-"
        parts = [f"n={self.n}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.missing:
            parts.append(f"{self.missing} without metric")
        return f"({', '.join(parts)})"


@dataclass
class Table:
    """Cells keyed by ``(method, task, metric)``; rows and columns keep the sweep's order."""

    methods: list[str]
    tasks: list[str]
    metrics: list[str]
    cells: dict[tuple[str, str, str], Cell]
    decimals: int = 3
    # symbols after a cell's value (bmc.report.significance: beyond noise against a baseline row, or prompt noise
    # only; bmc.report.length_control: an extrapolated LC) and the notes under the table that say what they mean
    marks: dict[tuple[str, str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[tuple[str, str]]:
        return [(task, metric) for task in self.tasks for metric in self.metrics]

    def cell(self, method: str, task: str, metric: str) -> Cell:
        return self.cells.get((method, task, metric), Cell())

    def mark(self, method: str, task: str, metric: str, symbol: str) -> None:
        """Add ``symbol`` to the cell's marks (a cell can carry several, each explained by a note)."""
        key = (method, task, metric)
        self.marks[key] = self.marks.get(key, "") + symbol

    def best(self, task: str, metric: str) -> set[str]:
        """Methods whose mean, as displayed, is the column's best; none when fewer than two have a value or
        when all tie (bold would then say nothing)."""
        shown = {m: round(c.mean, self.decimals) for m in self.methods if (c := self.cell(m, task, metric)).values}
        target = (min if lower_is_better(metric) else max)(shown.values(), default=None)
        best = {m for m, v in shown.items() if v == target}
        return best if len(best) < len(shown) else set()

    def text(self, method: str, task: str, metric: str, bold: Callable[[str], str] = lambda s: s) -> str:
        """A cell as ``mean ± std (n=k, ...)``, the value part passed through ``bold`` when it is the best."""
        cell = self.cell(method, task, metric)
        value = cell.value_text(self.decimals)
        if not value:
            return cell.note()
        if method in self.best(task, metric):
            value = bold(value)
        mark = self.marks.get((method, task, metric), "")
        return f"{value}{' ' + mark if mark else ''} {cell.note()}"

    def rows(self) -> list[dict[str, Any]]:
        """Raw numbers, one row per cell (the CSV and the W&B table); NaN std for a single seed."""
        return [
            {
                "method": method,
                "task": task,
                "metric": metric,
                "mean": (c := self.cell(method, task, metric)).mean,
                "std": c.std,
                "n": c.n,
                "failed": c.failed,
                "missing": c.missing,
                "mark": self.marks.get((method, task, metric), ""),
            }
            for method in self.methods
            for task, metric in self.columns
        ]

    def to_markdown(self) -> str:
        header = ["method", *(f"{task}: {metric}" for task, metric in self.columns)]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in self.methods:
            cells = [self.text(method, t, m, bold=lambda s: f"**{s}**") for t, m in self.columns]
            lines.append("| " + " | ".join(_md_escape(x) for x in [method, *cells]) + " |")
        for note in self.notes:
            lines += ["", note]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        """A booktabs ``tabular``: tasks as spanning headers over their metrics."""
        k = len(self.metrics)
        lines = [r"\begin{tabular}{l" + "c" * len(self.columns) + "}", r"\toprule"]
        spans = [rf"\multicolumn{{{k}}}{{c}}{{{_tex(t)}}}" for t in self.tasks]
        lines.append(" & ".join(["", *spans]) + r" \\")
        lines.append("".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(self.tasks))))
        lines.append(" & ".join(["Method", *(_tex(m) for _, m in self.columns)]) + r" \\")
        lines.append(r"\midrule")
        for method in self.methods:
            cells = [_tex(self.text(method, t, m, bold=lambda s: f"\x00{s}\x01")) for t, m in self.columns]
            # bold markers survive escaping as control characters, then become \textbf{...}
            cells = [c.replace("\x00", r"\textbf{").replace("\x01", "}") for c in cells]
            lines.append(" & ".join([_tex(method), *cells]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if self.notes:  # under the tabular, where a table float's caption or notes would go
            lines += [r"\par\smallskip", r"{\footnotesize", *(_tex(note) + r"\par" for note in self.notes), "}"]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
        return buffer.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "▲": r"$\blacktriangle$",  # amssymb
    "▼": r"$\blacktriangledown$",
    "◦": r"$\circ$",
    "†": r"$\dagger$",
    "α": r"$\alpha$",
    "σ": r"$\sigma$",
    "θ": r"$\theta$",
    "–": "--",
}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def available_metrics(records: list[RunRecord]) -> list[str]:
    """The default metrics that at least one run has; the headline one when none has any (all failed), so
    that the table still shows the failures."""
    return [m for m in DEFAULT_METRICS if any(m in r.metrics for r in records)] or [DEFAULT_METRICS[0]]


def comparison_table(records: list[RunRecord], metrics: list[str] | None = None, decimals: int = 3) -> Table:
    """Aggregate records (grouped by :func:`~bmc.report.records.assign_methods`) over seeds."""
    metrics = list(metrics) if metrics else available_metrics(records)
    methods = list(dict.fromkeys(r.method for r in records))
    tasks = list(dict.fromkeys(r.task for r in records))
    cells: dict[tuple[str, str, str], Cell] = {}
    for record in records:
        for metric in metrics:
            cell = cells.setdefault((record.method, record.task, metric), Cell())
            if not record.ok:
                cell.failed += 1
            elif metric in record.metrics and not math.isnan(record.metrics[metric]):
                cell.values.append(record.metrics[metric])
            else:
                cell.missing += 1
    return Table(methods=methods, tasks=tasks, metrics=metrics, cells=cells, decimals=decimals)


def runs_markdown(records: list[RunRecord]) -> str:
    """Every run with its method, task, seed and status; the error of those that did not complete."""
    lines = ["| run | method | task | seed | status | error |", "|---|---|---|---|---|---|"]
    for r in records:
        fields = [r.name, r.method, r.task, r.seed or "-", r.status, "" if r.ok else r.error_line[:200]]
        lines.append("| " + " | ".join(_md_escape(str(x)) for x in fields) + " |")
    return "\n".join(lines) + "\n"


def write_tables(
    table: Table, out: str | Path, records: list[RunRecord] | None = None, differences: str = ""
) -> list[Path]:
    """Write ``table.md`` (with the list of runs that did not complete), ``table.tex`` and ``table.csv``;
    with ``records`` also ``runs.md``, one line per run, ``data.md``, their data reports, and ``rounds.md``, their
    metrics round by round (runs of several rounds); with
    ``differences`` (markdown) ``differences.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = table.to_markdown()
    not_completed = [r for r in records or [] if not r.ok]
    if not_completed:
        markdown += "\nRuns that did not complete (not averaged):\n\n" + runs_markdown(not_completed)
    files = {"table.md": markdown, "table.tex": table.to_latex(), "table.csv": table.to_csv()}
    if records is not None:
        files["runs.md"] = runs_markdown(records)
        if data := data_reports_markdown(records):
            files["data.md"] = data
        if rounds := rounds_markdown(records):
            files["rounds.md"] = rounds
    if differences:
        files["differences.md"] = differences
    paths = []
    for name, text in files.items():
        (path := out / name).write_text(text)
        paths.append(path)
    return paths
