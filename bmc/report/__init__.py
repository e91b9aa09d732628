"""Tables and plots that compare the runs of a sweep (``python -m bmc.report multirun_outputs/<sweep>``).

The API, used by the CLI (``bmc/report/__main__.py``) and ``notebooks/compare_runs.ipynb``::

    records = load_sweep("multirun_outputs/<sweep>")   # list[RunRecord], methods assigned
    table = comparison_table(records, ["eval/accuracy"])
    write_tables(table, out, records)                  # table.md, table.tex, table.csv, runs.md
    save_figures(all_plots(records, table), out / "plots")

or all of it at once: ``write_report(records, out)``, which also marks the cells that differ from a baseline
row beyond noise (``mark_table``, a paired bootstrap test over held-out prompts and seeds, Holm-corrected
across the table, on cells with at least 3 seeds) and writes ``differences.md``, and marks † the
length-controlled win rates that extrapolate (``mark_extrapolated_lc``). Runs come from W&B with
``records_from_wandb(fetch_wandb_runs("entity/project", group))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bmc.report.length_control import mark_extrapolated_lc
from bmc.report.methods import assign_methods, load_sweep, paper_name
from bmc.report.plots import (
    all_plots,
    plot_delta_sweep,
    plot_token_rewards,
    plot_training_curves,
    read_metrics_csv,
    save_figures,
)
from bmc.report.records import RunRecord, latest_sweep, load_run
from bmc.report.significance import ALPHA, DEFAULT_BASELINE, differences, differences_markdown, mark_table
from bmc.report.table import (
    DEFAULT_METRICS,
    Cell,
    Table,
    comparison_table,
    lower_is_better,
    runs_markdown,
    write_tables,
)
from bmc.report.wandb_io import fetch_wandb_runs, log_report_to_wandb, records_from_wandb

__all__ = [
    "ALPHA",
    "DEFAULT_BASELINE",
    "DEFAULT_METRICS",
    "Cell",
    "Report",
    "RunRecord",
    "Table",
    "all_plots",
    "assign_methods",
    "comparison_table",
    "differences",
    "differences_markdown",
    "fetch_wandb_runs",
    "latest_sweep",
    "load_run",
    "load_sweep",
    "log_report_to_wandb",
    "lower_is_better",
    "mark_extrapolated_lc",
    "mark_table",
    "paper_name",
    "plot_delta_sweep",
    "plot_token_rewards",
    "plot_training_curves",
    "read_metrics_csv",
    "records_from_wandb",
    "runs_markdown",
    "save_figures",
    "write_report",
    "write_tables",
]


@dataclass
class Report:
    """What :func:`write_report` produced: the table, the table files and the PNGs."""

    table: Table
    tables: list[Path]
    plots: list[Path] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return self.tables + self.plots


def write_report(
    records: list[RunRecord],
    out: str | Path,
    metrics: list[str] | None = None,
    decimals: int = 3,
    plots: bool = True,
    baseline: str | None = DEFAULT_BASELINE,
    alpha: float = ALPHA,
) -> Report:
    """The comparison table in ``out`` and, with ``plots``, every plot with inputs in ``out/plots``. Cells that
    differ from the ``baseline`` row beyond noise, Holm-corrected at ``alpha`` across the table, are marked
    (:mod:`bmc.report.significance`) when the sweep has that row and its runs wrote their held-out answers;
    length-controlled win rates that extrapolate are marked † (:mod:`bmc.report.length_control`)."""
    table = comparison_table(records, metrics, decimals=decimals)
    mark_extrapolated_lc(table, records)
    if baseline in table.methods:
        differences_md = differences_markdown(mark_table(table, records, baseline, alpha), decimals)
    else:
        differences_md = ""
    tables = write_tables(table, out, records, differences_md)
    pngs = save_figures(all_plots(records, table), Path(out) / "plots") if plots else []
    return Report(table=table, tables=tables, plots=pngs)
