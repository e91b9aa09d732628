"""The data reports of a sweep's runs (``summary.json``'s ``data_report``), one row per task and data setting:
what went in, what came out, what was dropped and why, the edit distances before and after Bridging, and how
many judge replies gave no verdict.
Runs with the same task and data share their pairs (cached), so the first completed run of each speaks for all."""

from __future__ import annotations

from typing import Any

from bmc.report.records import RunRecord

#: (column, data_report key) in the order shown
COLUMNS = (
    ("prompts", "prompts_in"),
    ("completions", "completions"),
    ("truncated completions", "truncated_completions"),
    ("pairs", "pairs_out"),
    ("edit distance before", "edit_distance_before"),
    ("edit distance after", "edit_distance_after"),
    ("edits accepted", "edits_accepted"),
    ("chosen verifier accept", "chosen_verifier_accept"),
    ("judge replies without verdict", "judge_unparseable"),  # an LLM judge's; each counted as a tie
    ("sources (pairs)", "sources"),
    ("extra columns", "extra_columns"),
)


def data_setting(record: RunRecord) -> str:
    """``sampled``, ``pseudo_winning (sampled)``, ``ipr (judge verifier)``: what decides a run's pairs."""
    name, pairs = record.get("data.name", "-"), record.get("data.pairs")
    if record.get("data.bridge"):
        return f"{name} ({pairs})"
    return f"{name} (judge {record.get('judge.kind')})" if pairs in ("ipr", "rm_score") else str(name)


def data_reports_markdown(records: list[RunRecord]) -> str:
    """A markdown table of the data reports; empty when no completed run has one."""
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if record.ok and record.data_report:
            first.setdefault((record.task, data_setting(record)), record.data_report)
    if not first:
        return ""
    header = ["task", "data", *(name for name, _ in COLUMNS), "dropped (reason: pairs)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (task, setting), report in first.items():
        values = [_text(report.get(key)) for _, key in COLUMNS]
        dropped = "; ".join(f"{reason}: {n}" for reason, n in sorted((report.get("dropped") or {}).items())) or "-"
        lines.append("| " + " | ".join([task, setting, *values, dropped]) + " |")
    return "\n".join(lines) + "\n"


def _text(value: Any) -> str:
    if value is None or value in ({}, []):
        return "-"
    if isinstance(value, dict):  # pairs per source of a mixture
        return "; ".join(f"{name}: {_text(n)}" for name, n in value.items())
    if isinstance(value, list):  # the names of extra columns
        return ", ".join(map(str, value))
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.2f}"
    return str(int(value)) if isinstance(value, float) else str(value)
