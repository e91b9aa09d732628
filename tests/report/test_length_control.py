"""Length-controlled win rates that extrapolate are marked in the table."""

from __future__ import annotations

import csv
from pathlib import Path

from bmc.report import (
    RunRecord,
    comparison_table,
    mark_extrapolated_lc,
    write_report,
)
from bmc.report.length_control import EXTRAPOLATED, MARK_EXTRAPOLATED
from tests.doubles.report_runs import md_rows


def test_an_extrapolated_length_controlled_win_rate_is_marked(tmp_path: Path) -> None:
    # the brief's case: every policy answer shorter than the baseline's, raw 0.05 beside LC 0.70
    def run(name: str, method: str, lc: float, extrapolated: float) -> RunRecord:
        metrics = {"eval/winrate": 0.05, "eval/winrate_lc": lc, "eval/winrate_lc_phi": 2.5}
        record = RunRecord(name, "completed", {"task": {"name": "chat"}}, {**metrics, EXTRAPOLATED: extrapolated})
        record.method = method
        return record

    records = [run("a0", "DPO", 0.70, 1.0), run("a1", "DPO", 0.60, 0.0), run("b0", "IPO", 0.10, 0.0)]
    report = write_report(records, tmp_path / "out", plots=False)
    table = report.table
    assert table.metrics == ["eval/winrate", "eval/winrate_lc", "eval/winrate_lc_phi"]  # φ is a default column
    assert table.marks == {("DPO", "chat", "eval/winrate_lc"): MARK_EXTRAPOLATED}  # any seed extrapolated: marked
    row = md_rows(table.to_markdown())["DPO"]
    assert row[1] == "**0.650 ± 0.071** † (n=2)" and row[0] == "0.050 ± 0.000 (n=2)" and row[2] == "2.500 ± 0.000 (n=2)"
    note = (
        "†: length-controlled win rate extrapolated in at least one seed (1 of 3 runs): every policy answer was as "
        "long as the baseline's or longer, or every one as short or shorter"
    )
    assert note in (tmp_path / "out" / "table.md").read_text()
    assert r"\textbf{0.650 $\pm$ 0.071} $\dagger$ (n=2)" in table.to_latex()
    with open(tmp_path / "out" / "table.csv") as handle:
        marks = {(r["method"], r["metric"]): r["mark"] for r in csv.DictReader(handle) if r["mark"]}
    assert marks == {("DPO", "eval/winrate_lc"): MARK_EXTRAPOLATED}
    # no run extrapolated: no mark, no note
    clean = comparison_table([run("c0", "DPO", 0.6, 0.0)])
    mark_extrapolated_lc(clean, [run("c0", "DPO", 0.6, 0.0)])
    assert not clean.marks and not clean.notes
