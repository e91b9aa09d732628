"""data.md: one row per task and data setting."""

from __future__ import annotations

from bmc.report import (
    RunRecord,
)


def test_data_reports_table_has_one_row_per_task_and_data_setting() -> None:
    from bmc.report.data_reports import data_reports_markdown

    sampled = {"data": {"name": "sampled", "pairs": "sampled"}, "task": {"name": "math"}}
    bridged = {"data": {"name": "pseudo_winning", "pairs": "sampled", "bridge": {"fraction": 1.0}},
               "task": {"name": "math"}}  # fmt: skip
    ipr = {"data": {"name": "ipr", "pairs": "ipr"}, "judge": {"kind": "verifier"}, "task": {"name": "math"}}
    report = {"prompts_in": 64, "pairs_out": 58, "edit_distance_before": 36.156, "dropped": {"no wrong sample": 6}}
    mixed = {"data": {"name": "original", "pairs": "original"}, "task": {"name": "hf_prefs"}}
    mixture = {"prompts_in": 10, "pairs_out": 10, "sources": {"a.jsonl": 7, "b.jsonl": 3},
               "extra_columns": ["prompt_id", "task_source"], "dropped": {"read a.jsonl: empty chosen": 1}}  # fmt: skip
    edits = {**report, "pairs_out": 24, "edit_distance_after": 7.5, "edits_accepted": 0.375,
             "editor_failure_share": 0.0625, "dropped": {"edit no fix": 34, "edit truncated": 4,
                                                         "no wrong sample": 6}}  # fmt: skip
    records = [
        RunRecord("a", "completed", sampled, {}, data_report=report),
        RunRecord("b", "completed", sampled, {}, data_report={**report, "pairs_out": 1}),  # same data: not repeated
        RunRecord("c", "completed", bridged, {}, data_report=edits),
        RunRecord("d", "completed", ipr, {}, data_report={"prompts_in": 64, "pairs_out": 40, "judge_unparseable": 3,
                  "judge_truncated": 1, "judge_failure_share": 0.25, "dropped": {"truncated chosen": 2},
                  "judge_calls": 458, "comparisons_per_prompt": 7.0}),
        RunRecord("f", "completed", mixed, {}, data_report=mixture),
        RunRecord("g", "completed", ipr, {}, data_report={"prompts_in": 64, "pairs_out": 60, "ranking": "full",
                  "judge_calls": 404, "comparisons_per_prompt": 3.15625, "list_sizes": {"3": 12, "4": 20, "5": 28},
                  "dropped": {"all tied after ranking": 4}}),
        RunRecord("e", "failed", ipr, {}, data_report={"prompts_in": 1}),
    ]
    lines = data_reports_markdown(records).splitlines()
    assert len(lines) == 7
    assert "| judge replies without verdict | judge replies cut off | judge failure share |" in lines[0]
    assert "| edits accepted | editor failure share |" in lines[0]
    assert lines[2] == (
        "| math | sampled | 64 | - | - | 58 | 36.16 | - | - | - | - | - | - | - | - | - | - | - | - "
        "| no wrong sample: 6 |"
    )
    # the share of the editor's replies without an edit; the edits its token budget cut off
    assert lines[3] == (
        "| math | pseudo_winning (sampled) | 64 | - | - | 24 | 36.16 | 7.50 | 0.38 | 0.06 | - | - | - | - | - | - "
        "| - | - | - | edit no fix: 34; edit truncated: 4; no wrong sample: 6 |"
    )
    # an LLM judge's replies without a verdict (ties), those cut off, their share; prompts without a complete sample
    assert lines[4] == (
        "| math | ipr (judge verifier) | 64 | - | - | 40 | - | - | - | - | - | 3 | 1 | 0.25 | - | - | 458 | 7 | - "
        "| truncated chosen: 2 |"
    )
    # a mixture of files: pairs per source and the extra columns its rows carried
    assert lines[5] == (
        "| hf_prefs | original | 10 | - | - | 10 | - | - | - | - | - | - | - | - | a.jsonl: 7; b.jsonl: 3 "
        "| prompt_id, task_source | - | - | - | read a.jsonl: empty chosen: 1 |"
    )
    # IPR's full ranking: its own row, with the judge's calls, comparisons per prompt and the lists' sizes
    assert lines[6] == (
        "| math | ipr, full ranking (judge verifier) | 64 | - | - | 60 | - | - | - | - | - | - | - | - | - | - | 404 "
        "| 3.16 | 3: 12; 4: 20; 5: 28 | all tied after ranking: 4 |"
    )
    assert data_reports_markdown([RunRecord("x", "completed", sampled, {})]) == ""
