"""Length-controlled win rates that extrapolate, marked in the report table.

A run's ``eval/winrate_lc_extrapolated`` is 1.0 when its length differences (policy minus baseline tokens)
did not straddle 0 (:func:`bmc.winrate_stats.extrapolates`): LC = σ(θ) is then the length regression carried to
equal length, a length at the edge of the data or beyond it, and can sit far from the raw win rate with an
interval nearly as wide as [0, 1]. A cell of ``eval/winrate_lc`` is marked † when any of its seeds
extrapolated, since its mean then averages in such a value.
"""

from __future__ import annotations

from collections.abc import Sequence

from bmc.report.records import RunRecord
from bmc.report.table import Table

LC_METRIC = "eval/winrate_lc"
EXTRAPOLATED = "eval/winrate_lc_extrapolated"
MARK_EXTRAPOLATED = "†"


def mark_extrapolated_lc(table: Table, records: Sequence[RunRecord]) -> None:
    """Mark † the ``eval/winrate_lc`` cells with an extrapolated seed and say what † means under the table.
    Runs without the flag (written before it existed) count as not extrapolated."""
    if LC_METRIC not in table.metrics:
        return
    flags = [
        (r.method, r.task, r.metrics.get(EXTRAPOLATED, 0.0) == 1.0) for r in records if r.ok and LC_METRIC in r.metrics
    ]
    cells = {(method, task) for method, task, extrapolated in flags if extrapolated}
    for method, task in cells:
        table.mark(method, task, LC_METRIC, MARK_EXTRAPOLATED)
    if cells:
        runs = sum(extrapolated for *_, extrapolated in flags)
        table.notes.append(
            f"{MARK_EXTRAPOLATED}: length-controlled win rate extrapolated in at least one seed ({runs} of "
            f"{len(flags)} runs): every policy answer was as long as the baseline's or longer, or every one as "
            f"short or shorter, so LC is the length regression carried to equal length, at or beyond the edge of "
            f"the data; read the raw win rate there."
        )
