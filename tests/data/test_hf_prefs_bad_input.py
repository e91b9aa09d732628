"""Bad input gets a clear error naming the file, the row and the field, or a warning with counts where the
documented policy is to drop rows: never a stack trace from inside pyarrow or torch, never a silent drop."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bmc.data.hf_prefs import DataError, hf_preferences

GOOD = {"prompt": "What is 1 plus one?", "chosen": " It is 2.", "rejected": " It is 3."}


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} plus one?", "chosen": f" It is {i + 1}.", "rejected": f" It is {i + 2}."}
            for i in range(n)]  # fmt: skip


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _load(path: Path, **kwargs) -> list[dict]:
    return hf_preferences("hf_prefs", str(path), sizes={"sft_val": 1}, **kwargs).pairs


def test_a_malformed_jsonl_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + '{"prompt": "a", "chosen": \n' + json.dumps(GOOD) + "\n")
    with pytest.raises(DataError, match=r"prefs\.jsonl, line 3: malformed JSON \(.* at column 27\)"):
        _load(path)


def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"prefs\.jsonl, row 2: expected an object with columns, got list"):
        _load(_jsonl(tmp_path / "prefs.jsonl", [GOOD, ["a", "b", "c"]]))


@pytest.mark.parametrize(("suffix", "line"), [(".jsonl", 3), (".csv", 4)])  # the CSV header is line 1
def test_non_utf8_bytes_are_named_by_file_and_line(suffix: str, line: int, tmp_path: Path) -> None:
    path = tmp_path / f"prefs{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in _rows(2)) + b'{"prompt": "caf\xe9"}\n')
    else:
        path.write_bytes(b"prompt,chosen,rejected\nq1,a,b\nq2,a,b\ncaf\xe9,a,b\n")
    with pytest.raises(DataError, match=rf"prefs\{suffix}, line {line}: not valid UTF-8 \(byte 0xe9 at offset \d+\)"):
        _load(path)


@pytest.mark.parametrize(
    ("row", "columns", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, {},
         r"row 2: missing column\(s\) \['rejected'\]; the row has \['chosen', 'prompt'\]"),
        ({"chosen": "a", "rejected": "b"}, {}, r"row 2: missing column\(s\) \['prompt'\]"),
        ({"question": "q", "good": "a"}, {"prompt": "question", "chosen": "good", "rejected": "bad"},
         r"row 2: missing column\(s\) \['bad'\]"),
        ({"prompt": "q", "chosen": 7, "rejected": "b"}, {}, r"row 2, field 'chosen': expected a string, got int"),
        ({"prompt": ["q"], "chosen": "a", "rejected": "b"}, {}, r"row 2, field 'prompt': expected a string, got list"),
        ({"prompt": "q", "chosen": "a", "rejected": None}, {}, r"row 2, field 'rejected': expected a string, got null"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_row_and_field(row: dict, columns: dict, message: str, tmp_path: Path) -> None:
    first = {columns.get(k, k): v for k, v in GOOD.items()}
    with pytest.raises(DataError, match=r"prefs\.jsonl, " + message):
        _load(_jsonl(tmp_path / "prefs.jsonl", [first, row]), columns=columns or None)


def test_an_empty_csv_cell_is_a_null_named_by_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen,rejected\nq1,a,b\nq2,,b\n")
    with pytest.raises(DataError, match=r"prefs\.csv, row 2, field 'chosen': expected a string, got null"):
        _load(path)


def test_an_unreadable_parquet_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "prefs.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"prefs\.parquet: could not be read as a parquet dataset"):
        _load(path)


def test_conversational_rows_whose_roles_do_not_alternate_are_named(tmp_path: Path) -> None:
    def convo(*roles: str) -> list[dict]:
        return [{"role": r, "content": f"{r} text"} for r in roles]

    good = {"chosen": convo("user", "assistant"), "rejected": convo("user", "assistant")}
    good["rejected"][-1]["content"] = "another answer"
    bad = {"chosen": convo("user", "user", "assistant"), "rejected": convo("user", "user", "assistant")}
    bad["rejected"][-1]["content"] = "another answer"
    path = _jsonl(tmp_path / "prefs.jsonl", [good, bad])
    with pytest.raises(DataError, match=r"row 2, field 'prompt': roles must alternate .*\['user', 'user'\]"):
        _load(path)
    pairs = _load(_jsonl(tmp_path / "ok.jsonl", [good, good | {"rejected": convo("user", "assistant")}]))
    assert pairs[0]["prompt"] == convo("user") and pairs[0]["chosen"] == "assistant text"


def test_empty_identical_and_duplicate_rows_are_dropped_with_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _rows(6)
    rows[1]["chosen"] = "   "
    rows[2]["prompt"] = ""
    rows[3]["rejected"] = rows[3]["chosen"]
    rows += [rows[0], rows[4], rows[0]]  # rows 7, 8, 9 repeat rows 1, 5, 1 exactly
    path = tmp_path / "prefs.jsonl"
    # a blank line does not shift the row numbers: they are the file's line numbers
    lines = [json.dumps(r) for r in rows]
    path.write_text("\n".join(lines[:4]) + "\n\n" + "\n".join(lines[4:]) + "\n")
    with caplog.at_level(logging.WARNING, logger="bmc.data.hf_prefs"):
        pairs = _load(path)
    assert pairs == [rows[0], rows[4], rows[5]]
    text = caplog.text
    assert "dropped 1 of 9 row(s) with empty chosen (rows [2])" in text
    assert "dropped 1 of 9 row(s) with empty prompt (rows [3])" in text
    assert "dropped 1 of 9 row(s) with chosen == rejected (rows [4])" in text
    assert "dropped 3 of 9 row(s) with a duplicate of an earlier row (rows [8, 9, 10])" in text


def test_a_json_array_file_numbers_rows_by_element(tmp_path: Path) -> None:
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps([*_rows(2), {"prompt": "q", "chosen": "a", "rejected": False}], indent=2))
    with pytest.raises(DataError, match=r"prefs\.json, row 3, field 'rejected': expected a string, got bool"):
        _load(path)
    path.write_text(json.dumps(_rows(3), indent=2))
    assert _load(path) == _rows(3)


def test_a_file_whose_rows_are_all_dropped_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"all 2 row\(s\) were dropped"):
        _load(_jsonl(tmp_path / "prefs.jsonl", [GOOD | {"chosen": ""}, GOOD | {"rejected": GOOD["chosen"]}]))


