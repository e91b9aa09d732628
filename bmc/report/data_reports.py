"""The data reports of a sweep's runs (``summary.json``'s ``data_report``), one row per task and data setting:
what went in, what came out, what was dropped and why (e.g. ``truncated chosen`` / ``truncated rejected``: a
prompt whose cut-off samples left no pair; ``edit truncated``: an edit the editor's token budget cut off;
``read: empty chosen``: a row with an empty response), the edit distances before and after Bridging, and how
many judge and editor replies gave no verdict or edit (their share: the stage stops above
``max_failure_share``).
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
    ("editor failure share", "editor_failure_share"),  # replies without an edit (no block, empty, cut off)
    ("chosen verifier accept", "chosen_verifier_accept"),
    ("judge replies without verdict", "judge_unparseable"),  # an LLM judge's; each counted as a tie
    ("judge replies cut off", "judge_truncated"),  # by the judge's max_tokens; each counted as a tie
    ("judge failure share", "judge_failure_share"),  # the two above over the judge's replies
    ("sources (pairs)", "sources"),
    ("extra columns", "extra_columns"),
    ("judge calls", "judge_calls"),  # single judgments (IPR: two per comparison, both orders)
    ("comparisons per prompt", "comparisons_per_prompt"),  # IPR's best/worst search or full ranking
    ("list sizes (K: lists)", "list_sizes"),  # data.ranking=full: ranked lists by their number of responses
)


def data_setting(record: RunRecord) -> str:
    """``sampled``, ``pseudo_winning (sampled)``, ``ipr (judge verifier)``, ``ipr, full ranking (judge verifier)``:
    what decides a run's pairs (or ranked lists)."""
    name, pairs = record.get("data.name", "-"), record.get("data.pairs")
    if (record.data_report or {}).get("ranking") == "full":  # ranked lists, not pairs
        name = f"{name}, full ranking"
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
